"""Core ML palettes of a width per layer (layer_nbits, --nbits auto:PP) and settings checked against the network."""

import dataclasses

import pytest

from converters import ConversionError, ExportOptions
from converters.coreml import CoreMLConverter, weight_const
from converters.coreml_checks import lut_checks
from converters.coreml_palette import auto_budget


def options(cfg, **changes):
    return dataclasses.replace(ExportOptions.from_config(cfg), **changes)


def test_each_layer_gets_the_width_it_was_given_and_the_file_is_checked_for_it(exported, tmp_path):
    opts = options(exported.cfg, nbits="auto:1", layer_nbits=(("conv2", 3), ("fc1", 6)))
    pal = CoreMLConverter().export_scheme(exported.export_source(), tmp_path, opts)[1]
    assert pal.file == "convnet_coreml_palauto.mlpackage" and pal.quant == "palauto"
    assert pal.checks["layer_nbits"] == {"conv2": 3, "fc1": 6} == pal.scheme["layer_nbits"]
    assert pal.checks["palettized"] == {"p_net_conv2_weight_to_fp16_palettized": {"indices": "UINT3", "lut_entries": 8},
                                        "p_net_fc1_weight_to_fp16_palettized": {"indices": "UINT6", "lut_entries": 64}}
    assert "per-layer (6/3-bit)" in pal.scheme["summary"]
    # the check reads each LUT's width against its layer's: another width, or a layer left dense, is caught
    wrong = lut_checks(tmp_path / pal.file, {weight_const("conv2"): 4, weight_const("fc1"): 6, weight_const("fc2"): 2})
    assert list(wrong["wrong_nbits"]) == ["p_net_conv2_weight_to_fp16_palettized"]
    assert wrong["not_palettized"] == [weight_const("fc2")]


def test_auto_without_the_chosen_widths_writes_nothing(exported, tmp_path):
    with pytest.raises(ConversionError, match="needs the width of each layer"):
        CoreMLConverter()._palettize(exported.export_source(), tmp_path, options(exported.cfg, nbits="auto:1"))
    assert list(tmp_path.iterdir()) == []


def test_a_group_size_that_fits_no_palettized_layer_is_refused_and_one_that_misses_some_is_named(exported):
    from converters.coreml_palette import ungrouped

    source, conv = exported.export_source(), CoreMLConverter()
    assert conv.source_problems(source, options(exported.cfg, group_size=32)) == []
    problems = conv.source_problems(source, options(exported.cfg, group_size=48))
    assert len(problems) == 1 and "`conv2` (64 output channels), `fc1` (128 output channels)" in problems[0]
    assert "here 32, 16, 8" in problems[0]
    # 128 divides fc1's channels, not conv2's: not refused, conv2 is named as left dense
    assert conv.source_problems(source, options(exported.cfg, group_size=128)) == []
    assert ungrouped(source.float_model, options(exported.cfg, group_size=128)) == {"conv2": 64}
    # a layer kept float, or below --weight-threshold, is not palettized: its channels do not matter
    assert ungrouped(source.float_model, options(exported.cfg, group_size=128), ("conv2",)) == {}
    assert conv.source_problems(source, options(exported.cfg, group_size=48, granularity="per_tensor")) == []


@pytest.mark.parametrize("nbits, problem", [("auto:x", "write auto:PP"), ("auto", "write auto:PP"),
                                            ("auto:-2", ">= 0 percentage points"), ("4bit", "a number of bits or auto:PP"),
                                            (5, "--nbits 5 is not supported")])
def test_bad_nbits_are_named(exported, nbits, problem):
    problems = CoreMLConverter().validate(options(exported.cfg, nbits=nbits))
    assert len(problems) == 1 and problem in problems[0]


def test_auto_budget_and_a_granularity_meant_for_int8_weights(exported):
    assert auto_budget("auto:0.5") == 0.5 and auto_budget(4) is None
    problems = CoreMLConverter().validate(options(exported.cfg, granularity="per_channel"))
    assert "the int8 weights' is --weight-granularity" in problems[0]


def test_the_number_of_luts_per_weight_is_checked_against_the_granularity(exported):
    from converters.coreml_checks import wrong_groups

    checks = lut_checks(exported.out / "convnet_coreml_pal4.mlpackage", 4)
    assert checks["lut_groups"]["p_net_fc1_weight_to_fp16_palettized"] == {"luts": 8, "channels": 128}  # groups of 16
    assert wrong_groups(checks, options(exported.cfg)) == {}
    assert set(wrong_groups(checks, options(exported.cfg, group_size=8))) == {
        "p_net_conv2_weight_to_fp16_palettized", "p_net_fc1_weight_to_fp16_palettized"}
    assert wrong_groups(checks, options(exported.cfg, granularity="per_tensor"))
