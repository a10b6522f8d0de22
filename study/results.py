"""results.json: written only when it matches its schema (study/schemas/results.schema.json)."""

from __future__ import annotations

import math
from pathlib import Path

from core import io as atomic

SCHEMA = Path(__file__).parent / "schemas" / "results.schema.json"
RESULTS = "results.json"


def clean(value):
    """JSON-ready: no Paths, tuples or non-finite floats (JSON has no NaN or infinity: they become null)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        return clean(value.item())
    return value


def problems(results: dict) -> list[str]:
    import json

    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(results), key=lambda e: list(map(str, e.absolute_path)))]


def write(directory: Path, results: dict) -> Path:
    results = clean(results)
    found = problems(results)
    if found:
        raise ValueError(f"study results do not match {SCHEMA.name}: " + "; ".join(found[:10]))
    return atomic.write_json(Path(directory) / RESULTS, results)


def read(directory: Path) -> dict:
    return atomic.read_json(Path(directory) / RESULTS)
