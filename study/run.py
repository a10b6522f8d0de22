"""`mobile-pipeline study`: run the chosen sections and write OUT/study/ (report.md, results.json, plots).

The whole folder is built under a temporary name and renamed into place at the end, so an
interrupted study leaves the previous OUT/study/ as it was. A section that fails is recorded
with its reason (the others still run) and makes the exit status 1, as does a file that fails
verification; bad settings or a missing `train`/`qat` stop it before anything runs (exit 2).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from core import io as atomic
from core import manifest as mf
from core.config import RunConfig
from core.console import say

from . import (StudyError, layer_error, mixed, plots, report, results, sensitivity, sweep, tradeoffs,
               weights_activations)
from .context import SECTIONS, TITLES, Study

RUNNERS = {"error": layer_error.run, "sensitivity": sensitivity.run, "mixed": mixed.run, "sweep": sweep.run,
           "pruning": tradeoffs.run, "wa": weights_activations.run}
STUDY_DIR = "study"
STUDY_SETTINGS = ("study_sections", "study_batches", "sweep_bits", "keep_float", "sparsity", "channel_ratio", "prune_epochs",
                  "prune_steps", "prune_lr", "backends", "nbits", "granularity", "group_size", "weight_threshold",
                  "min_agreement", "max_acc_drop", "max_quant_drop", "rounding_agreement", "near_tie_steps", "confidence", "bench_warmup", "bench_iterations",
                  "calib_batches", "qat_epochs", "qat_max_steps", "seed")


def study(cfg: RunConfig) -> bool:
    """Run the study over OUT; True when every section ran and every exported file passed verification."""
    ctx = Study.open(cfg)  # bad settings and a missing train/qat fail here, before anything is written
    final = ctx.ws.out / STUDY_DIR
    outcome: dict = {}

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        ctx.root = tmp
        outcome["results"] = run_sections(ctx)
        outcome["plots"] = draw(ctx, outcome["results"])
        results.write(tmp, outcome["results"])
        atomic.write_text(tmp / "report.md", report.write(outcome["results"], outcome["plots"]))

    atomic.atomic_write(final, build)
    res = outcome["results"]
    say(f"study: wrote {final}/report.md, results.json and {len(outcome['plots'])} plots "
          f"in {time.perf_counter() - ctx.started:.0f} s")
    for name, sec in res["sections"].items():
        if sec["status"] == "failed":
            say(f"[x] study: {TITLES[name]} FAILED: {sec['error']}")
    return res["passed"]


def run_sections(ctx: Study) -> dict:
    sections = {}
    for name in SECTIONS:
        if name not in ctx.sections:
            sections[name] = {"status": "skipped", "seconds": None, "error": None, "result": None}
            continue
        say(f"study: {TITLES[name]}")
        start = time.perf_counter()
        try:
            result = RUNNERS[name](ctx)
            sections[name] = {"status": "done", "seconds": time.perf_counter() - start, "error": None, "result": result}
        except (atomic.OutputDirError, StudyError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one section failing must not lose the others
            where = traceback.extract_tb(exc.__traceback__)[-1]
            reason = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
            say(f"[x] study: {TITLES[name]} failed: {reason}")
            sections[name] = {"status": "failed", "seconds": time.perf_counter() - start, "error": reason, "result": None}
    passed = all(s["status"] != "failed" and (s["result"] or {}).get("passed", True) for s in sections.values())
    return {"schema_version": 1, "created": mf.now(), "run_id": ctx.ws.manifest.get("run_id"),
            "model": {"name": ctx.cfg.model, "input_shape": list(ctx.shape), "layers": ctx.layers,
                      "parameters": sum(p.numel() for p in ctx.fp32_model().parameters())},
            "dataset": {"name": ctx.data.name, "n_train": len(ctx.data.train_labels), "n_test": len(ctx.labels),
                        "source": ctx.data.source},
            "settings": {k: getattr(ctx.cfg, k) for k in STUDY_SETTINGS},
            "scheme": ctx.scheme.describe(),
            "accuracy": {"fp32": ctx.fp32_accuracy, "ptq": ctx.ptq_accuracy(()),
                         "quantized": ctx.accuracy(ctx.source().program), "chosen": ctx.chosen},
            "host": host(), "sections": sections, "passed": passed, "versions": mf.tool_versions()}


def host() -> dict:
    from benchmarks.host import host_info, load_average

    return {**host_info(), "load_average": load_average()}


def draw(ctx: Study, res: dict) -> dict[str, str]:
    """One PNG per section that ran; a plot that fails is reported, never fatal."""
    makers = {
        "error": lambda r, p: plots.layer_error(r, p),
        "sensitivity": lambda r, p: plots.sensitivity(r, p),
        "mixed": lambda r, p: plots.mixed(r, res["accuracy"]["fp32"], p),
        "sweep": lambda r, p: plots.sweep(r, p) if r["rows"] else None,
        "pruning": lambda r, p: plots.pruning(r, p),
        "wa": lambda r, p: plots.weights_activations(r, p),
    }
    names = {"error": "layer_error.png", "sensitivity": "sensitivity.png", "mixed": "mixed_precision.png",
             "sweep": "sweep.png", "pruning": "pruning.png", "wa": "weights_activations.png"}
    drawn = {}
    for name, sec in res["sections"].items():
        if sec["status"] != "done":
            continue
        try:
            made = makers[name](results.clean(sec["result"]), ctx.root / names[name])
            if made:
                drawn[name] = made
        except Exception as exc:
            say(f"[x] study: plot {names[name]} failed: {type(exc).__name__}: {exc}")
    return drawn

