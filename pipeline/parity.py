"""`mobile-pipeline parity`, and the parity check inside `verify`, over one output folder.

Runs the first `--parity-images` test images layer by layer through the converted QAT graph,
the int8 .pte and the int8 .tflite (converters/parity.py), compares the Core ML files' weights
with the QAT float weights, writes the result into the manifest, the plots into OUT/parity/
and the section into OUT/report.md, and holds the .pte and the .tflite to each other.
"""

from __future__ import annotations

from pathlib import Path

from core import io as atomic
from core import qat

from . import parity_report, report


def _int8(artifacts: dict, backend: str) -> str | None:
    return next((f for f, a in sorted(artifacts.items()) if a["backend"] == backend and a["quant"] == "int8"), None)


def run(pipeline, source=None) -> bool:
    """Compare every available runtime layer by layer; True when the .pte/.tflite check passes."""
    from converters import parity

    from .stages import StageError

    cfg, out, artifacts = pipeline.cfg, pipeline.out, pipeline.manifest.get("artifacts", {})
    pte, tflite = _int8(artifacts, "executorch"), _int8(artifacts, "tflite")
    pte, tflite = (f if f and (out / f).exists() else None for f in (pte, tflite))
    packages = [f for f, a in sorted(artifacts.items()) if a["format"] == "mlpackage" and (out / f).exists()]
    if not (pte or tflite or packages):
        raise StageError(f"{out} holds no int8 .pte, int8 .tflite or .mlpackage; run `export` first")
    source = source or pipeline.export_source()
    data = pipeline.data
    n = cfg.parity_images or len(data.test_labels)
    images = data.normalize(data.test_images[:n])
    print(f"parity: {len(images)} test images, layer by layer: PyTorch" + "".join(f", {f}" for f in (pte, tflite) if f))
    result = parity.run(source.qat_folded, images, source.input_shape,
                        pte=out / pte if pte else None, tflite=out / tflite if tflite else None,
                        tflite_layout=artifacts[tflite]["input"]["layout"] if tflite else "NCHW",
                        work_dir=out / parity_report.PLOT_DIR, key=atomic.sha256(out / qat.QAT_FOLDED))
    result["files"] = {f: artifacts[f]["sha256"] for f in (pte, tflite) if f}
    result["coreml"] = {}
    for package in packages:
        try:
            result["coreml"][package] = parity.coreml_weights(out / package, source.qat_float_model)
        except Exception as exc:  # a Core ML read-back problem must not hide the int8 comparison
            result["coreml"][package] = f"{type(exc).__name__}: {exc}"
    passed, failures, status = parity.check(result, cfg.max_parity_steps, cfg.max_parity_steps_float)
    result["check"] = {"passed": passed, "failures": failures, "max_steps": cfg.max_parity_steps,
                       "max_steps_float": cfg.max_parity_steps_float, "layers": status}
    result["plots"] = parity_report.write_plots(out, result)
    _print(result)
    pipeline.manifest["parity"] = result
    pipeline._save()
    report.write_export_report(out, pipeline.manifest)
    return passed


def verify_layers(pipeline, source, verified: dict) -> bool | None:
    """The check in `verify`: None when this run did not verify both an int8 .pte and an int8 .tflite."""
    artifacts = {f: pipeline.manifest["artifacts"][f] for f in verified}
    if not pipeline.cfg.parity_check or not (_int8(artifacts, "executorch") and _int8(artifacts, "tflite")):
        return None
    try:
        return run(pipeline, source)
    except Exception as exc:  # a check that cannot run has not passed
        reason = f"{type(exc).__name__}: {exc}"
        print(f"[x] parity: could not compare the .pte and the .tflite layer by layer: {reason} "
              "(--no-parity-check skips the check)")
        pipeline.manifest["parity"] = {"error": reason}
        return False


def _print(result: dict) -> None:
    from converters.parity import pct

    for block in result["pairs"].values():
        print(f"  {block['verdict']}")
    check = result["check"]
    if check["layers"]:
        width = max(len(r["layer"]) for r in check["layers"])
        print(f"  .pte vs .tflite, per layer ({result['images']} images):")
        for r in check["layers"]:
            mark = "x" if r["state"] == "FAILED" else ("·" if r["state"].startswith("after") else "✓")
            print(f"    [{mark}] {r['layer']:<{width}}  {pct(r['equal_share']):>9} equal, max {r['max_steps']:g} "
                  f"steps (allowed {r['allowed']:g}) {'' if r['state'] == 'ok' else r['state']}")
    for failure in check["failures"]:
        print(f"    FAILED: parity: {failure}")
    mark = "✓" if check["passed"] else "x"
    print(f"[{mark}] parity: .pte vs .tflite {'within' if check['passed'] else 'beyond'} {check['max_steps']} output "
          f"step(s) per layer; report: {Path('report.md')} and {parity_report.PLOT_DIR}/*.png")
