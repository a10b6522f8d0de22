"""Section 3: the layers kept float, chosen automatically or by name, exported to every runtime and verified."""

from types import SimpleNamespace

from study.context import KeepFloat
from study.mixed import choose


def fake_study(accuracies: dict, ranking: list[str], budget: float | None, names=()):
    """A study whose PTQ accuracies are known: accuracies[frozenset of float layers]."""
    return SimpleNamespace(fp32_accuracy=0.90, keep=KeepFloat(budget, tuple(names)), layers=ranking,
                           ptq_accuracy=lambda kept: accuracies[frozenset(kept)],
                           sensitivity={"ranking": ranking, "layers": []})


def test_auto_keeps_the_fewest_most_sensitive_layers():
    acc = {frozenset(): 0.880, frozenset({"b"}): 0.893, frozenset({"b", "a"}): 0.897, frozenset({"b", "a", "c"}): 0.90,
           frozenset({"a"}): 0.885}
    c = choose(fake_study(acc, ["b", "a", "c"], budget=0.5))
    assert c["chosen"] == ["b", "a"] and c["reached"]  # 2.0 pp -> 0.7 pp -> 0.3 pp <= 0.5
    assert [t["kept"] for t in c["trace"]] == [[], ["b"], ["b", "a"]]
    assert choose(fake_study(acc, ["b", "a", "c"], budget=2.0))["chosen"] == []  # int8 already within budget
    assert choose(fake_study(acc, ["b", "a", "c"], budget=0.0))["chosen"] == ["b", "a", "c"]
    unreachable = {**acc, frozenset({"b", "a", "c"}): 0.899}
    c = choose(fake_study(unreachable, ["b", "a", "c"], budget=0.0))
    assert c["chosen"] == ["b", "a", "c"] and c["reached"] is False
    c = choose(fake_study(acc, ["b", "a", "c"], budget=None, names=("a",)))
    assert c["mode"] == "explicit" and c["chosen"] == ["a"] and len(c["trace"]) == 2


def test_mixed_precision_in_every_runtime(section):
    r = section("mixed")
    assert r["choice"]["chosen"] == ["fc2"] and r["choice"]["mode"] == "explicit"
    files = {(f["backend"], f["quant"]): f for f in r["files"]}
    assert set(files) == {("executorch", "int8_mixed"), ("tflite", "int8_mixed"), ("coreml", "int8_mixed"),
                          ("coreml", "pal4_mixed")}
    assert all(f["verification"]["passed"] for f in files.values()), {k: f["verification"] for k, f in files.items()}
    pte = files[("executorch", "int8_mixed")]["checks"]
    assert (pte["compute_ops"], pte["int8_compute_ops"]) == (4, 3)  # fc2 runs as an fp32 XNNPACK op
    assert pte["float_layers"] == ["fc2"]
    assert r["tflite_float_layers"] == {"fc2": True}
    tfl = files[("tflite", "int8_mixed")]["checks"]
    assert len(tfl["float_compute_ops"]) == 1 and not tfl["fully_int8"]
    assert "p_net_fc2_weight_to_fp16" in files[("coreml", "pal4_mixed")]["checks"]["dense"]
    assert r["coreml_dense_anyway"] == ["fc2"]  # 1280 weights: under --weight-threshold, dense in pal4 too
    assert all(f["full_int8_file"] for f in files.values())  # each compared with OUT's fully quantized file
    for backend in ("executorch", "tflite"):
        assert r["latency"][backend]["ratio_to_full_int8"] > 0
        assert set(r["latency"][backend]["p50_ms"]) == {"mixed", "full", "fp32"}
    assert 0.5 < r["quantized_accuracy"] <= 1 and r["mode"] in ("ptq", "qat")
