"""Section 2: accuracy with only layer L quantized, and with only L float (PTQ), ranked."""


def test_sensitivity_table_and_ranking(section, studied):
    r = section("sensitivity")
    rows = {x["layer"]: x for x in r["layers"]}
    assert set(rows) == {"conv1", "conv2", "fc1", "fc2"} and sorted(r["ranking"]) == sorted(rows)
    assert r["how"] == "simulated"
    assert r["ptq_int8_accuracy"] == studied[2]["accuracy"]["ptq"]  # the same PTQ, measured once per run
    for x in rows.values():
        assert abs(x["recovery_when_float_pp"] - 100 * (x["only_float_accuracy"] - r["ptq_int8_accuracy"])) < 1e-9
        assert abs(x["drop_when_quantized_pp"] - 100 * (r["fp32_accuracy"] - x["only_quantized_accuracy"])) < 1e-9
        assert x["only_quantized_accuracy"] > 0.5 and x["only_float_accuracy"] > 0.5
    recoveries = [rows[name]["recovery_when_float_pp"] for name in r["ranking"]]
    assert recoveries == sorted(recoveries, reverse=True)


def test_keeping_every_layer_float_gives_the_fp32_model(exported, make_config, tmp_path):
    """The per-module setting really leaves a layer float: with all of them float, PTQ is the fp32 network."""
    import shutil

    from study.context import Study

    out = tmp_path / "out"
    shutil.copytree(exported.out, out, ignore=shutil.ignore_patterns("*.mlpackage", "*.pte", "*.tflite"))
    study = Study.open(make_config(out, study_sections="sensitivity"))
    assert study.ptq_accuracy(set(study.layers)) == study.fp32_accuracy
    assert study.ptq_accuracy(set(reversed(study.layers))) == study.fp32_accuracy
    assert len(study._ptq) == 1  # cached by the set of float layers, whatever their order
