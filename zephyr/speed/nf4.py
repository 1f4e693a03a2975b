"""4-bit NF4 linears that a compiled graph can fuse, for training steps that are bound by the CPU.

bitsandbytes runs each 4-bit matmul through Python: its custom op picks a kernel, dequantizes the nested absmax
and then the weight, each a separate dispatch. Profiled in a compiled decoder layer on an H100, that is about
0.3 ms of CPU time per linear and seven linears per layer, against microseconds of GPU work on a small model:
SmolLM2-135M trained at the speed of the CPU. Written as plain tensor operations, the same dequantization (table
value times block absmax, in float32, then the compute dtype) becomes part of the layer's graph, one fused kernel
per weight.

The weights are bit for bit those of ``bitsandbytes.functional.dequantize_4bit`` (tested). The backward pass
dequantizes again rather than keeping a 16-bit copy of every weight for the whole step (tested), as long as the
graph is compiled by ``backend_without_cse``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _blockwise(codes: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``table[codes[i]] * scales[i // blocksize]`` in float32, for any length (the last block may be short)."""
    block = torch.arange(codes.numel(), device=codes.device) // blocksize
    return table[codes.long()] * scales[block]


def nf4_absmax(quant_state) -> torch.Tensor:
    """The float32 scale of each 4-bit block; with double quantization they are stored as 8-bit codes themselves."""
    if not quant_state.nested:
        return quant_state.absmax
    nested = quant_state.state2
    return _blockwise(quant_state.absmax, nested.code, nested.absmax, nested.blocksize) + quant_state.offset


def dequantize_nf4(packed: torch.Tensor, table: torch.Tensor, absmax: torch.Tensor, blocksize: int,
                   shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The [out, in] weight from bitsandbytes' packed storage: two 4-bit codes per byte, the high nibble first."""
    packed = packed.view(torch.uint8).view(-1)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).view(-1)[:shape[0] * shape[1]]
    return _blockwise(codes, table, absmax, blocksize).view(shape).to(dtype)


@functools.cache  # one backend object: Dynamo reuses a graph across layers only for the same backend
def backend_without_cse(backend: str):
    """A torch.compile backend that partitions forward and backward without common-subexpression elimination.

    CSE would merge the backward pass's dequantization into the forward's, and a 16-bit weight read by a backward
    matmul is one the partitioner must save: every layer's weights, held for the whole step, cost Mistral-7B's
    memory plan 23 more checkpointed layers on the H100 (q,v: 7 of 32 became 30 of 32).
    """
    compiler = torch._dynamo.lookup_backend(backend)

    def compile_without_cse(graph, example_inputs):
        with torch._functorch.config.patch(cse=False):
            return compiler(graph, example_inputs)

    return compile_without_cse


class _NF4Linear(torch.autograd.Function):
    """``F.linear`` with a frozen 4-bit W whose backward dequantizes W again instead of saving it."""

    @staticmethod
    def forward(ctx, x, packed, table, absmax, bias, blocksize, shape):
        ctx.save_for_backward(packed, table, absmax)
        ctx.blocksize, ctx.shape = blocksize, shape
        return F.linear(x, dequantize_nf4(packed, table, absmax, blocksize, shape, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad_output):
        packed, table, absmax = ctx.saved_tensors
        weight = dequantize_nf4(packed, table, absmax, ctx.blocksize, ctx.shape, grad_output.dtype)
        grad_bias = grad_output.flatten(0, -2).sum(0) if ctx.needs_input_grad[4] else None
        return grad_output @ weight, None, None, None, grad_bias, None, None


def _traceable_forward(self, x: torch.Tensor) -> torch.Tensor:
    state = self.weight.quant_state
    dtype = self.compute_dtype or x.dtype
    bias = None if self.bias is None else self.bias.to(dtype)
    out = _NF4Linear.apply(x.to(dtype), self.weight, state.code, nf4_absmax(state), bias, state.blocksize,
                           tuple(state.shape))
    return out.to(x.dtype)


def make_nf4_linears_traceable(module: torch.nn.Module):
    """Give every NF4 ``bnb.nn.Linear4bit`` under ``module`` the plain-tensor forward above; returns the undo.

    The modules keep their class's identity for everything else (saving, PEFT, isinstance checks): only
    ``forward`` changes, through a subclass made once per original class.
    """
    import bitsandbytes as bnb

    changed = []
    for child in module.modules():
        if isinstance(child, bnb.nn.Linear4bit) and getattr(child.weight, "quant_state", None) is not None \
                and child.weight.quant_state.quant_type == "nf4":
            changed.append((child, type(child)))
            child.__class__ = _traceable_class(type(child))

    def undo():
        for child, original in changed:
            child.__class__ = original

    return undo


_TRACEABLE_CLASSES: dict[type, type] = {}


def _traceable_class(original: type) -> type:
    if original not in _TRACEABLE_CLASSES:
        _TRACEABLE_CLASSES[original] = type(f"Traceable{original.__name__}", (original,),
                                            {"forward": _traceable_forward})
    return _TRACEABLE_CLASSES[original]
