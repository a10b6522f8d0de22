"""`--quant-mode auto`: QAT is kept unless PTQ is significantly better on the same test images (exact McNemar)."""

from types import SimpleNamespace

import numpy as np
import pytest

from core.schemes import Scheme
from pipeline import quantize


def answers(n: int, ptq_only: int, qat_only: int) -> dict:
    ptq, qat = np.zeros(n, bool), np.zeros(n, bool)
    ptq[:800] = qat[:800] = True
    ptq[800:800 + ptq_only] = True
    qat[800 + ptq_only:800 + ptq_only + qat_only] = True
    return {"ptq": ptq, "qat": qat}


def choose(mode: str, got: dict, capsys) -> tuple[str, dict, str]:
    me = SimpleNamespace(manifest={"accuracy": {"fp32": 0.85}}, cfg=SimpleNamespace(confidence=0.95))
    accuracy = {name: float(a.mean()) for name, a in got.items()}
    chosen, test = quantize.choose(Scheme(mode=mode), me.manifest["accuracy"]["fp32"], accuracy, got, me.cfg.confidence)
    return chosen, test, capsys.readouterr().out


def test_two_images_are_within_noise_and_qat_is_kept(capsys):
    """What `make export-android` printed as "made this network worse": PTQ 0.9620, QAT 0.9600 on 1,000."""
    chosen, test, out = choose("auto", answers(1000, 4, 2), capsys)
    assert chosen == "qat" and "WARNING" not in out and "made this network worse" not in out
    assert "within noise" in out and "n = 1000" in out and f"p = {test['p']:.2g}" in out
    assert test["test"] == "exact McNemar" and test["n"] == 1000 and test["p"] > 0.5


@pytest.mark.parametrize("mode, kept", [("auto", "ptq"), ("qat", "qat")])
def test_a_significant_loss_to_ptq_is_reported_and_auto_keeps_ptq(capsys, mode, kept):
    chosen, test, out = choose(mode, answers(1000, 40, 5), capsys)
    assert chosen == kept and test["p"] < 0.001
    assert "WARNING: PTQ (0.8400) is significantly better than QAT (0.8050)" in out and "made this network worse" in out


def test_qat_at_least_as_good_says_nothing_of_noise(capsys):
    chosen, _, out = choose("auto", answers(1000, 0, 30), capsys)
    assert chosen == "qat" and "within noise" not in out and "WARNING" not in out
