"""Section 6: weights only, activations only, both, on the same PTQ model; simulated rows say so."""


def test_weights_only_activations_only_both(section):
    r = section("wa")
    sim = {(x["model"], x["weights"], x["activations"]): x for x in r["rows"] if x["how"] == "simulated"}
    assert {("PTQ", "int8", "fp32"), ("PTQ", "fp32", "int8"), ("PTQ", "int8", "int8"), ("QAT", "int8", "fp32"),
            ("QAT", "fp32", "int8"), ("QAT", "int8", "int8")} <= set(sim)
    real = {(x["weights"], x["how"]): x for x in r["rows"] if x["how"] in ("runtime", "readback")}
    pte = real[("int8", "runtime")]  # W8A8 in ExecuTorch: the simulated W8A8 graph, run for real
    assert "xnnpack_int8.pte" in pte["what"]
    assert abs(pte["accuracy"] - sim[("PTQ", "int8", "int8")]["accuracy"]) <= 2 / 300
    assert "linear8" in real[("int8", "readback")]["what"]  # W8 only, from a Core ML file, read back
    assert not any(x["weights"] == "fp32" and x["activations"] == "int8" and x["how"] != "simulated" for x in r["rows"])
    assert all(f["verification"]["passed"] for f in r["files"])
