"""The study holds the files it measures to the thresholds `verify` uses, --rounding-agreement included."""

from types import SimpleNamespace

from converters.verify import Thresholds
from core.config import resolve
from study import artifacts
from study.run import STUDY_SETTINGS


def verified_under(cfg) -> dict:
    return {"backend": "executorch", "quant": "int8",
            "verification": {"passed": True, "basis": {"thresholds": Thresholds.from_config(cfg).basis()}}}


def test_the_study_takes_a_verdict_of_verify_only_under_its_own_rounding_agreement():
    default, stricter = resolve({}), resolve({"rounding_agreement": 0.99})
    study = SimpleNamespace(cfg=stricter)
    # `verify` passed this file at the default floor (0.98): under --rounding-agreement 0.99 the study runs the
    # same bytes again under its own thresholds instead of taking that verdict
    assert not artifacts.verdict_holds(study, verified_under(default))
    assert artifacts.verdict_holds(study, verified_under(stricter))
    assert artifacts.verdict_holds(SimpleNamespace(cfg=default), verified_under(default))


def test_the_study_records_the_thresholds_it_used():
    assert {"min_agreement", "rounding_agreement", "confidence"} <= set(STUDY_SETTINGS)
