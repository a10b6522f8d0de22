"""Section 6: weights only, activations only, both, on the same PTQ model; simulated rows say so."""


def test_weights_only_activations_only_both(section, studied):
    r = section("wa")
    rows = r["rows"]
    sim = {(x["model"], x["weights"], x["activations"]): x for x in rows
           if x["how"] == "simulated" and "PT2E graph" in x["what"]}
    assert {("PTQ", "int8", "fp32"), ("PTQ", "fp32", "int8"), ("PTQ", "int8", "int8")} == set(sim)
    if studied[2]["accuracy"]["chosen"] == "qat":  # OUT's QAT model, the same three
        assert {("QAT", "int8", "fp32"), ("QAT", "fp32", "int8"), ("QAT", "int8", "int8")} <= \
            {(x["model"], x["weights"], x["activations"]) for x in rows if x["how"] == "simulated"}
    rounded = next(x for x in rows if "core.quantize" in x["what"])  # the weight-only files' PyTorch reference
    # Rounding each weight to its per-channel grid is what the PT2E graph does with activations bypassed.
    assert abs(rounded["accuracy"] - sim[("PTQ", "int8", "fp32")]["accuracy"]) <= 2 / 300

    def real(part: str) -> dict:
        return next(x for x in rows if part in x["what"] and x["how"] in ("runtime", "readback"))

    w8a8 = real("xnnpack_int8.pte")  # the simulated W8A8 graph, run for real
    assert w8a8["how"] == "runtime" and (w8a8["weights"], w8a8["activations"]) == ("int8", "int8")
    assert abs(w8a8["accuracy"] - sim[("PTQ", "int8", "int8")]["accuracy"]) <= 2 / 300
    weights_only = real("tflite_w8pcwo.tflite")  # LiteRT's weight-only recipe, in its interpreter
    assert weights_only["how"] == "runtime" and weights_only["activations"] == "fp32"
    assert abs(weights_only["accuracy"] - rounded["accuracy"]) <= 2 / 300
    assert not any(x["weights"] == "fp32" and x["activations"] == "int8" and x["how"] != "simulated" for x in rows)
    assert all(f["verification"]["passed"] for f in r["files"]) and not r["failures"]
    assert {(f["backend"], f["quant"]) for f in r["files"]} == {("executorch", "int8"), ("tflite", "w8pcwo")}
