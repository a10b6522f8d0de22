"""What every section of the study shares: the resolved settings, OUT's model and data, and cached evaluations."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from converters.coreml import NBITS
from core import io as atomic
from core.config import FIELDS, RunConfig
from core.console import say
from core.evaluate import predict
from core.schemes import Scheme
from core.workspace import CHECKPOINT, ExportSource, Workspace

from . import StudyError, quant

SECTIONS = ("error", "sensitivity", "mixed", "sweep", "pruning", "wa")
TITLES = {"error": "Per-layer quantization error", "sensitivity": "Sensitivity", "mixed": "Automatic mixed precision",
          "sweep": "Bit-width sweep (Core ML)", "pruning": "Pruning against quantization",
          "wa": "Weight-only, activation-only, both"}
# Settings that describe the trained model (its data, training and quantization): the study takes them from
# OUT's manifest, so it studies the model OUT holds, whatever the command line says about data or model.
RECORDED_GROUPS = ("data", "train", "quant")
STUDY_KEEP_FLOAT = "auto:0.5"  # the study's --keep-float when none is given
NOT_RECORDED = ("threads", "resume")


def parse_sections(text: str) -> list[str]:
    words = [w.strip().lower() for w in str(text).split(",") if w.strip()]
    if not words or words == ["all"]:
        return list(SECTIONS)
    chosen = []
    for w in words:
        name = SECTIONS[int(w) - 1] if w.isdigit() and 1 <= int(w) <= len(SECTIONS) else w
        if name not in SECTIONS:
            raise StudyError(f"--study-sections: unknown section {w!r}; use all, or some of {', '.join(SECTIONS)} (or 1-6)")
        if name not in chosen:
            chosen.append(name)
    return [s for s in SECTIONS if s in chosen]


def parse_bits(text: str) -> tuple[int, ...]:
    """--sweep-bits: palettization widths, widest first."""
    words = [w.strip() for w in str(text).split(",") if w.strip()]
    if not words or any(not w.isdigit() or int(w) not in NBITS for w in words):
        raise StudyError(f"--sweep-bits {text!r}: give some of {','.join(map(str, sorted(NBITS, reverse=True)))}")
    return tuple(sorted({int(w) for w in words}, reverse=True))


@dataclass(frozen=True)
class KeepFloat:
    """--keep-float: `auto` with a budget in percentage points, or explicit layer names (none: empty)."""

    auto_pp: float | None
    names: tuple[str, ...] = ()


def parse_keep_float(text: str) -> KeepFloat:
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return KeepFloat(None, ())
    if text.lower().startswith("auto"):
        _, _, budget = text.partition(":")
        try:
            pp = float(budget) if budget else 0.5
        except ValueError:
            raise StudyError(f"--keep-float {text!r}: write auto:PP with PP a number of percentage points, e.g. auto:0.5") from None
        if not pp >= 0:
            raise StudyError(f"--keep-float {text!r}: the budget PP must be >= 0 percentage points")
        return KeepFloat(pp, ())
    return KeepFloat(None, tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip())))


def resolve_config(cfg: RunConfig, manifest: dict) -> RunConfig:
    """This run's settings, with the model's own data, training and quantization settings from OUT's manifest."""
    recorded = manifest.get("config", {})
    values = cfg.to_dict()
    for name, f in FIELDS.items():
        if f.metadata["group"] in RECORDED_GROUPS and name not in NOT_RECORDED and name in recorded:
            if recorded[name] != values[name] and name in ("dataset", "model"):
                say(f"study: {cfg.out} holds a model trained with --{name.replace('_', '-')} {recorded[name]}; "
                      f"studying that, not {values[name]}")
            values[name] = recorded[name]
    return RunConfig(**values).validate()


@dataclass
class Study:
    """One study run: OUT's workspace read-only, the directory being written, and evaluations done once."""

    cfg: RunConfig
    ws: Workspace
    root: Path  # where this run writes (a temporary directory, renamed to OUT/study at the end)
    scheme: Scheme  # OUT's quantization scheme (a static int8 PT2E one), from the settings it was made with
    keep: KeepFloat
    sections: list[str]
    started: float = field(default_factory=time.perf_counter)
    _ptq: dict = field(default_factory=dict)
    _source: ExportSource | None = None
    _fp32_answers: np.ndarray | None = None
    _fp32: torch.nn.Module | None = None
    _layers: list[str] | None = None
    baseline_rows: list[dict] | None = None  # OUT's own model in every runtime (artifacts.baseline)
    sensitivity: dict | None = None  # section 2's result, for section 3

    @classmethod
    def open(cls, cfg: RunConfig, root: Path | None = None) -> "Study":
        sections = parse_sections(cfg.study_sections)
        keep = parse_keep_float(STUDY_KEEP_FLOAT if cfg.keep_float is None else cfg.keep_float)
        parse_bits(cfg.sweep_bits)
        if not isinstance(cfg.nbits, int):
            raise StudyError(f"--nbits {cfg.nbits}: the study compares fixed palette widths (--nbits N, --sweep-bits); "
                             "per-layer widths (auto:PP) are the export's")
        ws = Workspace(cfg)
        cfg = resolve_config(cfg, ws.manifest)
        ws = Workspace(cfg)
        scheme = Scheme.from_config(cfg)
        check_scheme(scheme)
        check_out(ws, scheme)
        study = cls(cfg, ws, Path(root or ws.out / "study"), scheme, keep, sections)
        unknown = [n for n in keep.names if n not in study.layers]
        if unknown:
            raise StudyError(f"--keep-float: {unknown} are not conv/linear layers of {cfg.model}; "
                             f"its layers are {', '.join(study.layers)}")
        return study

    # ---- the model and data --------------------------------------------------------------
    @property
    def data(self):
        return self.ws.data

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.ws.shape

    @property
    def labels(self) -> np.ndarray:
        return self.data.test_labels.numpy()

    def fp32_model(self) -> torch.nn.Module:
        """A fresh copy of OUT's fp32 model (callers may prune or retrain it)."""
        if self._fp32 is None:
            self._fp32 = self.ws.fp32_model()
        return copy.deepcopy(self._fp32).eval()

    @property
    def layers(self) -> list[str]:
        if self._layers is None:
            self._layers = quant.quantizable_layers(self.fp32_model())
        return self._layers

    def source(self) -> ExportSource:
        """What the pipeline's converters start from: OUT's fp32 checkpoint and its scheme's quantized programs."""
        if self._source is None:
            self._source = self.ws.export_source(self.scheme)
        return self._source

    @property
    def chosen(self) -> str:
        """How OUT's quantized model was made: "qat" or "ptq" (the `qat` stage keeps the better under auto)."""
        return self.ws.manifest["accuracy"][self.scheme.tag]["chosen"]

    def accuracy(self, fn) -> float:
        return float(self.answers(fn).mean())

    def answers(self, fn) -> np.ndarray:
        """Per test image: is fn's top-1 answer right? (What the paired verdicts compare.)"""
        return predict(fn, self.data).argmax(1) == self.labels

    @property
    def fp32_answers(self) -> np.ndarray:
        if self._fp32_answers is None:
            self._fp32_answers = self.answers(self.fp32_model())
        return self._fp32_answers

    @property
    def fp32_accuracy(self) -> float:
        return float(self.fp32_answers.mean())

    def ptq_accuracy(self, keep_float: tuple[str, ...] | set[str] = ()) -> float:
        """Test accuracy of PTQ of the scheme with the given layers left float (cached by the set of layers)."""
        return float(self.ptq_answers(keep_float).mean())

    def ptq_answers(self, keep_float: tuple[str, ...] | set[str] = ()) -> np.ndarray:
        """Per test image, is PTQ of the scheme with the given layers left float right? (cached by the set)"""
        key = frozenset(keep_float)
        if key not in self._ptq:
            ordered = tuple(n for n in self.layers if n in key)
            program = quant.ptq_program(self.fp32_model(), self.data, self.shape, self.cfg, self.scheme, ordered)
            self._ptq[key] = self.answers(program)
        return self._ptq[key]

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def rel(self, path: Path) -> str:
        """A path inside OUT/study, as it will read once the run's directory is in place."""
        return str(Path(path).relative_to(self.root))


def check_scheme(scheme: Scheme) -> None:
    """The study leaves layers float and reads quantize/dequantize pairs: it needs a static int8 PT2E scheme."""
    if scheme.activations != "static" or not scheme.pt2e:
        raise StudyError(f"the study measures static int8 schemes (a PT2E graph with quantize/dequantize pairs); "
                         f"OUT's scheme is {scheme.tag} ({scheme.summary()}). Run `qat` with --activations static "
                         "(and 8-bit symmetric per-channel or per-tensor weights) into another --out, and study that")


def check_out(ws: Workspace, scheme: Scheme) -> None:
    """OUT must hold a finished `train` and a quantized model of `scheme`, with their files as written."""
    stages = ws.manifest.get("stages", {})
    if stages.get("train", {}).get("status") != "done":
        raise StudyError(f"{ws.out} holds no trained model; run `mobile-pipeline train` and `qat` first "
                         "(`make study` runs them)")
    if ws.quant_stage(scheme.tag).get("status") != "done":
        raise StudyError(f"{ws.out} holds no quantized model for {scheme.tag} ({scheme.summary()}); run "
                         "`mobile-pipeline qat` first (`make study` runs it)")
    if not atomic.intact(ws.out / CHECKPOINT, stages["train"].get("sha256")):
        raise StudyError(f"{ws.out / CHECKPOINT} is missing or changed since `train` wrote it; rerun `train`")
    damaged = ws.quantized_damaged(scheme.tag)
    if damaged:
        raise StudyError(f"{', '.join(damaged)} in {ws.quantized_folder(scheme.tag)} are missing or changed since "
                         "`qat` wrote them; rerun `qat`")
