"""Section 4: Core ML palettization at the --sweep-bits widths and linear quantization at 8 and 4 bits:
accuracy against size."""


def test_sweep_sizes_and_accuracies(section, studied):
    r = section("sweep")
    rows = {(x["scheme"], x["bits"]): x for x in r["rows"]}
    widths = (4, 2, 1)  # the tests' --sweep-bits (the default adds 8, 6 and 3)
    assert studied[0].sweep_bits == "4,2,1"
    assert set(rows) == {("fp16", 16), *(("palettized", b) for b in widths), ("linear", 8), ("linear", 4)}
    sizes = [rows[("palettized", b)]["bytes"] for b in widths]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < rows[("fp16", 16)]["bytes"]
    assert rows[("linear", 4)]["bytes"] < rows[("linear", 8)]["bytes"] < rows[("fp16", 16)]["bytes"]
    assert 0.2 < rows[("palettized", 4)]["size_ratio_to_fp16"] < 0.32  # fc1 dominates: 4 of 16 bits, plus the LUT
    assert all(x["how"] == "readback" for x in r["rows"])  # Linux: weights read back into PyTorch
    assert rows[("palettized", 4)]["agreement_with_float"] >= 0.98 and rows[("linear", 8)]["agreement_with_float"] >= 0.99
    ops = {f["quant"]: f["checks"]["weight_ops"] for f in r["files"] if f["quant"] != "fp16"}
    assert ops["pal1"] == {"constexpr_lut_to_dense": 2}  # conv2 and fc1; conv1 and fc2 are under the threshold
    assert "constexpr_lut_to_dense" not in ops["linear8"] and sum(ops["linear8"].values()) == 2
    assert r["dense_layers"] == ["p_net_conv1_weight_to_fp16", "p_net_fc2_weight_to_fp16"]
