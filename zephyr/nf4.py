"""4-bit NF4 linears that a compiled graph can fuse, for training steps that are bound by the CPU.

bitsandbytes runs each 4-bit matmul through Python: its custom op picks a kernel, dequantizes the nested absmax
and then the weight, each a separate dispatch. Profiled in a compiled decoder layer on an H100, that is about
0.3 ms of CPU time per linear and seven linears per layer, against microseconds of GPU work on a small model:
SmolLM2-135M trained at the speed of the CPU. Written as plain tensor operations, the same dequantization (table
value times block absmax, in float32, then the compute dtype) becomes part of the layer's graph, one fused kernel
per weight.

The weights are bit for bit those of ``bitsandbytes.functional.dequantize_4bit`` (tested); the backward pass
dequantizes again rather than keeping a 16-bit copy of every weight for the whole step (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


def _traceable_forward(self, x: torch.Tensor) -> torch.Tensor:
    state = self.weight.quant_state
    dtype = self.compute_dtype or x.dtype
    # Under torch.compile, checkpointing marks the dequantization "recompute": the backward pass dequantizes
    # again from the 4-bit weight. Without it the partitioner saves every layer's 16-bit weights (an input of
    # a backward matmul), which at 7B cost the memory of four more un-checkpointed layers.
    weight = checkpoint(dequantize_nf4, self.weight, state.code, nf4_absmax(state), state.blocksize,
                        tuple(state.shape), dtype, use_reentrant=False)
    bias = None if self.bias is None else self.bias.to(dtype)
    return F.linear(x.to(dtype), weight, bias).to(x.dtype)


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
