"""Section 3: automatic mixed precision, applied the same way in every runtime.

`--keep-float auto:PP` walks the sensitivity ranking and leaves layers float, most sensitive
first, until the test set no longer shows PTQ more than PP percentage points below fp32 (a paired
interval on the same images, core/statistics.py; the fewest layers that reach it along the ranking). `--keep-float NAME,...` names them. The choice is quantized the way OUT's model was
(QAT with the `qat` stage's schedule, or PTQ, whichever the stage kept; core.quantize with
`keep_float`), then goes through every converter's `export_scheme` with the explicit
`float_layers` option:

- ExecuTorch: XNNPACKQuantizer leaves the layers unannotated, so they lower as fp32 XNNPACK ops;
- TFLite: the same unfolded PT2E graph; the converter reports which conv/linear ops stayed float;
- Core ML: the W8A8 package of the same graph (its float layers stay fp16), and per-op configs
  (`op_name_configs={weight: None}`) keep the layers' weights dense fp16 in the palettized one.

Each file is verified like any export and timed against the full-int8 file of the same runtime.
"""

from __future__ import annotations

from converters import REGISTRY
from core import statistics, train
from core.console import say

from . import artifacts, quant, sensitivity
from .context import Study


def choose(study: Study) -> dict:
    """The layers to keep float, and the PTQ accuracy after each one is added (the trace).

    Under auto:PP a layer is added while the data show PTQ more than PP below fp32: the paired verdict on the
    same test images (core/statistics.py) fails. A drop above PP by no more than the images can resolve does
    not buy another float layer; the trace records each verdict."""
    fp32, keep = study.fp32_answers, study.keep
    confidence = getattr(study.cfg, "confidence", statistics.CONFIDENCE)

    def point(kept: list[str]) -> dict:
        answers = study.ptq_answers(set(kept))
        row = {"kept": list(kept), "ptq_accuracy": float(answers.mean()),
               "drop_pp": 100 * (float(fp32.mean()) - float(answers.mean()))}
        if keep.auto_pp is not None:
            verdict = statistics.drop_verdict(fp32, answers, keep.auto_pp / 100, confidence, "PTQ drop vs fp32")
            row["verdict"] = verdict.to_dict()
        return row

    def beyond_budget(row: dict) -> bool:
        return row["verdict"]["outcome"] == "fail"

    if keep.auto_pp is None:
        return {"mode": "explicit" if keep.names else "none", "budget_pp": None, "chosen": list(keep.names),
                "trace": [point([]), point(list(keep.names))] if keep.names else [point([])], "reached": None}
    ranking, _ = sensitivity.ranking_for_auto(study)
    kept: list[str] = []
    trace = [point(kept)]
    for layer in ranking:
        if not beyond_budget(trace[-1]):
            break
        kept.append(layer)
        trace.append(point(kept))
    return {"mode": "auto", "budget_pp": keep.auto_pp, "chosen": kept, "trace": trace, "ranking": ranking,
            "reached": not beyond_budget(trace[-1])}


def run(study: Study) -> dict:
    choice = choose(study)
    result = {"choice": choice, "files": [], "failures": {}, "latency": {}, "tflite_float_layers": {}}
    chosen = tuple(n for n in study.layers if n in choice["chosen"])
    if not chosen:
        result["note"] = ("no layer needs to stay float: full int8 PTQ is within the budget"
                          if choice["mode"] == "auto" else "--keep-float none: nothing to export")
        return result
    mode = study.chosen
    say(f"study: mixed precision keeps {list(chosen)} float; {mode.upper()} with them float, then export")
    train.seed_everything(study.cfg.seed)
    made = quant.quantized(study.fp32_model(), study.data, study.shape, study.cfg, study.scheme, mode, chosen)
    source = quant.variant(study.source(), made, study.root / "mixed" / "quantized")
    result["mode"] = mode
    result["quantized_accuracy"] = study.accuracy(source.program)
    result["qat_steps"] = made.stats.get("steps", 0)
    rows, result["failures"] = artifacts.export_variant(study, "mixed", source, float_layers=chosen, parts=("scheme",))
    ok = artifacts.verify_rows(study, rows, source, {"fp32": study.fp32_answers})
    base = artifacts.baseline(study)
    for row in rows:
        full = next((b for b in base if b["backend"] == row["backend"] and b["quant"] == row["quant"].removesuffix("_mixed")), None)
        fp32 = next((b for b in base if b["backend"] == row["backend"] and b["quant"] in ("fp32", "fp16")), None)
        row["full_int8_file"] = full["file"] if full else None
        row["full_int8_accuracy"] = full.get("accuracy") if full else None
        result.update(REGISTRY[row["backend"]].mixed_findings(row, full, chosen))  # what each runtime's file shows
        if full and artifacts.timeable(row) and artifacts.timeable(full):
            timed = {"mixed": row, "full": full, **({"fp32": fp32} if fp32 and artifacts.timeable(fp32) else {})}
            ms = artifacts.latencies(study, timed, source)
            result["latency"][row["backend"]] = {
                "ratio_to_full_int8": ms["mixed"]["p50_ms"] / ms["full"]["p50_ms"],
                "ratio_fp32_to_full_int8": ms["fp32"]["p50_ms"] / ms["full"]["p50_ms"] if "fp32" in ms else None,
                "p50_ms": {k: v["p50_ms"] for k, v in ms.items()}}
    result["files"] = [{**artifacts.public(r), "full_int8_file": r["full_int8_file"],
                        "full_int8_accuracy": r["full_int8_accuracy"]} for r in rows]
    result["passed"] = ok and not result["failures"]
    return result

