"""Compiled decoder layers and CUDA graphs: a training step on one GPU is bound by the CPU's kernel launches."""

from __future__ import annotations

import torch

from zephyr.speed.nf4 import backend_without_cse, make_nf4_linears_traceable


def decoder_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def compile_decoder_layers(model, backend: str = "inductor", fullgraph: bool = False, cuda_graphs: bool = False,
                           fused_nf4: bool = True):
    """Compile every decoder layer with torch.compile; returns a function that puts them back to eager.

    A training step on one GPU is bound by the CPU: Python dispatches a few hundred small kernels per layer
    (norms, rotary, LoRA dropout and scaling, residuals), several times over in the backward pass. A compiled
    layer runs as one fused graph forward and one backward. The layers run the same code and share its graph
    (the first layer gets a second one: its input needs no gradient), so compiling costs about a minute once
    per process, not once per layer. The 4-bit NF4 matmuls are dequantized by plain tensor operations in the
    graph (zephyr/speed/nf4.py): bitsandbytes' own Python dispatch of each one cost more CPU time than a small
    model's whole layer.

    ``cuda_graphs`` (inductor) records each compiled forward and backward as a CUDA graph, replayed with one
    launch: a SmolLM2-sized step has about 20 ms of GPU work behind 100 ms of kernel launches. It is set in
    inductor's global config until ``uncompile``; passing it per compilation (``config_patches``) crashed the
    first replay with a segmentation fault (torch 2.11).

    Inductor rounds to bf16 where eager does (``emulate_precision_casts``). Left to fuse freely, it keeps fp32
    between the fused steps: adapters trained that way learned a more precise function than the eager bf16 one
    they are evaluated with, and scored 0.37 ROUGE-1 lower (results/quality/compile-gap/).
    """
    import torch._inductor.config as inductor_config

    layers = decoder_layers(model)
    restore_linears = [make_nf4_linears_traceable(layer) if fused_nf4 else (lambda: None) for layer in layers]
    settings_before = inductor_config.triton.cudagraphs, inductor_config.emulate_precision_casts
    inductor_config.triton.cudagraphs, inductor_config.emulate_precision_casts = cuda_graphs, True
    for layer in layers:
        layer.compile(backend=backend_without_cse(backend), dynamic=True, fullgraph=fullgraph)  # lengths vary

    def uncompile():
        for layer, restore_linear in zip(layers, restore_linears):
            layer._compiled_call_impl = None
            restore_linear()
        torch._dynamo.reset()  # the compiled graphs hold the LoRA modules; evaluation replaces them
        inductor_config.triton.cudagraphs, inductor_config.emulate_precision_casts = settings_before

    return uncompile


def compile_summary() -> str:
    """The time torch.compile took in this process and what its on-disk caches served ('' if nothing compiled):
    how a sweep's shared --compile_cache is seen to work (a later run of the same shapes: hits, less time)."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    seconds = sum(compilation_time_metrics.get("_compile.compile_inner", []))
    if not seconds:
        return ""
    graphs, joint = counters["inductor"], counters["aot_autograd"]
    return (f"; compiling took {seconds:.1f} s (FX graph cache {graphs['fxgraph_cache_hit']} hits, "
            f"{graphs['fxgraph_cache_miss']} misses; AOTAutograd cache {joint['autograd_cache_hit']} hits, "
            f"{joint['autograd_cache_miss']} misses)")


# Compiling pays only over enough steps. Measured in the quality benchmark (one H200, ten SmolLM2 runs at a time,
# packed rows of 8 x 512): compiling took 61 s cold and 20-23 s from the shared cache with CUDA graphs, 86-146 s
# without; a step was at best 0.11 s faster than eager (70 steps: 23.7 s against 31 s, compilation excluded). A
# cold compilation then pays after about 550 steps with CUDA graphs and over 1,300 without.
MIN_STEPS_TO_COMPILE = 1500


def should_compile(setting: str, on_gpu: bool, compilable_batches: bool, steps: int) -> bool:
    """``--compile_layers``: ``auto`` compiles on a GPU when the batches are flat (one graph for every length) or
    keep one shape (packed rows, or examples padded with ``--pad_to_max_length``), and the run has at least
    ``MIN_STEPS_TO_COMPILE`` optimizer steps.

    Padded batches of whole examples change shape at every step, and each new shape would compile again; on the
    CPU compiling takes longer than the short runs it would speed up, and on a GPU a short run spends more time
    compiling than compiled layers save it (above).
    """
    if setting == "auto":
        return on_gpu and compilable_batches and steps >= MIN_STEPS_TO_COMPILE
    return setting == "true"
