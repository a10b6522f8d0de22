"""--nbits auto:PP and grouped palettes in the shipped Core ML export: widths per layer, G-channel LUT groups, refusals."""

import json

import numpy as np
import pytest

from converters.coreml import fold_batchnorm, load_into, read_weights, weight_const
from converters.coreml_checks import lut_checks
from core.errors import BadInput

WIDTHS = {8, 6, 4, 3, 2}


def out_state(out):
    """OUT's manifest and listing: what a refused command must leave as it was."""
    return json.loads((out / "manifest.json").read_text()), sorted(p.name for p in out.iterdir())


def test_a_loose_budget_gives_narrower_widths_per_layer_in_a_file_that_verifies(copy_of, exported):
    pipeline = copy_of(nbits="auto:30", backends="coreml")
    assert pipeline.quant_key() == exported.quant_key()  # an export setting: the quantized model is reused
    assert pipeline.export()
    file = "convnet_coreml_palauto.mlpackage"
    artifact = pipeline.manifest["artifacts"][file]
    widths = artifact["checks"]["layer_nbits"]
    assert set(widths) == {"conv2", "fc1"}  # conv1 and fc2 are below --weight-threshold
    assert set(widths.values()) <= WIDTHS and set(widths.values()) != {8}
    # the file itself holds each layer's LUT at its width
    checks = lut_checks(pipeline.out / file, {weight_const(k): v for k, v in widths.items()})
    assert len(checks["palettized"]) == 2 and not checks["wrong_nbits"] and not checks["not_palettized"]
    assert artifact["verification"]["passed"]
    choice = pipeline.manifest["backends"]["coreml:int8"]["nbits_auto"]
    assert choice["widths"] == widths and choice["reached"] and choice["budget_pp"] == 30
    assert [r["layer"] for r in choice["sensitivity"]] and choice["trace"][0]["accepted"]
    report = (pipeline.out / "report.md").read_text()
    assert f"## Palette width per layer: `{file}` (--nbits auto:30)" in report
    assert all(f"| `{k}` | {v} |" in report for k, v in widths.items())


def test_a_zero_budget_keeps_8_bits_everywhere_and_says_why(copy_of):
    pipeline = copy_of(nbits="auto:0", backends="coreml")
    assert pipeline.export()
    artifact = pipeline.manifest["artifacts"]["convnet_coreml_palauto.mlpackage"]
    assert artifact["checks"]["layer_nbits"] == {"conv2": 8, "fc1": 8}
    assert all(v["indices"] == "UINT8" for v in artifact["checks"]["palettized"].values())
    choice = pipeline.manifest["backends"]["coreml:int8"]["nbits_auto"]
    assert not choice["reached"] and "8 bits everywhere is not shown within the budget" in choice["note"]
    assert choice["note"] in (pipeline.out / "report.md").read_text()


def test_grouped_palettes_of_8_channels_verify_and_read_back_in_groups_of_8(copy_of):
    pipeline = copy_of(nbits=2, group_size=8, backends="coreml")
    assert pipeline.export()
    file = "convnet_coreml_pal2.mlpackage"
    artifact = pipeline.manifest["artifacts"][file]
    assert artifact["verification"]["passed"] and artifact["checks"]["group_size"] == 8
    assert "groups of 8 channels" in artifact["scheme"]["summary"]
    assert artifact["checks"]["lut_groups"] == {  # the file holds one LUT per 8 output channels
        "p_net_conv2_weight_to_fp16_palettized": {"luts": 8, "channels": 64},
        "p_net_fc1_weight_to_fp16_palettized": {"luts": 16, "channels": 128}}
    net = load_into(fold_batchnorm(pipeline.export_source().float_model), read_weights(pipeline.out / file))
    w = net.fc1.weight.detach().numpy().astype(np.float32)
    groups = [len(np.unique(w[g:g + 8])) for g in range(0, w.shape[0], 8)]
    assert max(groups) <= 4  # each group of 8 output channels shares one 2-bit LUT
    assert max(len(np.unique(w[g:g + 16])) for g in range(0, w.shape[0], 16)) > 4  # not groups of 16


def test_a_group_size_that_divides_no_layer_is_refused_naming_them(copy_of):
    pipeline = copy_of(group_size=48, backends="coreml", force=True)
    before = out_state(pipeline.out)
    with pytest.raises(BadInput, match=r"--group-size 48 divides the output channels of no palettized layer "
                                       r"\(`conv2` \(64 output channels\), `fc1` \(128 output channels\)\)"):
        pipeline.export()
    assert out_state(pipeline.out) == before


def test_a_group_size_that_misses_a_layer_leaves_it_dense_and_names_it(copy_of):
    pipeline = copy_of(nbits="auto:30", group_size=128, backends="coreml")
    assert pipeline.export()
    checks = pipeline.manifest["artifacts"]["convnet_coreml_palauto.mlpackage"]["checks"]
    assert checks["dense_group_size"] == {"conv2": 64} and list(checks["layer_nbits"]) == ["fc1"]
    assert weight_const("conv2") in checks["dense"]


@pytest.mark.parametrize("nbits, message", [("auto:x", "write auto:PP"), ("auto:-1", "must be a number >= 0"),
                                            ("best", "give a number of bits or auto:PP")])
def test_a_bad_nbits_is_refused_before_anything_changes(copy_of, make_config, nbits, message):
    from pipeline.stages import Pipeline

    out = copy_of().out
    before = out_state(out)
    with pytest.raises(BadInput, match=message):
        Pipeline(make_config(out, nbits=nbits))
    assert out_state(out) == before


def test_nbits_takes_a_number_or_auto_on_the_command_line_and_a_number_keeps_its_cache_key():
    from core.config import RunConfig
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["export", "--nbits", "auto:1"])
    assert args.nbits == "auto:1"
    assert build_parser().parse_args(["export", "--nbits", "6"]).nbits == 6
    assert RunConfig(nbits="4").validate().key("nbits") == RunConfig(nbits=4).validate().key("nbits")
