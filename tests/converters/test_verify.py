"""converters.verify: the thresholds an artifact is held to, and the rounding floor that teacher-forced parity earns."""

from types import SimpleNamespace

import numpy as np

from converters.verify import Thresholds, rounding_floor, verify
from pipeline.verify import accept_rounding

ARTIFACT = {"reference": "quantized", "quant": "int8", "backend": "tflite", "checks": {}}
PASSED_LOCAL = {"passed": True, "layers": 7, "max_steps": 1,
                "worst": {"layer": "avgpool", "op": "adaptive_avg_pool2d", "max_steps": 1, "equal_share": 0.8}}


def _logits(predictions: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[predictions]


def _case(disagree: int, newly_wrong: int = 0):
    """1000 images; the reference is right on 950. The artifact answers differently on `disagree` of the
    reference's 50 mistakes (so its accuracy is the same) and gets `newly_wrong` of its right answers wrong."""
    labels = np.arange(1000) % 10
    ref = labels.copy()
    ref[:50] = (labels[:50] + 1) % 10
    art = ref.copy()
    art[:disagree] = (labels[:disagree] + 2) % 10
    art[50:50 + newly_wrong] = (labels[50:50 + newly_wrong] + 3) % 10
    return _logits(art), _logits(ref), labels


def test_rounding_floor_lowers_only_the_agreement_threshold():
    logits, ref, labels = _case(disagree=12)  # agreement 98.8%, accuracy unchanged
    plain = verify(ARTIFACT, logits, ref, labels, Thresholds())
    assert not plain["passed"] and len(plain["failures"]) == 1 and "agreement" in plain["failures"][0]
    floor = rounding_floor(PASSED_LOCAL, 100, Thresholds())
    assert floor["min_agreement"] == 0.98 and "teacher-forced" in floor["why"] and "`avgpool`" in floor["why"]
    held = verify(ARTIFACT, logits, ref, labels, Thresholds(), rounding=floor)
    assert held["passed"] and held["min_agreement"] == 0.98 and "teacher-forced" in held["loosened"]
    # the floor is a floor: clearly below it (96.0%, 95% CI [94.6, 97.1]%) still fails
    assert not verify(ARTIFACT, *_case(disagree=40), Thresholds(), rounding=floor)["passed"]
    # and the accuracy check against the reference still holds: 20 right answers lost is 2.0 pp (CI [1.2, 3.0])
    lost = verify(ARTIFACT, *_case(disagree=0, newly_wrong=20), Thresholds(), rounding=floor)
    assert not lost["passed"] and any("below the quantized reference" in f for f in lost["failures"])


def test_no_floor_without_passing_teacher_forced_parity():
    assert rounding_floor({**PASSED_LOCAL, "passed": False}, 100, Thresholds()) is None
    assert rounding_floor({}, 100, Thresholds()) is None
    # a rounding floor at or above the plain threshold is no loosening at all
    assert rounding_floor(PASSED_LOCAL, 100, Thresholds(min_agreement=0.97, rounding_agreement=0.98)) is None


def _manifest(local_passed: bool, sha: str = "abc") -> dict:
    artifact = {**ARTIFACT, "scheme": {"tag": "int8"}, "sha256": "abc",
                "verification": {"passed": False, "failures": ["top-1 agreement ..."], "method": "LiteRT",
                                 "images": 1000, "seconds": 1.0, "basis": {"sha256": "abc"}}}
    return {"artifacts": {"m.tflite": artifact},
            "parity": {"images": 100, "scheme": {"tag": "int8"}, "files": {"m.tflite": sha},
                       "local_check": {"tflite": {**PASSED_LOCAL, "passed": local_passed}}}}


def _accept(manifest: dict) -> dict:
    logits, ref, labels = _case(disagree=12)
    thresholds = Thresholds()
    artifact = manifest["artifacts"]["m.tflite"]
    recheck = {"m.tflite": lambda rounding: verify(artifact, logits, ref, labels, thresholds, None, rounding)}
    accept_rounding(SimpleNamespace(manifest=manifest), recheck, thresholds, manifest["parity"])
    return artifact["verification"]


def test_verify_stage_accepts_rounding_only_on_the_bytes_parity_cleared():
    held = _accept(_manifest(local_passed=True))
    assert held["passed"] and "teacher-forced" in held["loosened"]
    assert held["method"] == "LiteRT" and held["basis"] == {"sha256": "abc"}  # what the first run recorded stays
    assert not _accept(_manifest(local_passed=False))["passed"]
    assert not _accept(_manifest(local_passed=True, sha="other bytes"))["passed"]


def test_the_smallest_test_set_that_can_show_the_agreement_floor():
    from core.statistics import proportion_interval

    n = Thresholds().smallest_test_set()
    assert n == 736  # 99.5% at 95%: perfect agreement on fewer images cannot show it
    assert proportion_interval(n, n)[0] >= 0.995 > proportion_interval(n - 1, n - 1)[0]
    assert Thresholds(min_agreement=0.98).smallest_test_set() == 183


def test_a_knife_edge_is_reported_as_not_distinguishable_and_a_clear_miss_fails():
    """'agreement 0.9950' on 200 images against the 0.995 floor: one image from the other side."""
    labels = np.arange(200) % 10
    ref = labels.copy()
    art = ref.copy()
    art[0] = (labels[0] + 1) % 10
    result = verify({**ARTIFACT, "quant": "fp32", "reference": "fp32"}, _logits(art), _logits(ref), labels, Thresholds())
    assert result["passed"] and result["outcome"] == "within noise"
    assert any("n=200" in u and "agreement" in u for u in result["undecided"])
    art[:20] = (labels[:20] + 1) % 10  # 90%: far below
    failed = verify({**ARTIFACT, "quant": "fp32", "reference": "fp32"}, _logits(art), _logits(ref), labels, Thresholds())
    assert not failed["passed"] and "n=200" in failed["failures"][0]


def test_the_files_own_answers_per_image_are_kept_for_paired_comparisons():
    from core import statistics

    logits, ref, labels = _case(disagree=0, newly_wrong=20)
    result = verify(ARTIFACT, logits, ref, labels, Thresholds())
    answers = statistics.unpack(result["per_image"], len(labels))
    assert answers is not None and answers.shape == (1000,)
    assert np.array_equal(answers, logits.argmax(1) == labels)
    assert answers.sum() == round(result["accuracy"] * 1000) == 930
