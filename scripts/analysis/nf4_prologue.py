"""What the NF4 de-quantization costs a compiled 7B layer's matrix products, and whether inductor's Triton GEMM
templates can take it into their loads (prologue fusion) instead of writing each 16-bit weight out and reading it
back. One Mistral-7B layer's seven 4-bit projections (forward and input gradient, bf16, the q,v preset's frozen
weights), compiled as training compiles them (``dynamic=True``, without CSE), over a few step lengths; each mode
in a fresh process. Prints GPU milliseconds per length and how far each mode's output and input gradient are
from the eager plain path:

    python scripts/analysis/nf4_prologue.py --output nf4_prologue.json          # a CUDA GPU; a few minutes
    python scripts/analysis/nf4_prologue.py --modes default,prologue --lengths 1800

Modes: ``default`` (training's path: a de-quantization kernel, then cuBLAS), ``bf16`` (the weights de-quantized
once: the products alone), ``cublaslt`` (the same on
cuBLASLt), ``autotune`` (inductor's max-autotune GEMM, cuBLAS and Triton templates competing, no prologue),
``prologue`` (the same with the de-quantization marked as a quantization prologue, ``InvokeQuant``, so that
inductor may fuse it into a template and keeps it only where its benchmark finds it faster), ``prologue_triton``
(Triton templates only: the fusion forced).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from zephyr.cli import entry_point
from zephyr.errors import UsageError, raise_usage_errors
from zephyr.preflight_checks import writable_dir

# (out_features, in_features) of one Mistral-7B layer's projections, in the order a layer calls them.
SHAPES = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096), "gate": (14336, 4096),
          "up": (14336, 4096), "down": (4096, 14336)}
SMALL = {"q": (256, 256), "k": (64, 256), "v": (64, 256), "o": (256, 256), "gate": (512, 256), "up": (512, 256),
         "down": (256, 512)}
MODES = ("default", "bf16", "cublaslt", "autotune", "prologue", "prologue_triton")
BLOCKSIZE = 64


def _nf4_weights(shapes: dict, device):
    import torch
    g = torch.Generator(device="cpu").manual_seed(0)
    out = {}
    for name, (n, m) in shapes.items():
        packed = torch.randint(0, 256, (n * m // 2, 1), generator=g, dtype=torch.uint8)
        absmax = torch.rand(n * m // BLOCKSIZE, generator=g) / m ** 0.5 + 1e-3
        out[name] = (packed.to(device), absmax.to(device), (n, m))
    table = torch.linspace(-1, 1, 16).to(device)  # any 16 values: speed and agreement do not depend on them
    return out, table


def _linear_class(prologue: bool):
    """zephyr.speed.nf4's frozen 4-bit linear, its de-quantization optionally marked as a quantization prologue."""
    import functools

    import torch
    import torch.nn.functional as F
    from torch._higher_order_ops import InvokeQuant

    from zephyr.speed.nf4 import dequantize_nf4

    def weight(packed, table, absmax, shape, dtype):
        fn = functools.partial(dequantize_nf4, blocksize=BLOCKSIZE, shape=shape, dtype=dtype)
        if not prologue:
            return fn(packed, table, absmax)
        return InvokeQuant(codegen_low_precision=False)(lambda p, t, a: (fn(p, t, a),), packed, table, absmax,
                                                        scheme="nf4")[0]

    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, packed, table, absmax, shape):
            ctx.save_for_backward(packed, table, absmax)
            ctx.shape = shape
            return F.linear(x, weight(packed, table, absmax, shape, x.dtype))

        @staticmethod
        def backward(ctx, grad_output):
            packed, table, absmax = ctx.saved_tensors
            return grad_output @ weight(packed, table, absmax, ctx.shape, grad_output.dtype), None, None, None, None

    return Linear


def _layer(linear, weights, table):
    """One layer's projections as a module whose 4-bit weights are frozen parameters, as PEFT's base weights are
    (torch.compile keeps parameters' shapes static). ``linear`` None: the weights de-quantized once, bf16 F.linear
    (the products alone, the floor that removing the de-quantization could reach)."""
    import torch
    import torch.nn.functional as F

    from zephyr.speed.nf4 import dequantize_nf4

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shapes = {name: shape for name, (_, _, shape) in weights.items()}
            for name, (packed, absmax, shape) in weights.items():
                if linear is None:
                    w = dequantize_nf4(packed, table, absmax, BLOCKSIZE, shape, torch.bfloat16)
                    self.register_parameter(f"{name}_w", torch.nn.Parameter(w, requires_grad=False))
                else:
                    self.register_parameter(f"{name}_packed", torch.nn.Parameter(packed, requires_grad=False))
                    self.register_parameter(f"{name}_absmax", torch.nn.Parameter(absmax, requires_grad=False))
            self.register_buffer("table", table)

        def lin(self, x, name):
            if linear is None:
                return F.linear(x, getattr(self, f"{name}_w"))
            return linear.apply(x, getattr(self, f"{name}_packed"), self.table, getattr(self, f"{name}_absmax"),
                                self.shapes[name])

        def forward(self, x):
            q, k, v = self.lin(x, "q"), self.lin(x, "k"), self.lin(x, "v")
            h = x + self.lin(q, "o")  # q stands in for attention's output: the projections are what is measured
            y = h + self.lin(F.silu(self.lin(h, "gate")) * self.lin(h, "up"), "down")
            return y, k, v

    return Layer()


def measure(mode: str, lengths: list[int], small: bool, repeats: int) -> dict:
    import torch
    import torch._inductor.config as inductor_config

    from zephyr.speed.nf4 import backend_without_cse

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    weights, table = _nf4_weights(SMALL if small else SHAPES, device)
    hidden = (SMALL if small else SHAPES)["q"][1]
    if mode == "cublaslt":
        torch.backends.cuda.preferred_blas_library("cublaslt")
    if mode in ("autotune", "prologue", "prologue_triton"):
        inductor_config.max_autotune_gemm = True
        inductor_config.max_autotune_gemm_backends = "TRITON" if mode == "prologue_triton" else "ATEN,TRITON"
    inductor_config.emulate_precision_casts = True  # as compile_decoder_layers sets it
    prologue = mode.startswith("prologue")
    eager = _layer(_linear_class(False), weights, table)
    compiled = torch.compile(_layer(None if mode == "bf16" else _linear_class(prologue), weights, table),
                             dynamic=True, backend=backend_without_cse("inductor"))
    g = torch.Generator(device="cpu").manual_seed(1)

    def inputs(n):
        x = (torch.randn(n, hidden, generator=g) / 4).to(device, torch.bfloat16).requires_grad_(True)
        grads = [torch.randn(n, out, generator=g).to(device, torch.bfloat16) / 4
                 for out in (hidden, weights["k"][2][0], weights["v"][2][0])]
        return x, grads

    def step(fn, x, grads):
        outs = fn(x)
        (dx,) = torch.autograd.grad(outs, x, grads)
        return outs[0], dx

    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    row = {"mode": mode, "lengths": lengths, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
           "torch": torch.__version__}
    t0 = time.perf_counter()
    x, grads = inputs(lengths[0])
    from torch._inductor.utils import run_and_get_code
    (y, dx), code = run_and_get_code(step, compiled, x, grads)
    sync()
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    text = "\n".join(code)
    row["kernels"] = {"modules": len(code), "extern_mm": text.count("extern_kernels.mm(") + text.count("aten.mm.default("), "triton_dot": text.count("tl.dot("),
                      "fused_prologue": sum("tl.dot(" in k and ">>" in k for k in text.split("async_compile.triton("))}
    y_ref, dx_ref = step(eager, x, grads)
    rel = lambda a, b: float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())
    row["rel_err_vs_eager"] = {"output": rel(y, y_ref), "input_grad": rel(dx, dx_ref)}
    timings = {}
    for n in lengths:
        x, grads = inputs(n)
        for _ in range(2):
            step(compiled, x, grads)
        sync()
        ms = []
        for _ in range(repeats):
            if on_gpu:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step(compiled, x, grads)
                end.record()
                sync()
                ms.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                step(compiled, x, grads)
                ms.append((time.perf_counter() - t) * 1e3)
        timings[str(n)] = round(sorted(ms)[len(ms) // 2], 3)
    row["ms_by_length"] = timings
    row["us_per_token"] = round(1e3 * sum(timings.values()) / sum(lengths), 4)
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None
    return row


@entry_point
def main(argv: list[str]) -> None:
    p = raise_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False))
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--lengths", default="1117,1800,3051", help="step lengths in tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions per length (the median is kept)")
    p.add_argument("--small", action="store_true", help="toy shapes, for a CPU check of the script itself")
    p.add_argument("--timeout", type=int, default=300, help="seconds per mode's process")
    p.add_argument("--output", default=None, help="JSON file for the rows")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a mode: measure in this process
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        raise UsageError(f"--modes: {','.join(unknown)}: expected some of {', '.join(MODES)}")
    try:
        lengths = [int(n) for n in a.lengths.split(",")]
    except ValueError:
        lengths = [0]
    if not lengths or min(lengths) < 1:
        raise UsageError(f"--lengths: {a.lengths}: expected positive integers separated by commas")
    if a.repeats < 1:
        raise UsageError(f"--repeats: {a.repeats}: must be at least 1")
    if a.output:
        if Path(a.output).is_dir():
            raise UsageError(f"--output: {a.output} is a directory; give the JSON file to write")
        writable_dir(Path(a.output).parent, "--output")
    if a.one:
        print(json.dumps(measure(a.one, lengths, a.small, a.repeats)))
        return
    rows = []
    for mode in modes:  # each in a fresh process: inductor's settings and caches, cuBLAS's choices are global
        cmd = [sys.executable, __file__, "--one", mode, "--lengths", a.lengths, "--repeats", str(a.repeats)]
        cmd += ["--small"] if a.small else []
        env = {**os.environ, "TORCH_LOGS": "fusion"} if mode.startswith("prologue") else None
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
            rows.append({"mode": mode, "error": out.stderr.strip().splitlines()[-3:]} if out.returncode
                        else json.loads(out.stdout.strip().splitlines()[-1]))
            why = [line[line.find("]") + 1:].strip()[:200] for line in out.stderr.splitlines() if "__fusion" in line and "prologue" in line]
            if why:  # inductor's reasons for fusing a prologue or not, each once
                rows[-1]["prologue_fusion_log"] = sorted(set(why))[:20]
        except subprocess.TimeoutExpired:
            rows.append({"mode": mode, "error": f"over {a.timeout} s"})
        print(json.dumps(rows[-1]), flush=True)
        if a.output:  # after each mode: a call stopped early keeps what it measured
            with open(a.output, "w") as f:
                json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
