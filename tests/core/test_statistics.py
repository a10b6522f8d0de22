"""core.statistics: verdicts that a true effect reaches and noise does not, on synthetic paired answers."""

import numpy as np
import pytest

from core import statistics as st


def paired(n: int, both: int, only_first: int, only_second: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.zeros(n, bool), np.zeros(n, bool)
    first[:both] = second[:both] = True
    first[both:both + only_first] = True
    second[both + only_first:both + only_first + only_second] = True
    return first, second


def simulate(rng, n: int, accuracy: float, drop: float, flips: float) -> tuple[np.ndarray, np.ndarray]:
    """A reference right on `accuracy` of n images; an artifact whose answers change correctness on a share
    `flips` of the images, as often right-to-wrong as wrong-to-right (noise: no true drop), and that then loses
    a share `drop` of all images among the reference's right answers (a true drop)."""
    ref = rng.random(n) < accuracy
    art = ref.copy()
    lose = ref & (rng.random(n) < (flips / 2 + drop) / accuracy)
    gain = ~ref & (rng.random(n) < (flips / 2) / (1 - accuracy))
    art[lose], art[gain] = False, True
    return ref, art


def test_the_cpu_flip_that_broke_make_test_is_not_a_failure():
    """AVX-512 vs AVX2: a pal4 file 2 of 300 images (0.67 pp) below its float reference, allowed 0.5 pp."""
    for only_first, only_second in ((2, 0), (3, 1), (4, 2), (5, 3), (0, 2)):
        ref, art = paired(300, 255, only_first, only_second)
        verdict = st.drop_verdict(ref, art, 0.005)
        assert verdict.outcome in ("inconclusive", "pass"), (only_first, only_second, verdict)
        assert verdict.n == 300
    ref, art = paired(300, 255, 4, 2)
    verdict = st.drop_verdict(ref, art, 0.005)
    assert verdict.outcome == "inconclusive" and verdict.needed > 300 and "n=300" in verdict.noise_note()
    assert verdict.low < 0.005 < verdict.high and verdict.p_value > 0.5


def test_a_true_drop_is_caught_and_noise_is_not():
    rng = np.random.default_rng(0)
    failures_under_noise = sum(st.drop_verdict(*simulate(rng, 1000, 0.9, 0.0, 0.01), 0.005).failed
                               for _ in range(200))
    # the interval is two-sided at 95%: at most 2.5% of pure-noise runs may cross an allowance it straddles
    assert failures_under_noise <= 10
    caught = sum(st.drop_verdict(*simulate(rng, 1000, 0.9, 0.05, 0.01), 0.005).failed for _ in range(50))
    assert caught == 50  # a 5 pp drop on 1,000 images is never missed
    big = st.drop_verdict(*simulate(rng, 10_000, 0.9, 0.0, 0.001), 0.005)
    assert big.outcome == "pass"  # enough images show a tiny difference to be within the allowance


def test_agreement_verdicts_and_the_images_they_would_need():
    assert st.agreement_verdict(1000, 1000, 0.995).outcome == "pass"
    assert st.agreement_verdict(9898, 10_000, 0.995).outcome == "fail"  # MobileNetV3's 98.98% on 10,000
    assert st.agreement_verdict(30, 300, 0.98).outcome == "fail"  # chance-level agreement
    knife = st.agreement_verdict(199, 200, 0.995)  # "agreement 0.9950" against the 0.995 floor
    assert knife.outcome == "inconclusive" and knife.needed is None  # exactly on it: no size decides
    short = st.agreement_verdict(296, 300, 0.995)
    assert short.outcome == "inconclusive" and 300 < short.needed < 2000
    # at the size it names, the same rate is decided
    assert st.agreement_verdict(round(296 / 300 * short.needed), short.needed, 0.995).outcome == "fail"
    low, high = st.proportion_interval(296, 300)
    assert low < 296 / 300 < high


def test_mcnemar_counts_only_the_images_where_the_two_differ():
    same = st.mcnemar(*paired(1000, 900, 5, 5))
    assert same["p"] == 1.0 and same["only_first"] == same["only_second"] == 5
    assert st.mcnemar(*paired(1000, 900, 2, 0))["p"] == 0.5  # two images: nothing
    assert st.mcnemar(*paired(1000, 900, 30, 5))["p"] < 0.001
    with pytest.raises(ValueError, match="same images"):
        st.paired_table(np.ones(3, bool), np.ones(4, bool))


def test_better_than_chance_is_a_one_sided_binomial_test():
    assert st.better_than_chance(200, 300, 10)["passed"]
    below = st.better_than_chance(24, 300, 10)  # 8% of 10 classes
    assert not below["passed"] and below["p_value"] > 0.5
    assert not st.better_than_chance(1, 1, 10)["passed"]  # one right answer shows nothing (p = 0.1)
    assert not st.better_than_chance(0, 0, 10)["passed"]
    assert st.better_than_chance(60, 100, 2)["p_value"] > 0.01 > st.better_than_chance(65, 100, 2)["p_value"]
    assert st.better_than_chance(30, 300, 10)["p_value"] > 0.4  # 10% of 10 classes is chance
    assert st.better_than_chance(60, 300, 10)["p_value"] < 1e-6


def test_answers_pack_into_the_manifest_and_back():
    answers = np.random.default_rng(1).random(1003) < 0.7
    packed = st.pack(answers)
    assert packed["n"] == 1003 and len(packed["bits"]) < 200
    assert np.array_equal(st.unpack(packed), answers)
    assert st.unpack(packed, n=1000) is None and st.unpack(None) is None  # another test set: not comparable
