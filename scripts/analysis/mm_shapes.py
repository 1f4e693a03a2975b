"""What a flat step's token count costs cuBLAS: Mistral-7B's projection matrix products (forward and input
gradient, bf16) over a sequence of step lengths, with each length used as it is or rounded up to a multiple, each
rounding in a fresh process (cuBLAS remembers the shapes a process has seen). Prints, per rounding, the CPU time
of a matrix product's call the first time its shape is met and later, and the GPU time per real token, so that a
row multiple is chosen by what it costs and what it saves:

    python scripts/analysis/mm_shapes.py --output mm_shapes.json            # a CUDA GPU; about a minute
    python scripts/analysis/mm_shapes.py --multiples 1,8,64 --steps 40 --layers 8
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from zephyr.cli import entry_point
from zephyr.config import MATMUL_LIBRARIES
from zephyr.errors import UsageError, raise_usage_errors
from zephyr.preflight_checks import writable_dir

# (out_features, in_features) of Mistral-7B's projections: q and o, k and v, gate and up, down.
SHAPES = {"q_o": (4096, 4096), "k_v": (1024, 4096), "gate_up": (14336, 4096), "down": (4096, 14336)}
CALLS_PER_LAYER = {"q_o": 2, "k_v": 2, "gate_up": 2, "down": 1}


def step_lengths(steps: int, seed: int, low: int, high: int) -> list[int]:
    import random
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(steps)]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def measure(multiple: int, lengths: list[int], layers: int, blas: str) -> dict:
    import torch
    import torch.nn.functional as F
    if blas != "default":
        torch.backends.cuda.preferred_blas_library(blas)
    dev = torch.device("cuda")
    torch.manual_seed(0)
    weights = {k: torch.randn(n, m, device=dev, dtype=torch.bfloat16) / m ** 0.5 for k, (n, m) in SHAPES.items()}
    longest = round_up(max(lengths), multiple)
    x = {k: torch.randn(longest, m, device=dev, dtype=torch.bfloat16) for k, (n, m) in SHAPES.items()}
    dy = {k: torch.randn(longest, n, device=dev, dtype=torch.bfloat16) for k, (n, m) in SHAPES.items()}
    seen, first_us, later_us, gpu_ms = set(), [], [], []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    for length in lengths:
        rows = round_up(length, multiple)
        start.record()
        for _ in range(layers):
            for name, w in weights.items():
                for _ in range(CALLS_PER_LAYER[name]):
                    for kind in ("forward", "input_grad"):
                        key = (name, kind, rows)
                        t0 = time.perf_counter()
                        if kind == "forward":
                            F.linear(x[name][:rows], w)
                        else:
                            torch.mm(dy[name][:rows], w)
                        us = (time.perf_counter() - t0) * 1e6
                        (later_us if key in seen else first_us).append(us)
                        seen.add(key)
        end.record()
        torch.cuda.synchronize()
        gpu_ms.append(start.elapsed_time(end))
    real = sum(lengths)
    median = lambda v: sorted(v)[len(v) // 2] if v else None
    return {"multiple": multiple, "blas": blas, "steps": len(lengths), "layers": layers,
            "distinct_lengths": len({round_up(n, multiple) for n in lengths}),
            "padding_percent": round(100 * (sum(round_up(n, multiple) for n in lengths) - real) / real, 2),
            "first_call_cpu_us_median": median(first_us), "first_calls": len(first_us),
            "later_call_cpu_us_median": median(later_us), "later_calls": len(later_us),
            "cpu_ms_per_step": round((sum(first_us) + sum(later_us)) / 1e3 / len(lengths), 2),
            "gpu_ms_per_step": round(sum(gpu_ms) / len(gpu_ms), 3),
            "gpu_us_per_real_token": round(1e3 * sum(gpu_ms) / real, 4),
            "gpu_name": torch.cuda.get_device_name()}


@entry_point
def main(argv: list[str]) -> None:
    p = raise_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False))
    p.add_argument("--multiples", default="1,8,16,64,128", help="row multiples, comma-separated (1: as it is)")
    p.add_argument("--blas", default="default,cublaslt", help="torch.backends.cuda.preferred_blas_library values "
                                                            "tried with a multiple of 1")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--low", type=int, default=1000, help="shortest step, tokens")
    p.add_argument("--high", type=int, default=3100, help="longest step, tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file for the table")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "multiple:blas": measure in this process
    a = p.parse_args(argv)
    try:
        multiples = [int(m) for m in a.multiples.split(",")]
    except ValueError:
        multiples = [0]
    if min(multiples) < 1:
        raise UsageError(f"--multiples: {a.multiples}: expected positive integers separated by commas")
    blas = [b for b in a.blas.split(",") if b]
    if unknown := sorted(set(blas) - set(MATMUL_LIBRARIES)):
        raise UsageError(f"--blas: {','.join(unknown)}: expected default, cublas or cublaslt")
    for flag in ("steps", "layers"):
        if getattr(a, flag) < 1:
            raise UsageError(f"--{flag}: {getattr(a, flag)}: must be at least 1")
    if not 1 <= a.low <= a.high:
        raise UsageError(f"--low/--high: {a.low}/{a.high}: need 1 <= low <= high")
    if a.output:
        if Path(a.output).is_dir():
            raise UsageError(f"--output: {a.output} is a directory; give the JSON file to write")
        writable_dir(Path(a.output).parent, "--output")
    lengths = step_lengths(a.steps, a.seed, a.low, a.high)
    if a.one:
        multiple, library = a.one.split(":")
        print(json.dumps(measure(int(multiple), lengths, a.layers, library)))
        return
    import torch
    if not torch.cuda.is_available():
        raise UsageError("mm_shapes.py needs a CUDA GPU: cuBLAS is what it measures")
    cases = [(m, "default") for m in multiples] + [(1, b) for b in blas if b != "default"]
    rows = []
    for multiple, library in cases:  # each in a fresh process: cuBLAS keeps what it learnt of each shape
        cmd = [sys.executable, __file__, "--one", f"{multiple}:{library}", "--steps", str(a.steps), "--layers",
               str(a.layers), "--low", str(a.low), "--high", str(a.high), "--seed", str(a.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            rows.append({"multiple": multiple, "blas": library, "error": out.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if a.output:
        with open(a.output, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
