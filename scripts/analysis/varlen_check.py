"""On a CUDA GPU: flat attention's flash varlen kernel against its SDPA-with-mask path, in bf16 against a float32
reference (outputs and gradients), compiled over five lengths (graph count), and timed (forward + backward).

    python scripts/analysis/varlen_check.py
"""

import inspect
import time

import torch

from zephyr.speed.flat import _flash_varlen, flat_attention


def attention(q, k, v, cu, max_len):
    return flat_attention(None, q, k, v, None, scaling=q.shape[-1] ** -0.5, cu_seq_lens_q=cu, max_length_q=max_len)[0]


def case(lengths, dtype, generator, device="cuda"):
    total = sum(lengths)
    q = torch.randn(1, 32, total, 128, generator=generator, device=device)
    k = torch.randn(1, 8, total, 128, generator=generator, device=device)
    v = torch.randn(1, 8, total, 128, generator=generator, device=device)
    g = torch.randn(1, total, 32, 128, generator=generator, device=device)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    return [t.to(dtype).requires_grad_(t is not g) for t in (q, k, v)], g.to(dtype), cu, max(lengths)


def run(inputs, grad, cu, max_len, fn=attention):
    for t in inputs:
        t.grad = None
    out = fn(*inputs, cu, max_len)
    out.backward(grad)
    return [out.float()] + [t.grad.float() for t in inputs]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    print("torch", torch.__version__, torch.cuda.get_device_name())
    try:
        from torch.nn.attention.varlen import varlen_attn
        print("varlen_attn", inspect.signature(varlen_attn))
    except ImportError as err:
        print("no varlen_attn:", err)
    print("flash kernel used:", _flash_varlen() is not None)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for trial in range(3):
        lengths = torch.randint(20, 512, (8,), generator=generator, device="cuda").tolist()
        (q, k, v), g, cu, m = case(lengths, torch.float32, generator)
        reference = run([q, k, v], g, cu, m)  # float32: the SDPA-with-mask path
        low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
        flash = run(low, g.bfloat16(), cu, m)
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION,
                                             torch.nn.attention.SDPBackend.MATH]):
            masked = run(low, g.bfloat16(), cu, m, fn=lambda q, k, v, cu, m: _masked(q, k, v, cu))
        print(f"trial {trial}: lengths {lengths}: bf16 flash vs fp32 out/dq/dk/dv",
              [f"{rel(a, b):.2e}" for a, b in zip(flash, reference)],
              "| bf16 masked vs fp32", [f"{rel(a, b):.2e}" for a, b in zip(masked, reference)])
    from torch._dynamo.utils import counters
    compiled = torch.compile(attention, dynamic=True)
    before = counters["stats"]["unique_graphs"]
    for trial in range(5):
        lengths = torch.randint(20, 512, (8,), generator=generator, device="cuda").tolist()
        inputs, g, cu, m = case(lengths, torch.bfloat16, generator)
        out = run(inputs, g, cu, m, fn=compiled)
        eager = run([t.detach().requires_grad_() for t in inputs], g, cu, m)
        assert all(rel(a, b) < 1e-2 for a, b in zip(out, eager))
    print("compiled over 5 lengths: unique graphs", counters["stats"]["unique_graphs"] - before,
          "recompiles", dict(counters["recompiles"]) if "recompiles" in counters else {})
    lengths = [218] * 8
    inputs, g, cu, m = case(lengths, torch.bfloat16, generator)
    for name, fn in (("flash varlen", attention), ("masked SDPA", lambda q, k, v, cu, m: _masked(q, k, v, cu))):
        for _ in range(3):
            run(inputs, g, cu, m, fn)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            run(inputs, g, cu, m, fn)
        torch.cuda.synchronize()
        print(f"{name}: {1000 * (time.perf_counter() - start) / 20:.3f} ms forward + backward, one layer, 8 x 218 tokens")


def _masked(q, k, v, cu):
    from zephyr.speed.flat import document_mask

    mask = document_mask(cu, q.shape[2])
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5,
                                                           enable_gqa=True)
    return out.transpose(1, 2)


if __name__ == "__main__":
    main()
