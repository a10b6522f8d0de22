"""`--keep-float` in the shipped export: which layers the `qat` stage leaves float, and the options the
converters get so that those layers stay float in the .pte, the .tflite and Core ML's W8A8 package.

The choice itself is the study's (study/mixed.py `choose`, over study/sensitivity.py's ranking):
`auto:PP` walks the layers most sensitive first until PTQ is no longer shown more than PP points
below fp32 on the test set; `NAME,...` names them; `none` (or unset) keeps nothing float.
"""

from __future__ import annotations

from core.console import say

from study import StudyError
from study.context import KeepFloat, Study, check_scheme, parse_keep_float


def setting(cfg) -> KeepFloat:
    """The pipeline's reading of --keep-float: unset is `none` (the study's default auto:0.5 is the study's only)."""
    return parse_keep_float("none" if cfg.keep_float is None else cfg.keep_float)


def active(cfg) -> bool:
    keep = setting(cfg)
    return keep.auto_pp is not None or bool(keep.names)


def choose(pipeline) -> tuple[tuple[str, ...], dict | None]:
    """(the layers to leave float, in the model's order; the study's choice record), or ((), None) under none.

    Runs in every torchrun process alike: PTQ calibration and evaluation run on the CPU, on the same
    batches, so every rank reaches the same layers."""
    keep = setting(pipeline.cfg)
    if not active(pipeline.cfg):
        return (), None
    scheme = pipeline.scheme()
    try:
        check_scheme(scheme)
    except StudyError as exc:
        raise StudyError(f"--keep-float {pipeline.cfg.keep_float}: {exc}") from None
    study = Study(pipeline.cfg, pipeline, pipeline.out / "study", scheme, keep, sections=[])
    unknown = [n for n in keep.names if n not in study.layers]
    if unknown:
        raise StudyError(f"--keep-float: {unknown} are not conv/linear layers of {pipeline.cfg.model}; "
                         f"its layers are {', '.join(study.layers)}")
    from study import mixed

    choice = mixed.choose(study)
    layers = tuple(n for n in study.layers if n in choice["chosen"])
    if pipeline.ctx.is_main:
        say(f"qat: --keep-float {pipeline.cfg.keep_float}: "
            + (f"{list(layers)} stay float" if layers else "no layer needs to stay float"))
    return layers, choice
