"""Which library computes PyTorch's CUDA matrix products while a run trains (``--matmul_library``).

On NVIDIA GPUs PyTorch picks cuBLAS for a bf16 product by default. For Mistral-7B's projections (forward and
input gradient, 1,000-3,100 tokens a step) cuBLASLt took 4.2 % less GPU time a token on an H100 in one
measurement outside training (results/benchmark/flat/h100-mm_shapes.json, scripts/analysis/mm_shapes.py). Both
compute the same bf16 products in kernels of their own choosing, so results agree to bf16 precision, not bit for
bit.
"""
from __future__ import annotations

from typing import Callable

import torch

from zephyr.config import MATMUL_LIBRARIES


def use_matmul_library(name: str) -> Callable[[], None]:
    """Prefer ``name`` for CUDA matrix products from now on; returns the call that restores the previous choice.
    ``default`` leaves PyTorch's choice (and ``TORCH_BLAS_PREFER_CUBLASLT``) alone; without a GPU nothing changes."""
    if name not in MATMUL_LIBRARIES:
        raise ValueError(f"unknown matmul library {name!r} (choose {', '.join(MATMUL_LIBRARIES)})")
    if name == "default" or not torch.cuda.is_available():
        return lambda: None
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    return lambda: torch.backends.cuda.preferred_blas_library(before)
