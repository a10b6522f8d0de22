"""`bench --compare OLD/results.json`: this run against an earlier one, as ratios, flagging only real changes.

Per model present in both runs: size, accuracy and the batch-1 p50 latency at each thread count, as new / old.
A change is flagged only when it exceeds the runs' own spread:
- latency: |p50 new - p50 old| larger than the wider of the two runs' spreads of single calls (p90 - p50 of
  each measurement), so a shift that the calls of one run already show is not called a regression;
- accuracy: a difference outside the 95% sampling interval of two accuracies on n test images each
  (1.96 · sqrt(p₁(1-p₁)/n₁ + p₂(1-p₂)/n₂));
- size: any change (a file has no run-to-run spread).
Writes OUT/bench/compare.md and compare.json, and returns the markdown for the console.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core import io as atomic

Z95 = 1.96
DASH = "–"


class CompareError(RuntimeError):
    """The earlier results cannot be compared with; the message names the file and what to do."""


def load_old(path: str | Path, validate) -> dict:
    """The earlier run's results.json, checked before this run measures anything."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise CompareError(f"--compare {path}: no such file; give an earlier run's OUT/bench/results.json")
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompareError(f"--compare {path} is not valid JSON ({exc}); give an earlier run's bench results") from exc
    validate(old, path)
    old["_path"] = str(path)
    return old


def latency_change(old: dict, new: dict) -> dict:
    ratio = new["p50_ms"] / old["p50_ms"] if old["p50_ms"] else None
    spread = max(old["p90_ms"] - old["p50_ms"], new["p90_ms"] - new["p50_ms"])
    delta = new["p50_ms"] - old["p50_ms"]
    return {"old_ms": old["p50_ms"], "new_ms": new["p50_ms"], "ratio": ratio, "spread_ms": spread,
            "flagged": abs(delta) > spread, "direction": "slower" if delta > 0 else "faster"}


def accuracy_change(old: float | None, new: float | None, n_old: int | None, n_new: int | None) -> dict | None:
    if old is None or new is None:
        return None
    spread = Z95 * math.sqrt(old * (1 - old) / n_old + new * (1 - new) / n_new) if n_old and n_new else 0.0
    return {"old": old, "new": new, "delta_pp": 100 * (new - old), "spread_pp": 100 * spread,
            "flagged": abs(new - old) > spread, "direction": "lower" if new < old else "higher"}


def compare(old: dict, new: dict) -> dict:
    """Row by row (matched by name), latency by thread label."""
    n_old, n_new = old["dataset"].get("n_test"), new["dataset"].get("n_test")
    old_rows = {r["name"]: r for r in old["rows"]}
    rows = []
    for r in new["rows"]:
        o = old_rows.get(r["name"])
        if o is None:
            continue
        size_ratio = r["size_bytes"] / o["size_bytes"] if o["size_bytes"] else None
        old_lat = {lat["label"]: lat for lat in o["latency"]}
        rows.append({
            "name": r["name"],
            "size": {"old_bytes": o["size_bytes"], "new_bytes": r["size_bytes"], "ratio": size_ratio,
                     "flagged": r["size_bytes"] != o["size_bytes"]},
            "accuracy": accuracy_change(o.get("accuracy"), r.get("accuracy"), n_old, n_new),
            "latency": {lat["label"]: latency_change(old_lat[lat["label"]], lat)
                        for lat in r["latency"] if lat["label"] in old_lat},
        })
    new_names = {r["name"] for r in new["rows"]}
    return {"old": {"path": old.get("_path"), "run_id": old.get("run_id"), "created": old.get("created"),
                    "cpu": old["host"].get("cpu_model")},
            "new": {"run_id": new.get("run_id"), "created": new.get("created"), "cpu": new["host"].get("cpu_model")},
            "rows": rows,
            "only_old": sorted(set(old_rows) - new_names),
            "only_new": sorted(new_names - set(old_rows))}


def _ratio(value: float | None, flagged: bool) -> str:
    text = DASH if value is None else f"{value:.3f}x"
    return f"**{text}**" if flagged else text


def markdown(result: dict) -> str:
    labels = sorted({label for r in result["rows"] for label in r["latency"]})
    header = ["model", "size new/old", "accuracy new − old (pp)"] + [f"p50 {label} new/old" for label in labels]
    lines = [f"# Bench compared with `{result['old']['path']}`", "",
             f"New run `{result['new']['run_id']}` ({result['new']['created']}, {result['new']['cpu']}) against "
             f"`{result['old']['run_id']}` ({result['old']['created']}, {result['old']['cpu']}). Ratios are new / old "
             "(below 1: smaller or faster). **Bold**: a change larger than the runs' own spread (latency: the wider "
             "p90 − p50 of the two runs' calls; accuracy: the 95% sampling interval of two accuracies; size: any "
             "change); the spread is in brackets.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    flagged = []
    for r in result["rows"]:
        cells = [f"`{r['name']}`", _ratio(r["size"]["ratio"], r["size"]["flagged"])]
        acc = r["accuracy"]
        if acc:
            text = f"{acc['delta_pp']:+.2f} (±{acc['spread_pp']:.2f})"
            cells.append(f"**{text}**" if acc["flagged"] else text)
            if acc["flagged"]:
                flagged.append(f"`{r['name']}`: accuracy {acc['direction']} by {abs(acc['delta_pp']):.2f} pp")
        else:
            cells.append(DASH)
        for label in labels:
            lat = r["latency"].get(label)
            if not lat:
                cells.append(DASH)
                continue
            cells.append(f"{_ratio(lat['ratio'], lat['flagged'])} ({lat['old_ms']:.3g} → {lat['new_ms']:.3g} ms, "
                         f"±{lat['spread_ms']:.2g})")
            if lat["flagged"]:
                flagged.append(f"`{r['name']}`: p50 at {label} {lat['direction']}, {lat['ratio']:.3g}x")
        if r["size"]["flagged"]:
            flagged.append(f"`{r['name']}`: size {r['size']['ratio']:.3f}x")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Changes beyond the spread: " + ("; ".join(flagged) if flagged else "none") + "."]
    if result["only_old"] or result["only_new"]:
        lines += ["", f"Only in the earlier run: {', '.join(result['only_old']) or 'none'}. "
                  f"Only in this run: {', '.join(result['only_new']) or 'none'}."]
    return "\n".join(lines) + "\n"


def write(folder: Path, result: dict) -> tuple[Path, str]:
    text = markdown(result)
    atomic.write_json(Path(folder) / "compare.json", result)
    return atomic.write_text(Path(folder) / "compare.md", text), text
