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


def _near_tie_case(changed_near: int, changed_decisive: int, step: float = 0.1):
    """400 images of 10 classes with int8-like logits (whole steps of `step`): the reference leads its
    runner-up by 2 output steps on the first 200 images (near ties) and by 20 on the rest. The artifact moves
    logits by at most 3 steps and turns `changed_near` near ties and `changed_decisive` decisive answers. The
    near ties are the reference's mistakes (label: a third class), so turning them costs no accuracy."""
    n = 400
    answer = np.arange(n) % 10
    labels = np.where(np.arange(n) < 200, (answer + 2) % 10, answer)
    ref = np.zeros((n, 10))
    ref[np.arange(n), answer] = np.where(np.arange(n) < 200, 2, 20) * step
    art = ref.copy()
    runner_up = (answer + 1) % 10
    near = np.arange(changed_near)
    art[near, runner_up[near]] += 3 * step
    decisive = np.arange(200, 200 + changed_decisive)
    art[decisive, runner_up[decisive]] += 21 * step
    return art.astype(np.float32), ref.astype(np.float32), labels


def test_under_the_rounding_floor_near_ties_are_left_out_of_the_agreement_and_reported():
    thresholds = Thresholds()
    floor = rounding_floor(PASSED_LOCAL, 100, thresholds, output_step=0.1)
    assert floor["near_tie"] == {"steps": 8, "output_step": 0.1} and "leads by more than 8 output steps" in floor["why"]
    # 30 of 400 answers changed (92.5%, below the 98% floor), all near ties (leads of 2 steps): the 200 decisive
    # answers all agree
    art, ref, labels = _near_tie_case(changed_near=30, changed_decisive=0)
    plain_floor = rounding_floor(PASSED_LOCAL, 100, thresholds)  # no output step known: every image counts
    assert plain_floor["near_tie"] is None
    assert not verify(ARTIFACT, art, ref, labels, thresholds, rounding=plain_floor)["passed"]
    held = verify(ARTIFACT, art, ref, labels, thresholds, rounding=floor)
    assert held["passed"], held["failures"]
    assert held["near_ties"] == {"steps": 8, "output_step": 0.1, "images": 200, "changed": 30}
    assert held["agreement"] == 370 / 400  # the overall agreement is still what it is
    agreement = held["verdicts"][0]
    assert agreement["n"] == 200 and agreement["observed"] == 1.0 and "more than 8 output steps" in agreement["name"]
    # decisive answers that change still fail: 12 of 200 decisive (94.0%, CI [89.8, 96.9]%) is below 98%
    failed = verify(ARTIFACT, *_near_tie_case(changed_near=0, changed_decisive=12), thresholds, rounding=floor)
    assert not failed["passed"] and any("on the 200 of 400 images where it leads by more than 8" in f
                                        for f in failed["failures"])
    # --near-tie-steps 0 counts every image
    none = rounding_floor(PASSED_LOCAL, 100, Thresholds(near_tie_steps=0), output_step=0.1)
    assert none["near_tie"] is None
    assert not verify(ARTIFACT, art, ref, labels, Thresholds(near_tie_steps=0), rounding=none)["passed"]


def test_the_verify_stage_takes_the_output_step_from_the_parity_layers():
    from pipeline.verify import output_step

    art, ref, labels = _near_tie_case(changed_near=30, changed_decisive=0)
    manifest = _manifest(local_passed=True)
    artifact = manifest["artifacts"]["m.tflite"]
    recheck = {"m.tflite": lambda rounding: verify(artifact, art, ref, labels, Thresholds(), None, rounding)}
    parity_result = {**manifest["parity"], "layers": [{"name": "conv", "scale": 0.5},
                                                      {"name": "fc", "scale": 0.1, "is_output": True}]}
    assert output_step(parity_result) == 0.1 and output_step(manifest["parity"]) is None
    accept_rounding(SimpleNamespace(manifest=manifest), recheck, Thresholds(), parity_result)
    held = artifact["verification"]
    assert held["passed"] and held["near_ties"]["images"] == 200 and held["near_ties"]["changed"] == 30
    # a coarser step (2.0: every lead is under one step) would leave no image to judge: then every image counts
    coarse = verify(artifact, art, ref, labels, Thresholds(), None,
                    rounding_floor(PASSED_LOCAL, 100, Thresholds(), output_step=2.0))
    assert coarse["verdicts"][0]["n"] == 400 and coarse["near_ties"] is None and not coarse["passed"]
