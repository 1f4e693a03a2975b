"""Dense evaluation computes what the 4-bit model with its adapter computes."""

import pytest
import torch


def _adapted_4bit_model(model_dir, dtype: str, exact_cpu_kernel: bool = False):
    """The tiny model in 4-bit with a non-trivial LoRA adapter on every linear and lm_head, in eval mode.

    ``exact_cpu_kernel``: bitsandbytes' plain 4-bit path (de-quantize, then multiply in the input's dtype) on every
    CPU. On CPUs with AVX512-BF16, its eval-mode kernel otherwise repacks the weights and computes in bf16 even for
    fp32 inputs, so an fp32 reference would carry bf16 rounding (a relative error near 3e-3).
    """
    import bitsandbytes as bnb
    from peft import get_peft_model

    from zephyr.config import ModelArguments
    from zephyr.modeling import build_lora_config, load_model

    args = ModelArguments(model_name_or_path=str(model_dir), lora_targets="all", lora_lm_head=True, dtype=dtype)
    torch.manual_seed(0)
    model = get_peft_model(load_model(args), build_lora_config(args))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05, generator=torch.Generator().manual_seed(1))
    if exact_cpu_kernel:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model.eval()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dense_model_computes_what_the_4bit_model_with_its_adapter_computes(tiny_model_dir, dtype):
    """Dense evaluation against the 4-bit model with its PEFT adapter, after that model's own eval-mode forward:
    exact in fp32 (against bitsandbytes' plain fp32 path, on any CPU); in bf16 the two differ only by the order of
    rounded operations (a random model has many near-tied logits, so a few of its 40 greedy picks may flip)."""
    import bitsandbytes as bnb

    from zephyr.speed.dense import dense_for_inference

    model = _adapted_4bit_model(tiny_model_dir, dtype, exact_cpu_kernel=dtype == "fp32")
    ids = torch.randint(0, 32000, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits.float()
        repacked = [getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                    for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        without_adapter = model.get_base_model()
        with model.disable_adapter():
            base_only = model(input_ids=ids).logits.float()
        dense = dense_for_inference(model)
        logits = dense(input_ids=ids).logits.float()
    assert dense is without_adapter
    if dtype == "fp32":  # the reference is bitsandbytes' plain path: no weight was repacked for its bf16 kernel
        assert repacked and not any(repacked)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in dense.modules())
    error = ((logits - reference).norm() / reference.norm()).item()
    adapter_effect = ((base_only - reference).norm() / reference.norm()).item()
    assert adapter_effect > 0.05  # the adapter changes the function, so a lost adapter would show
    assert error < (1e-5 if dtype == "fp32" else 0.01), error
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > (0.999 if dtype == "fp32" else 0.9)


def test_dense_weight_is_right_after_bitsandbytes_repacks_for_avx512_bf16(tiny_model_dir):
    """On CPUs with AVX512-BF16, an eval-mode forward makes bitsandbytes repack every 4-bit weight in place (codes
    reordered, bf16 block scales). The state is forced here on any CPU, as Linear4bit.forward does it."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    from zephyr.speed.dense import dequantized_weight
    from zephyr.speed.nf4 import dequantize_nf4, nf4_absmax

    model = _adapted_4bit_model(tiny_model_dir, "bf16")
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    weight, state = layer.weight, layer.weight.quant_state
    plain = dequantized_weight(weight)
    # What bitsandbytes' AVX512-BF16 kernel multiplies by: the same codes, times block scales rounded to bf16.
    expected = dequantize_nf4(weight.data, state.code, nf4_absmax(state).bfloat16().float(), state.blocksize,
                              tuple(state.shape), plain.dtype)
    weight.data, layer.weight.quant_state = bnbf._convert_weight_packed_for_cpu(weight.data, state)
    assert layer.weight.quant_state.packing_format_for_cpu
    repacked = dequantized_weight(layer.weight)
    assert torch.equal(repacked, expected)
    assert ((repacked.float() - plain.float()).norm() / plain.float().norm()).item() < 4e-3  # only the scales' rounding
    assert layer.weight.quant_state.packing_format_for_cpu  # the layer's own state is left as bitsandbytes made it
