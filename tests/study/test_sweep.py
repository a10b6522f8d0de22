"""Section 4: Core ML palettization at 8..1 bits and linear quantization at 8 and 4 bits: accuracy against size."""


def test_sweep_sizes_and_accuracies(section):
    r = section("sweep")
    rows = {(x["scheme"], x["bits"]): x for x in r["rows"]}
    assert set(rows) == {("fp16", 16), *(("palettized", b) for b in (8, 6, 4, 3, 2, 1)), ("linear", 8), ("linear", 4)}
    sizes = [rows[("palettized", b)]["bytes"] for b in (8, 6, 4, 3, 2, 1)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < rows[("fp16", 16)]["bytes"]
    assert rows[("linear", 4)]["bytes"] < rows[("linear", 8)]["bytes"] < rows[("fp16", 16)]["bytes"]
    assert 0.45 < rows[("palettized", 8)]["size_ratio_to_fp16"] < 0.55  # fc1 dominates: 8 of 16 bits
    assert all(x["how"] == "readback" for x in r["rows"])  # Linux: weights read back into PyTorch
    assert rows[("palettized", 8)]["agreement_with_float"] >= 0.99 and rows[("linear", 8)]["agreement_with_float"] >= 0.99
    ops = {f["quant"]: f["checks"]["weight_ops"] for f in r["files"] if f["quant"] != "fp16"}
    assert ops["pal1"] == {"constexpr_lut_to_dense": 2}  # conv2 and fc1; conv1 and fc2 are under the threshold
    assert "constexpr_lut_to_dense" not in ops["linear8"] and sum(ops["linear8"].values()) == 2
    assert r["dense_layers"] == ["p_net_conv1_weight_to_fp16", "p_net_fc2_weight_to_fp16"]
