"""The export's rounding report, by its values: on a layer whose merged weights are known, which LoRA deltas a
16-bit export keeps and which it wipes out."""

import math

import pytest
import torch


def _adapted_layer(deltas: list[float]):
    """A 2 x 2 linear layer with weights 1.0 and a rank-1 adapter whose delta rows are ``deltas``."""
    from peft import LoraConfig, get_peft_model

    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(2, 2, bias=False))
    torch.nn.init.ones_(model.proj.weight)
    model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["proj"], lora_dropout=0.0))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[d] for d in deltas]))
    return model


def test_a_bf16_export_keeps_the_deltas_above_half_an_ulp_and_loses_the_rest():
    """At 1.0 one bf16 ulp is 2^-7: a delta of 1e-4 rounds away (1 + 1e-4 -> 1), one of 0.5 stays exactly (1.5)."""
    from zephyr.export import rounding_report

    report = rounding_report(_adapted_layer([1e-4, 0.5]), torch.bfloat16)
    small, large = torch.tensor(1e-4).item(), 0.5  # the delta as float32 computes it
    assert report["dtype"] == "bfloat16" and report["delta_entries"] == 4
    assert report["delta_entries_lost"] == 0.5  # both entries of the small row
    # what the export carries: 0 for the lost entries, exactly D for the kept ones
    assert report["delta_relative_error"] == pytest.approx(math.sqrt(2 * small**2 / (2 * small**2 + 2 * large**2)))
    assert report["delta_rms_over_weight_rms"] == pytest.approx(math.sqrt((2 * small**2 + 2 * large**2) / 4))
    assert report["median_abs_delta_in_ulps"] == pytest.approx(small / 2**-7)  # the lower middle of 4 values


def test_fp16_keeps_more_of_a_delta_than_bf16():
    """fp16 has 3 more mantissa bits: 2^-8 is half a bf16 ulp at 1.0 (lost: ties round to even) and four fp16 ulps."""
    from zephyr.export import rounding_report

    model = _adapted_layer([0.00390625, 0.5])
    assert rounding_report(model, torch.bfloat16)["delta_entries_lost"] == 0.5
    assert rounding_report(model, torch.float16)["delta_entries_lost"] == 0.0
