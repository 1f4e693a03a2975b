"""NF4 dequantized in plain torch equals bitsandbytes bit for bit, and compiles without a 16-bit weight copy."""

import pytest
import torch


def _nf4_linear(shape, bias, double_quant=True):
    """A bitsandbytes 4-bit NF4 linear of weight ``shape`` [out, in], quantized on the CPU from a seeded random weight."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    linear = bnb.nn.Linear4bit(shape[1], shape[0], bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4",
                               compress_statistics=double_quant)
    linear.weight = bnb.nn.Params4bit(torch.randn(shape), requires_grad=False, quant_type="nf4",
                                      compress_statistics=double_quant)._quantize("cpu")
    return linear


@pytest.mark.parametrize("shape,double_quant", [((96, 64), True), ((100, 72), True), ((7, 9), True), ((96, 64), False)])
def test_nf4_dequantized_in_torch_equals_bitsandbytes_bit_for_bit(shape, double_quant):
    """The compiled layers' 4-bit matmul (zephyr/speed/nf4.py) gives bitsandbytes' exact weights, outputs and input
    gradients, also for nested absmax and a weight whose size is no multiple of the 64-value block."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from zephyr.speed.nf4 import dequantize_nf4, make_nf4_linears_traceable, nf4_absmax

    linear = _nf4_linear(shape, bias=True, double_quant=double_quant)
    state = linear.weight.quant_state
    assert state.nested == double_quant
    expected = bnbf.dequantize_4bit(linear.weight.data, state).to(torch.bfloat16)
    weight = dequantize_nf4(linear.weight, state.code, nf4_absmax(state), state.blocksize, tuple(state.shape),
                            torch.bfloat16)
    assert torch.equal(weight, expected)

    x = torch.randn(3, 5, shape[1], dtype=torch.bfloat16, requires_grad=True)

    def output_and_grad():
        x.grad = None
        out = linear(x)
        out.float().square().sum().backward()
        return out.detach(), x.grad.clone()

    bnb_out, bnb_grad = output_and_grad()
    undo = make_nf4_linears_traceable(linear)
    torch_out, torch_grad = output_and_grad()
    undo()
    assert type(linear) is bnb.nn.Linear4bit
    assert torch.equal(torch_out, bnb_out) and torch.equal(torch_grad, bnb_grad)


def test_compiled_nf4_linear_saves_the_4bit_weight_not_a_16bit_copy():
    """With the partitioner inductor uses, the backward pass dequantizes again: what the forward saves holds no
    [out, in] 16-bit weight (which at 7B would cost the memory of several more un-checkpointed layers)."""
    from zephyr.speed.nf4 import backend_without_cse, make_nf4_linears_traceable

    linear = _nf4_linear((256, 128), bias=False)
    make_nf4_linears_traceable(linear)
    torch._dynamo.reset()
    loss = torch.compile(lambda x: linear(x).float().square().sum(), fullgraph=True,
                         backend=backend_without_cse("aot_eager_decomp_partition"))  # inductor's partitioner
    x = torch.randn(4, 16, 128, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = loss(x)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert any(t.dtype == torch.uint8 for t in saved), "the packed 4-bit weight is what the backward reads"
    assert not [tuple(t.shape) for t in saved if t.dtype.is_floating_point and t.numel() >= 256 * 128]
