"""`mobile-pipeline parity`, and the parity check inside `verify`, over one output folder.

Runs the first `--parity-images` test images layer by layer through one scheme's converted
PT2E graph (OUT/quantized/<tag>/program.pt2), its .pte and its .tflite (converters/parity.py),
compares the Core ML files' weights with the weights each was made from, writes the result into
the manifest, the plots into OUT/parity/ and the section into OUT/report.md, and holds the .pte
and the .tflite to each other. Schemes without static int8 activations in both files (dynamic,
weight-only, 4-bit) are refused: their layers have no fixed int8 grid to compare on.
"""

from __future__ import annotations

from pathlib import Path

from core import io as atomic
from core import quantize
from core.console import say
from core.schemes import Scheme
from converters import REGISTRY
from converters.support import support

from . import parity_report
from .state import OutState, StageError

RUNTIMES = ("executorch", "tflite")


def comparable(scheme: Scheme) -> str | None:
    """Why the layers of `scheme`'s .pte and .tflite cannot be compared here; None when they can.

    The comparison reads every layer's int8 activation with its fixed scale and zero point, in
    the PyTorch graph, the .pte and the .tflite: only schemes with static int8 activations and
    8-bit weights that both runtimes export have them.
    """
    if scheme.activations != "static":
        return (f"scheme {scheme.tag} ({scheme.summary()}) has no int8 activations with fixed scales to compare "
                "layer by layer" + (": they are quantized at run time" if scheme.activations == "dynamic" else
                                    ": its activations are float"))
    refused = {r: support(scheme, r) for r in RUNTIMES if not support(scheme, r).ok}
    if refused:
        return (f"scheme {scheme.tag} ({scheme.summary()}) has no " + " and no ".join(refused) + " file to compare ("
                + "; ".join(f"{r}: {s.reason}" for r, s in refused.items()) + ")")
    return None


def _file(artifacts: dict, backend: str, tag: str) -> str | None:
    fmt = REGISTRY[backend].format
    return next((f for f, a in sorted(artifacts.items())
                 if a["backend"] == backend and a["format"] == fmt and a["quant"] in (tag, f"{tag}_mixed")), None)


def _coreml_files(artifacts: dict, tag: str) -> dict[str, str]:
    """The fp16 baseline and the files palettizing this scheme's weights, with what each was made from.

    The W8A8 file (reference "quantized") is left out: `verify` already holds its int8 weights and
    activation scales equal to the PT2E graph's (converters/coreml.py w8a8_checks).
    """
    files = {}
    for f, a in sorted(artifacts.items()):
        scheme = a.get("scheme") or {}
        if a["format"] != "mlpackage" or a["reference"] == "quantized" or (scheme and scheme.get("weights_of") != tag):
            continue
        files[f] = "fp32" if a["reference"] == "fp32" else "float"
    return files


def run(pipeline: OutState, source=None) -> bool:
    """`mobile-pipeline parity`: compare, record the result in the manifest and report.md; True when the
    .pte/.tflite check passes."""
    result = compare(pipeline, source)
    pipeline.manifest["parity"] = result
    pipeline.save()  # the manifest, and report.md with the parity section
    return result["check"]["passed"]


def compare(pipeline: OutState, source=None) -> dict:
    """Compare every available runtime layer by layer (plots into OUT/parity/); the result, for the manifest."""
    from converters import parity

    cfg, out, artifacts = pipeline.cfg, pipeline.out, pipeline.manifest.get("artifacts", {})
    scheme = source.scheme if source is not None else pipeline.scheme()
    why = comparable(scheme)
    if why:
        raise StageError(f"parity: {why}. Parity compares the int8 .pte and .tflite of a scheme with static int8 "
                         "activations (the default, or --weight-granularity per_tensor); run it without the "
                         "scheme flags")
    tag = scheme.tag
    pte, tflite = (_file(artifacts, b, tag) for b in RUNTIMES)
    pte, tflite = (f if f and (out / f).exists() else None for f in (pte, tflite))
    packages = {f: ref for f, ref in _coreml_files(artifacts, tag).items() if (out / f).exists()}
    if not (pte or tflite or packages):
        raise StageError(f"{out} holds no {tag} .pte, {tag} .tflite or .mlpackage; run `export` first")
    source = source or pipeline.export_source(scheme)
    data = pipeline.data
    n = cfg.parity_images or len(data.test_labels)
    images = data.normalize(data.test_images[:n])
    say(f"parity: {tag}: {len(images)} test images, layer by layer: PyTorch" + "".join(f", {f}" for f in (pte, tflite) if f))
    program = pipeline.quantized_folder(tag) / quantize.PROGRAM
    result = parity.run(source.program, images, source.input_shape,
                        pte=out / pte if pte else None, tflite=out / tflite if tflite else None,
                        tflite_layout=artifacts[tflite]["input"]["layout"] if tflite else "NCHW",
                        work_dir=out / parity_report.PLOT_DIR, key=atomic.sha256(program))
    result["scheme"] = scheme.describe()
    result["files"] = {f: artifacts[f]["sha256"] for f in (pte, tflite) if f}
    result["coreml"], result["coreml_reference"] = {}, {}
    weights = {"fp32": (source.fp32_model, "fp32 weights"),
               "float": (source.float_model, source.metadata.get("weights_from", "trained weights"))}
    for package, ref in packages.items():
        model, label = weights[ref]
        result["coreml_reference"][package] = label
        try:
            result["coreml"][package] = parity.coreml_weights(out / package, model, source.input_shape)
        except Exception as exc:  # a Core ML read-back problem must not hide the int8 comparison
            result["coreml"][package] = f"{type(exc).__name__}: {exc}"
    passed, failures, status = parity.check(result, cfg.max_parity_steps, cfg.max_parity_steps_float)
    result["check"] = {"passed": passed, "failures": failures, "max_steps": cfg.max_parity_steps,
                       "max_steps_float": cfg.max_parity_steps_float, "layers": status}
    result["local_check"] = parity.check_local(result, cfg.max_local_steps)
    result["plots"] = parity_report.write_plots(out, result)
    _summarize(result)
    return result


def verify_layers(pipeline: OutState, sources: dict, verified: dict) -> dict | None:
    """The check in `verify`, for the configured scheme: its result (result["check"]["passed"]; {"error": ...} when
    it could not run, which has not passed), or None when this run did not verify both its .pte and its .tflite,
    or when the scheme's files cannot be compared layer by layer (dynamic or weight-only)."""
    scheme = pipeline.scheme()
    artifacts = {f: pipeline.manifest["artifacts"][f] for f in verified}
    if not pipeline.cfg.parity_check or comparable(scheme):
        return None
    if not all(_file(artifacts, b, scheme.tag) for b in RUNTIMES):
        return None
    try:
        return compare(pipeline, sources.get(scheme.tag))
    except Exception as exc:  # a check that cannot run has not passed
        reason = f"{type(exc).__name__}: {exc}"
        say(f"[x] parity: could not compare the .pte and the .tflite layer by layer: {reason} "
            "(--no-parity-check skips the check)")
        return {"error": reason}


def _summarize(result: dict) -> None:
    from converters.parity import RUNTIME_NAMES, pct

    for block in result["pairs"].values():
        say(f"  {block['verdict']}")
    check = result["check"]
    if check["layers"]:
        # The console names only the layers that are not within their allowance; the log (and
        # report.md) keep the whole per-layer table, which runs to a hundred lines on real networks.
        width = max(len(r["layer"]) for r in check["layers"])
        failed = [r for r in check["layers"] if r["state"] == "FAILED"]
        inherited = sum(r["state"].startswith("after") for r in check["layers"])
        (say if failed else print)(f"  .pte vs .tflite, per layer ({result['images']} images; "
                                   f"{len(check['layers']) - len(failed) - inherited} of {len(check['layers'])} "
                                   "within their allowance):")
        for r in check["layers"]:
            mark = "x" if r["state"] == "FAILED" else ("·" if r["state"].startswith("after") else "✓")
            (say if r["state"] == "FAILED" else print)(
                f"    [{mark}] {r['layer']:<{width}}  {pct(r['equal_share']):>9} equal, max {r['max_steps']:g} "
                f"steps (allowed {r['allowed']:g}) {'' if r['state'] == 'ok' else r['state']}")
        if inherited:
            say(f"    {inherited} later layers inherit the difference (not held to the limit; the table is in report.md)")
    for failure in check["failures"]:
        say(f"    FAILED: parity: {failure}")
    for rt, local in result.get("local_check", {}).items():
        worst = local["worst"]
        mark = "✓" if local["passed"] else "x"
        say(f"[{mark}] parity: {RUNTIME_NAMES[rt]} vs PyTorch on the runtime's own inputs (teacher-forced): "
            + (f"every one of {local['layers']} layers within {local['max_steps']:g} output step(s); worst "
               f"`{worst['layer']}`, {worst['max_steps']:g} step(s), {pct(worst['equal_share'])} equal"
               if local["passed"] else "; ".join(local["failures"])))
    mark = "✓" if check["passed"] else "x"
    say(f"[{mark}] parity: .pte vs .tflite {'within' if check['passed'] else 'beyond'} {check['max_steps']} output "
          f"step(s) per layer; report: {Path('report.md')} and {parity_report.PLOT_DIR}/*.png")
