import math

from core.evaluate import better_than_chance
from core.train import divergence


def test_better_than_chance_is_a_one_sided_binomial_test():
    assert better_than_chance(200, 300, 10)["passed"]
    below = better_than_chance(24, 300, 10)  # 8% of 10 classes
    assert not below["passed"] and below["p_value"] > 0.5
    assert not better_than_chance(1, 1, 10)["passed"]  # one right answer shows nothing (p = 0.1)
    assert not better_than_chance(0, 0, 10)["passed"]
    assert better_than_chance(60, 100, 2)["p_value"] > 0.01 > better_than_chance(65, 100, 2)["p_value"]


def test_divergence_names_a_non_finite_or_exploding_loss():
    assert divergence([{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": 0.5}], 10) is None
    assert "epoch 2 is nan" in divergence([{"epoch": 1, "loss": 1.2}, {"epoch": 2, "loss": math.nan}], 10)
    assert "exploded" in divergence([{"epoch": 1, "loss": 9.6e9}], 10)
    assert divergence([], 10) is None
