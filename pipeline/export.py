"""The `export` stage: the fp32 baselines and the configured scheme with every selected backend, then `verify`."""

from __future__ import annotations

import time

from core import io as atomic
from core import manifest as mf
from core.console import say, say_brief

from converters import ExportOptions
from converters.export import export_part

from . import palette, verify
from .state import OutState, StageError


def run(pipeline: OutState) -> bool:
    """Export the fp32 baselines and the scheme with every selected backend, then verify what was exported.

    A failing backend is reported, and the others still run.
    """
    import converters

    pipeline.require_sound_model()
    scheme = pipeline.scheme()
    source, ok = pipeline.export_source(scheme), True
    selected = converters.select(pipeline.cfg.backends)
    options = ExportOptions.from_config(pipeline.cfg, float_layers=_kept(pipeline, scheme.tag))
    problems = [p for conv in selected for p in conv.source_problems(source, options)]
    if problems:  # settings this network cannot take: refused before anything in OUT changes
        raise StageError("; ".join(problems))
    for conv in selected:
        for part in ("fp32", scheme.tag):
            ok &= _export_part(pipeline, conv, part, source)
    for line in took_elsewhere(pipeline.manifest["backends"], [c.name for c in selected], ("fp32", scheme.tag)):
        say_brief(line)
    atomic.write_text(pipeline.out / "labels.txt", "\n".join(pipeline.data.labels) + "\n")
    verified = verify.run(pipeline, [c.name for c in selected], {scheme.tag: source}, reuse=not pipeline.cfg.force)
    return ok and verified


def took_elsewhere(backends: dict, names: list[str], parts: tuple[str, ...]) -> list[str]:
    """For each backend that failed a part, which other runtimes exported that same graph: where the failure is an
    op the runtime lacks, the ones named took that op."""
    lines = []
    for part in parts:
        failed = [n for n in names if (backends.get(f"{n}:{part}") or {}).get("status") == "failed"]
        took = [n for n in names if (backends.get(f"{n}:{part}") or {}).get("status") == "ok"]
        for name in failed:
            lines.append(f"    export: {name}:{part} failed; " + (
                f"the same graph, its ops included, did export to {', '.join(f'{t}:{part}' for t in took)}"
                if took else "no other selected runtime took this graph either"))
    return lines


def _export_part(pipeline: OutState, conv, part: str, source) -> bool:
    """One backend's baseline (part "fp32") or scheme artifacts: reuse them if intact, else export them."""
    base = pipeline.train_key() if part == "fp32" else pipeline.quant_key()
    key, name = f"{base}/{pipeline.cfg.key(*conv.settings)}", f"{conv.name}:{part}"
    previous = pipeline.manifest["backends"].get(name, {})
    files = {f: a for f, a in pipeline.manifest["artifacts"].items()
             if a["backend"] == conv.name and (mf.scheme_tag(a) or "fp32") == part}
    if not pipeline.cfg.force and previous.get("key") == key and previous.get("status") == "ok" and files:
        damaged = [f for f, a in files.items() if not atomic.intact(pipeline.out / f, a.get("sha256"))]
        if not damaged:
            say(f"export: {name}: reusing {', '.join(files)}")
            return True
        say(f"export: {name}: {', '.join(damaged)} missing or changed since export; exporting again")
    start = time.perf_counter()
    options = ExportOptions.from_config(pipeline.cfg, float_layers=_kept(pipeline, part))
    widths = None  # --nbits auto:PP: each layer's palette width, chosen before anything in OUT changes
    if conv.name == "coreml" and part != "fp32" and palette.active(pipeline.cfg):
        widths = palette.choose(pipeline, source, options)
        options = ExportOptions.from_config(pipeline.cfg, float_layers=options.float_layers,
                                            layer_nbits=tuple(widths["widths"].items()))
    for f in files:  # not done until the new files are written and recorded
        pipeline.manifest["artifacts"].pop(f)
    pipeline.manifest["backends"][name] = {"key": key, "status": "running"}
    pipeline.save()
    # a full or read-only disk stops every backend (exit 2, the file named); any other failure is this backend's
    result = export_part(conv, part, source, pipeline.out, options)
    for reason in result.failures:
        say_brief(f"[x] export: {name} FAILED: {reason}")
    _record(pipeline, result.made)  # the files it did make are kept
    if not result.ok:
        pipeline.manifest["backends"][name] = {"key": key, "status": "failed", "reason": "; ".join(result.failures)}
        pipeline.retire([f for f in files if f not in pipeline.manifest["artifacts"]], f"export: {name}")
        pipeline.save()
        return False
    pipeline.retire([f for f in files if f not in pipeline.manifest["artifacts"]], f"export: {name}")
    pipeline.manifest["backends"][name] = {"key": key, "status": "ok", "reason": None,
                                               "wall_time_s": time.perf_counter() - start,
                                               **({"nbits_auto": widths} if widths else {})}
    pipeline.save()
    return True


def _kept(pipeline: OutState, part: str) -> tuple[str, ...]:
    """The layers --keep-float left float in the `qat` stage's program of `part` (none for the fp32 baselines)."""
    kept = (pipeline.quant_stage(part).get("keep_float") or {}).get("layers") if part != "fp32" else None
    return tuple(kept or ())


def _record(pipeline: OutState, artifacts) -> None:
    """List exported files in the manifest, with their size and sha256."""
    for a in artifacts:
        path = pipeline.out / a.file
        pipeline.manifest["artifacts"][a.file] = {**a.to_dict(), "bytes": atomic.size_bytes(path),
                                                  "sha256": atomic.sha256(path)}
        say(f"[✓] export: {a.file} ({atomic.size_bytes(path) / 1e6:.2f} MB, {a.export_seconds:.1f} s)")
