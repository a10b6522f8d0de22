"""Section 3: the layers kept float, chosen automatically or by name, exported to every runtime and verified."""

from types import SimpleNamespace

import numpy as np

from study.context import KeepFloat
from study.mixed import choose


def answers(accuracy: float, n: int) -> np.ndarray:
    """Right on the first accuracy * n images: each PTQ variant loses a subset of fp32's right answers."""
    return np.arange(n) < round(accuracy * n)


def fake_study(accuracies: dict, ranking: list[str], budget: float | None, names=(), n: int = 10_000):
    """A study whose PTQ answers are known: accuracies[frozenset of float layers], on n images (10,000: enough
    that 0.7 pp is shown beyond a 0.5 pp budget and 0.3 pp is not)."""
    return SimpleNamespace(fp32_answers=answers(0.90, n), keep=KeepFloat(budget, tuple(names)), layers=ranking,
                           ptq_answers=lambda kept: answers(accuracies[frozenset(kept)], n),
                           cfg=SimpleNamespace(confidence=0.95), sensitivity={"ranking": ranking, "layers": []})


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


def test_auto_does_not_buy_a_float_layer_for_a_drop_within_noise():
    """0.7 pp above a 0.5 pp budget on 10,000 images is shown; on 500 images (4 images) it is not."""
    acc = {frozenset(): 0.880, frozenset({"b"}): 0.893, frozenset({"b", "a"}): 0.897}
    c = choose(fake_study(acc, ["b", "a"], budget=0.5, n=500))
    assert c["chosen"] == ["b"] and c["reached"]
    verdict = c["trace"][-1]["verdict"]
    assert verdict["outcome"] == "inconclusive" and verdict["n"] == 500 and verdict["observed"] > 0.005


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
