"""The `verify` stage: every artifact run over the whole test set in its own runtime, compared with its PyTorch
reference, and its accuracy with fp32 and with PTQ of its scheme (the cost of quantization)."""

from __future__ import annotations

import numpy as np

from core import io as atomic
from core import manifest as mf
from core import qat, train
from core.console import say, say_brief
from core.evaluate import predict

from converters import REGISTRY

from . import parity
from .state import OutState


def _verified_basis(pipeline: OutState, artifact: dict, thresholds) -> dict:
    """What a verification result depends on: the file, its reference's files, the test set and the thresholds."""
    tag = mf.scheme_tag(artifact)
    stage = pipeline.quant_stage(tag) if tag else pipeline.stage_entry("train")
    return {"sha256": artifact.get("sha256"), "reference_sha256": stage.get("sha256"),
            "reference_chosen": stage.get("chosen"), "images": len(pipeline.data.test_labels),
            "thresholds": thresholds.basis()}


def run(pipeline: OutState, backends: list[str] | None = None, sources: dict | None = None, reuse: bool = False) -> bool:
    """Run each artifact over the whole test set; compare it with its PyTorch reference, and its accuracy with
    fp32 and with PTQ of its scheme (the cost of quantization).

    reuse (what `export` asks for): an artifact that already passed on the same bytes, the same reference
    files, the same test set and the same thresholds keeps that result instead of running again; `verify`
    itself always runs everything."""
    from converters.export import reference_logits, verify_file
    from converters.verify import Thresholds, cross_agreement, verify

    data, labels = pipeline.data, pipeline.data.test_labels.numpy()
    thresholds = Thresholds.from_config(pipeline.cfg)
    sources = dict(sources or {})
    ref_logits: dict[tuple, np.ndarray] = {}
    logits_by_file, recheck = {}, {}
    selected = {f: a for f, a in pipeline.manifest["artifacts"].items() if backends is None or a["backend"] in backends}
    if not selected:
        say("verify: no artifacts to verify; run `export` first")
        return False
    for file, artifact in selected.items():
        path, tag = pipeline.out / file, mf.scheme_tag(artifact)
        failure, basis, earlier = None, _verified_basis(pipeline, artifact, thresholds), artifact.get("verification", {})
        if reuse and earlier.get("passed") and earlier.get("basis") == basis and atomic.intact(path, basis["sha256"]):
            say(f"[✓] verify: {file}: passed earlier on these bytes, reference, test set and thresholds "
                f"(accuracy {earlier['accuracy']:.4f}); not run again (`verify` re-runs every file)")
            continue
        if not atomic.intact(path, artifact.get("sha256")):
            state = "missing" if not path.exists() else "changed since export (its sha256 differs)"
            failure = f"{path} is {state}; re-run `export`, which rebuilds it"
        else:
            try:
                source = sources.get(tag) or sources.setdefault(tag, pipeline.source_for(tag))
            except (qat.QuantError, train.CheckpointError) as exc:
                failure = f"its reference cannot be loaded: {exc}"
        if failure:
            artifact["verification"] = {"passed": False, "failures": [failure]}
            say(f"[x] verify: {file}: {failure}")
            continue
        reference = reference_logits(source, artifact, data, ref_logits)
        baselines = _baselines(pipeline, tag, source, ref_logits, labels)
        result, logits = verify_file(path, artifact, source, data, reference, thresholds, baselines)
        if logits is None:
            artifact["verification"] = result
            say_brief(f"[x] verify: {file}: could not run it: {result['failures'][0].removeprefix('could not run: ')}"
                      "\n    the file passed its sha256 check, so its runtime refused it: see the log; "
                      "`export --force` rebuilds it")
            continue
        result["basis"] = basis
        artifact["verification"] = result
        logits_by_file[file] = logits
        recheck[file] = lambda rounding, a=artifact, lg=logits, ref=reference, b=baselines: verify(
            a, lg, ref, labels, thresholds, b, rounding)
        say_verdict(file, result, f"max |dlogit| {result['max_abs_logit_diff']:.4g} ({result['method']})")
    smallest = thresholds.smallest_test_set()
    if len(labels) < smallest:
        say(f"verify: WARNING: {len(labels)} test images cannot show {100 * thresholds.min_agreement:g}% agreement "
            f"even when every answer agrees (that takes {smallest:,} at {100 * thresholds.confidence:g}% "
            "confidence): only gross errors can fail here; verify on more test images (--limit-test)")
    previous = pipeline.manifest.get("verification", {})
    pipeline.manifest["verification"] = {
        "thresholds": {"min_agreement": thresholds.min_agreement, "max_acc_drop_pp": thresholds.max_acc_drop_pp,
                       "max_quant_drop_pp": thresholds.max_quant_drop_pp,
                       "rounding_agreement": thresholds.rounding_agreement, "confidence": thresholds.confidence},
        "images": len(labels), "smallest_test_set": smallest,
        "cross_backend": {**previous.get("cross_backend", {}),
                          **cross_agreement(logits_by_file, pipeline.manifest["artifacts"])},
    }
    layers = parity.verify_layers(pipeline, sources, logits_by_file)  # None: no .pte/.tflite pair to compare
    parity_ok = None if layers is None else bool((layers.get("check") or {}).get("passed"))
    if layers is None:  # not run again: the layer check OUT holds, which accept_rounding takes only for these bytes
        layers = pipeline.manifest.get("parity") or {}
    else:
        pipeline.manifest["parity"] = layers
    accept_rounding(pipeline, recheck, thresholds, layers)
    ok = all(pipeline.manifest["artifacts"][f].get("verification", {}).get("passed") for f in selected)
    pipeline.manifest["verification"]["passed"] = all(a.get("verification", {}).get("passed")
                                                      for a in pipeline.manifest["artifacts"].values())
    if parity_ok is None and reuse and pipeline.cfg.parity_check:  # the pair was not re-run: its earlier check stands
        parity_ok = previous.get("parity_passed")
    if parity_ok is not None:
        pipeline.manifest["verification"]["parity_passed"] = parity_ok
        pipeline.manifest["verification"]["passed"] &= parity_ok
        ok &= parity_ok
    pipeline.save()
    return ok


def _baselines(pipeline: OutState, tag: str | None, source, ref_logits: dict, labels: np.ndarray) -> dict:
    """Per-image answers a quantized file's accuracy is compared with: fp32, and PTQ of its scheme."""
    if tag is None:
        return {}
    fp32 = pipeline.recorded_answers("fp32")
    if fp32 is None:  # an OUT trained before answers were recorded: ask the fp32 model again
        if ("fp32", None) not in ref_logits:
            ref_logits[("fp32", None)] = predict(source.fp32_model, pipeline.data)
        fp32 = ref_logits[("fp32", None)].argmax(1) == labels
    ptq = pipeline.recorded_answers(f"{tag}:ptq")
    if ptq is None and pipeline.quant_stage(tag).get("chosen") == "ptq" and ("quantized", tag) in ref_logits:
        ptq = ref_logits[("quantized", tag)].argmax(1) == labels  # PTQ is the quantized reference itself
    return {"fp32": fp32, "ptq": ptq}


def accept_rounding(pipeline: OutState, recheck: dict, thresholds, parity_result: dict) -> None:
    """Hold again, at the rounding floor, each int8 .pte/.tflite that failed top-1 agreement and whose every
    layer the teacher-forced parity of this run found within --max-local-steps of PyTorch."""
    from converters.verify import rounding_floor

    verdicts = parity_result.get("local_check") or {}
    scheme_tag = (parity_result.get("scheme") or {}).get("tag")
    for file, again in recheck.items():
        artifact = pipeline.manifest["artifacts"][file]
        result = artifact["verification"]
        runtime = REGISTRY[artifact["backend"]].format  # parity names runtimes by their files' suffix: pte, tflite
        if (result["passed"] or runtime not in verdicts or mf.scheme_tag(artifact) != scheme_tag
                or (parity_result.get("files") or {}).get(file) != artifact.get("sha256")):  # not these bytes
            continue
        floor = rounding_floor(verdicts[runtime], parity_result["images"], thresholds, output_step(parity_result))
        if floor is None:
            continue
        redone = again(floor)
        redone.update({k: result[k] for k in ("method", "images", "seconds", "basis")})
        artifact["verification"] = redone
        say_verdict(file, redone, f"held to the rounding floor {100 * floor['min_agreement']:.2f}%: {floor['why']}")


def output_step(parity_result: dict) -> float | None:
    """The int8 reference's output step: the scale of the layer parity marked as the network's output (one
    output; None when there is not exactly one)."""
    outputs = [layer for layer in parity_result.get("layers") or [] if layer.get("is_output")]
    return float(outputs[0]["scale"]) if len(outputs) == 1 and outputs[0].get("scale") else None


def say_verdict(file: str, result: dict, detail: str) -> None:
    """One console line per verified file: accuracy, agreement with its interval and n, and what the data show
    (every check within its threshold, or which are within noise and about how many images would decide them);
    a line per failure after it. The manifest and report.md hold each verdict in full."""
    verdicts = result.get("verdicts", [])
    agreement = next((v for v in verdicts if v["method"] == "Clopper-Pearson"), None)
    interval = f" [{100 * agreement['low']:.2f}, {100 * agreement['high']:.2f}]%, n={agreement['n']}" if agreement else ""
    near = result.get("near_ties")
    if agreement and near:
        interval = (f"; {100 * agreement['observed']:.2f}%{interval} where the reference leads by more than "
                    f"{near['steps']:g} output steps ({near['images']} near ties left out, {near['changed']} of them "
                    "changed)")
    undecided = [v for v in verdicts if v["outcome"] == "inconclusive"]
    if not result["passed"]:
        outcome = "FAILED"
    elif undecided:
        needed = [v["needed"] for v in undecided if v.get("needed")]
        names = [v["name"] if v["name"].startswith("quantization") else v["name"].split(" with ")[0].split(" vs ")[0]
                 for v in undecided]
        outcome = (f"within noise on {', '.join(names)}"
                   + (f" (~{max(needed):,} images would decide)" if needed else ""))
    else:
        outcome = "every check shown within its threshold" if verdicts else ""
    say(f"[{'✓' if result['passed'] else 'x'}] verify: {file}: accuracy {result['accuracy']:.4f}, agreement "
        f"{100 * result['agreement']:.2f}%{interval}: {outcome}; {detail}")
    failures = result["failures"]
    if failures:  # at most two more console lines; every failure is in the manifest and report.md
        more = f" (and {len(failures) - 1} more failed check(s): report.md, Verdicts)" if len(failures) > 1 else ""
        say_brief(f"    FAILED: {file}: {failures[0]}{more}", lines=2)
