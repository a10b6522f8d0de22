"""The `export` stage: the fp32 baselines and the configured scheme with every selected backend, then `verify`."""

from __future__ import annotations

import time
import traceback

from core import io as atomic
from core import manifest as mf
from core.console import say, say_brief

from . import verify
from .state import OutState


def run(pipeline: OutState) -> bool:
    """Export the fp32 baselines and the scheme with every selected backend, then verify what was exported.

    A failing backend is reported, and the others still run.
    """
    import converters

    pipeline.require_sound_model()
    scheme = pipeline.scheme()
    source, ok = pipeline.export_source(scheme), True
    selected = converters.select(pipeline.cfg.backends)
    for conv in selected:
        for part in ("fp32", scheme.tag):
            ok &= _export_part(pipeline, conv, part, source)
    for line in took_elsewhere(pipeline.manifest["backends"], [c.name for c in selected], ("fp32", scheme.tag)):
        say_brief(line)
    atomic.write_text(pipeline.out / "labels.txt", "\n".join(pipeline.data.labels) + "\n")
    verified = verify.run(pipeline, [c.name for c in selected], {scheme.tag: source}, reuse=not pipeline.cfg.force)
    return ok and verified


def took_elsewhere(backends: dict, names: list[str], parts: tuple[str, ...]) -> list[str]:
    """For each backend that failed a part, which other runtimes exported that same graph: whatever op a runtime
    lacks, the ones named took it, so the gap is that runtime's, not the network's."""
    lines = []
    for part in parts:
        failed = [n for n in names if (backends.get(f"{n}:{part}") or {}).get("status") == "failed"]
        took = [n for n in names if (backends.get(f"{n}:{part}") or {}).get("status") == "ok"]
        for name in failed:
            lines.append(f"    export: {name}:{part} failed where " + (
                f"{', '.join(f'{t}:{part}' for t in took)} took the same graph (its ops included): a gap of "
                f"{name}, not of the network" if took else "no other selected runtime took this graph either"))
    return lines


def _export_part(pipeline: OutState, conv, part: str, source) -> bool:
    """One backend's baseline (part "fp32") or scheme artifacts: reuse them if intact, else export them."""
    from converters import ConversionError, PartialExport

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
    for f in files:  # not done until the new files are written and recorded
        pipeline.manifest["artifacts"].pop(f)
    pipeline.manifest["backends"][name] = {"key": key, "status": "running"}
    pipeline.save()
    start = time.perf_counter()
    try:
        conv.check_dependencies()
        artifacts = (conv.export_baseline if part == "fp32" else conv.export_scheme)(source, pipeline.out, pipeline.cfg)
    except atomic.OutputDirError:
        raise  # a full or read-only disk stops every backend: exit 2 with the file named
    except Exception as exc:  # a failing backend must not stop the others; the files it did make are kept
        failures = exc.failures if isinstance(exc, PartialExport) else [exc]
        reasons = []
        for failure in failures:
            if not isinstance(failure, ConversionError):  # a raw library exception: its traceback to the log
                traceback.print_exception(failure)
            first = (str(failure).strip().splitlines() or [""])[0][:300]
            reasons.append(str(failure) if isinstance(failure, ConversionError) else
                           f"{type(failure).__name__}: {first} (the full traceback is in the log)")
            say_brief(f"[x] export: {name} FAILED: {reasons[-1]}")
        _record(pipeline, exc.artifacts if isinstance(exc, PartialExport) else [])
        pipeline.manifest["backends"][name] = {"key": key, "status": "failed", "reason": "; ".join(reasons)}
        pipeline.retire([f for f in files if f not in pipeline.manifest["artifacts"]], f"export: {name}")
        pipeline.save()
        return False
    _record(pipeline, artifacts)
    pipeline.retire([f for f in files if f not in pipeline.manifest["artifacts"]], f"export: {name}")
    pipeline.manifest["backends"][name] = {"key": key, "status": "ok", "reason": None,
                                               "wall_time_s": time.perf_counter() - start}
    pipeline.save()
    return True


def _record(pipeline: OutState, artifacts) -> None:
    """List exported files in the manifest, with their size and sha256."""
    for a in artifacts:
        path = pipeline.out / a.file
        pipeline.manifest["artifacts"][a.file] = {**a.to_dict(), "bytes": atomic.size_bytes(path),
                                                  "sha256": atomic.sha256(path)}
        say(f"[✓] export: {a.file} ({atomic.size_bytes(path) / 1e6:.2f} MB, {a.export_seconds:.1f} s)")
