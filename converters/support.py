"""The support matrix: which registered backend exports which quantization scheme, and how.

Each backend states its own row (`Converter.support`); this module puts them together for the
CLI's refusal before anything runs, `mobile-pipeline schemes` and the scheme table of the docs.
"""

from __future__ import annotations

from dataclasses import asdict

from core.schemes import MATRIX_ROWS, Scheme, SchemeError, Support, flags_for

from . import REGISTRY


def support(scheme: Scheme, runtime: str) -> Support:
    """Does the backend `runtime` export `scheme`, and through what?"""
    if runtime not in REGISTRY:
        raise SchemeError(f"unknown runtime {runtime!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[runtime].support(scheme)


def check(scheme: Scheme, runtimes: list[str]) -> list[str]:
    """Everything wrong with `scheme` for the selected runtimes (empty list: it can run)."""
    problems = scheme.problems()
    if problems:
        return problems
    for runtime in runtimes:
        s = support(scheme, runtime)
        if not s.ok:
            problems.append(f"{REGISTRY[runtime].display_name} cannot export {scheme.summary()}: {s.reason}. "
                            f"Choose another scheme, or drop {runtime} from --backends")
    return problems


def matrix() -> list[dict]:
    rows = []
    for label, scheme in MATRIX_ROWS:
        refused = scheme.problems()
        cells = {r: (Support(r, False, reason=f"not offered: {refused[0]}") if refused else support(scheme, r))
                 for r in REGISTRY}
        rows.append({"scheme": label, "tag": scheme.tag, "flags": flags_for(scheme),
                     "qat": scheme.trainable, **{r: asdict(c) for r, c in cells.items()},
                     "simulated_only": not refused and not any(c.ok for c in cells.values()),
                     "refused": bool(refused)})
    return rows


def matrix_markdown() -> str:
    head = "| scheme | flags | " + " | ".join(c.display_name for c in REGISTRY.values()) + " | QAT |"
    lines = [head, "|" + "---|" * (len(REGISTRY) + 3)]
    for row in matrix():
        cells = [("yes: " + row[r]["how"]) if row[r]["ok"] else ("no: " + row[r]["reason"]) for r in REGISTRY]
        label = row["scheme"] + (" (simulated in PyTorch only)" if row["simulated_only"] else "")
        qat = "–" if row["refused"] else ("yes" if row["qat"] else "no (PTQ)")
        lines.append(f"| {label} | `{row['flags']}` | " + " | ".join(cells) + f" | {qat} |")
    lines += ["", "PTQ calibration of static activation ranges: `--calibration histogram` (default, XNNPACKQuantizer's own), "
              "`minmax`, `moving_average`, `percentile` (torchao observers; percentile clips the 0.01% tails). A scheme "
              "that no runtime exports is still quantized and measured in PyTorch, and labelled simulated."]
    return "\n".join(lines)
