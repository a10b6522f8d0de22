"""The tables of benchmarks/recovery.py, built from the variants' manifests alone (no model is run here); benchmarks/recovery_markdown.py writes them.

Every comparison is paired: two variants' right/wrong answers on the SAME test images (the manifest's `per_image`
records: `fp32` and `<tag>:<ptq|qat>` for the PyTorch programs, each file's `verification.per_image` for the files
run in their runtimes), with Newcombe's interval of the accuracy difference and an exact McNemar test
(core/statistics.py). A difference is called "beyond noise" only when its whole interval lies on one side of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import statistics

# The variants, in table order: (name, label). fp32 is read from the PTQ variant's OUT (its fp32 files and answers).
VARIANTS = (("fp32", "fp32"), ("ptq", "PTQ"), ("qat", "QAT"), ("qat_distill", "QAT+distill"),
            ("qat_distill_kf", "QAT+distill+keep-float"))
PALETTES = (("pal4", "ptq"), ("pal8", "pal8"), ("palauto", "palauto"))  # (palette, the variant OUT that holds it)
LEVELS = (("pytorch", "PyTorch"), ("executorch", ".pte"), ("tflite", ".tflite"), ("coreml", "Core ML W8A8 / fp16"))
# (first, second): "first minus second" on the same images; the pairs the decisions need
COMPARISONS = (("qat", "ptq"), ("qat_distill", "qat"), ("qat_distill", "ptq"), ("qat_distill", "fp32"),
               ("qat_distill_kf", "qat_distill"), ("qat_distill_kf", "fp32"), ("ptq", "fp32"), ("qat", "fp32"))
LABELS = dict(VARIANTS)


def _tag(manifest: dict) -> str | None:
    """The variant's scheme tag: the accuracy entry that is not fp32."""
    return next((t for t, v in (manifest.get("accuracy") or {}).items() if t != "fp32" and isinstance(v, dict)), None)


def _source(manifests: dict, variant: str) -> dict | None:
    """The manifest that holds a variant: fp32's is the PTQ OUT's (any variant's when PTQ did not run: each holds
    the same fp32 model's answers and files)."""
    if variant == "fp32":
        return manifests.get("ptq") or next(iter(manifests.values()), None)
    return manifests.get(variant)


def _file(manifest: dict, backend: str, variant: str) -> tuple[str, dict] | tuple[None, None]:
    """The variant's file of `backend`: the float baseline for fp32, else the scheme's file (not a palette)."""
    tag = _tag(manifest)
    for file, a in sorted((manifest.get("artifacts") or {}).items()):
        quant = str(a.get("quant", ""))
        if a.get("backend") != backend:
            continue
        if (variant == "fp32" and quant in ("fp32", "fp16")) or (
                variant != "fp32" and (a.get("scheme") or {}).get("tag") == tag and not quant.startswith("pal")):
            return file, a
    return None, None


def answers(manifests: dict, variant: str, level: str) -> np.ndarray | None:
    """Per test image, is the variant right? At level `pytorch` its PyTorch program, else its file of that backend."""
    manifest = _source(manifests, variant)
    if manifest is None:
        return None
    per_image = manifest.get("per_image") or {}
    if level == "pytorch":
        if variant == "fp32":
            return statistics.unpack(per_image.get("fp32"))
        tag = _tag(manifest)
        chosen = ((manifest.get("accuracy") or {}).get(tag) or {}).get("chosen")
        return statistics.unpack(per_image.get(f"{tag}:{chosen}")) if chosen else None
    _, a = _file(manifest, level, variant)
    return statistics.unpack(((a or {}).get("verification") or {}).get("per_image"))


def same_test_images(manifests: dict) -> str | None:
    """None when every variant answered the same test images with the same fp32 model (their fp32 answers are one
    and the same record), else why their answers cannot be paired."""
    seen = {name: statistics.unpack((m.get("per_image") or {}).get("fp32")) for name, m in manifests.items()}
    missing = [n for n, a in seen.items() if a is None]
    if missing:
        return f"no per-image fp32 answers in {', '.join(missing)} (an OUT made before they were recorded)"
    first_name, first = next(iter(seen.items()))
    differ = [n for n, a in seen.items() if a.shape != first.shape or not np.array_equal(a, first)]
    if differ:
        return (f"{', '.join(differ)} did not answer the same test images with the same fp32 model as {first_name} "
                "(different --limit-test, dataset or training): their answers cannot be paired")
    return None


@dataclass(frozen=True)
class Paired:
    first: str
    second: str
    level: str
    n: int
    first_acc: float
    second_acc: float
    diff: float
    low: float
    high: float
    only_first: int
    only_second: int
    p: float
    within: dict | None  # vs fp32: the drop verdict against the allowance (statistics.drop_verdict)

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better beyond noise"
        if self.high < 0:
            return "worse beyond noise"
        return "not distinguishable"

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "verdict": self.verdict}


def paired(manifests: dict, first: str, second: str, level: str, allowance_pp: float,
           confidence: float = statistics.CONFIDENCE) -> Paired | None:
    a, b = answers(manifests, first, level), answers(manifests, second, level)
    if a is None or b is None or a.shape != b.shape:
        return None
    table = statistics.paired_table(a, b)
    diff, low, high = statistics.paired_drop_interval(table, confidence)
    test = statistics.mcnemar(a, b)
    within = None
    if second == "fp32":  # is `first` shown within the allowance of fp32 (drop = fp32 minus first)?
        within = statistics.drop_verdict(b, a, allowance_pp / 100, confidence, f"{first} vs fp32").to_dict()
    return Paired(first, second, level, int(a.size), float(a.mean()), float(b.mean()), diff, low, high,
                  test["only_first"], test["only_second"], test["p"], within)


def comparisons(manifests: dict, allowance_pp: float) -> list[Paired]:
    return [c for first, second in COMPARISONS for level, _ in LEVELS
            if (c := paired(manifests, first, second, level, allowance_pp)) is not None]


def variant_rows(manifests: dict) -> list[dict]:
    rows = []
    for name, label in VARIANTS:
        manifest = _source(manifests, name)
        if manifest is None:
            continue
        tag = _tag(manifest)
        stage = ((manifest.get("stages") or {}).get("quantize") or {}).get(tag) or {}
        acc = manifest.get("accuracy") or {}
        pytorch = acc.get("fp32") if name == "fp32" else (acc.get(tag) or {}).get("quantized")
        files = {}
        for backend, _ in LEVELS[1:]:
            file, a = _file(manifest, backend, name)
            if a is None:
                entry = (manifest.get("backends") or {}).get(f"{backend}:{'fp32' if name == 'fp32' else tag}") or {}
                files[backend] = {"file": None, "status": entry.get("status") or "not made",
                                  "reason": entry.get("reason")}
                continue
            v = a.get("verification") or {}
            files[backend] = {"file": file, "bytes": a.get("bytes"), "accuracy": v.get("accuracy"),
                              "passed": v.get("passed"), "agreement": v.get("agreement"), "method": v.get("method"),
                              "failures": v.get("failures") or [], "per_image": bool(v.get("per_image"))}
        rows.append({"variant": name, "label": label, "tag": tag, "pytorch": pytorch,
                     "chosen": None if name == "fp32" else (acc.get(tag) or {}).get("chosen"),
                     "keep_float": None if name == "fp32" else (stage.get("keep_float") or {}).get("layers"),
                     "distill": None if name == "fp32" else stage.get("distill"),
                     "qat_steps": None if name == "fp32" else stage.get("steps"), "files": files})
    return rows


def palette_rows(manifests: dict, allowance_pp: float) -> list[dict]:
    rows = []
    fp32 = answers(manifests, "fp32", "pytorch")
    for palette, holder in PALETTES:
        manifest = manifests.get(holder)
        if manifest is None:
            rows.append({"palette": palette, "file": None, "status": f"not run (variant {holder} not in --variants)"})
            continue
        found = [(f, a) for f, a in sorted(((manifest or {}).get("artifacts") or {}).items())
                 if a.get("backend") == "coreml" and str(a.get("quant", "")).startswith("pal")]
        if not found:
            entry = ((manifest or {}).get("backends") or {}).get(f"coreml:{_tag(manifest or {})}") or {}
            rows.append({"palette": palette, "file": None, "status": entry.get("status") or "not made",
                         "reason": entry.get("reason")})
            continue
        file, a = found[0]
        v, checks = a.get("verification") or {}, a.get("checks") or {}
        widths = checks.get("layer_nbits") or {}
        mine = statistics.unpack(v.get("per_image"))
        drop = (statistics.drop_verdict(fp32, mine, allowance_pp / 100, name=f"{palette} vs fp32").to_dict()
                if fp32 is not None and mine is not None and fp32.shape == mine.shape else None)
        rows.append({"palette": palette, "file": file, "bytes": a.get("bytes"), "accuracy": v.get("accuracy"),
                     "passed": v.get("passed"), "agreement": v.get("agreement"), "reference": a.get("reference"),
                     "method": v.get("method"), "failures": v.get("failures") or [], "nbits": checks.get("nbits"),
                     "widths": {str(b): sum(1 for w in widths.values() if w == b) for b in sorted(set(widths.values()))},
                     "vs_fp32": drop})
    pal8 = next((r for r in rows if r["palette"] == "pal8" and r.get("bytes")), None)
    for r in rows:
        r["share_of_pal8"] = r["bytes"] / pal8["bytes"] if pal8 and r.get("bytes") else None
    return rows


def distill_summary(found: list[Paired]) -> list[dict]:
    """What the paired statistics say about --distill: QAT+distill against QAT and against PTQ, at every level."""
    out = []
    for second in ("qat", "ptq"):
        pairs = [c for c in found if c.first == "qat_distill" and c.second == second]
        out.append({"against": second, "levels": len(pairs),
                    "better": [c.level for c in pairs if c.verdict.startswith("better")],
                    "worse": [c.level for c in pairs if c.verdict.startswith("worse")],
                    "undecided": [c.level for c in pairs if c.verdict == "not distinguishable"]})
    near = [c for c in found if c.first == "qat_distill" and c.second == "fp32" and c.within]
    out.append({"against": "fp32", "levels": len(near),
                "allowance_pp": 100 * near[0].within["threshold"] if near else None,
                **{key: [c.level for c in near if c.within["outcome"] == outcome]
                   for key, outcome in (("within", "pass"), ("beyond", "fail"), ("undecided", "inconclusive"))}})
    return out


def build(manifests: dict, allowance_pp: float) -> dict:
    """Everything the JSON and the Markdown hold, from {variant: manifest}."""
    unpaired = same_test_images(manifests) if manifests else "no variant has a manifest"
    found = [] if unpaired else comparisons(manifests, allowance_pp)
    fp32 = answers(manifests, "fp32", "pytorch")
    return {"images": None if fp32 is None else int(fp32.size),
            "allowance_pp": allowance_pp, "unpaired": unpaired, "variants": variant_rows(manifests),
            "comparisons": [c.to_dict() for c in found], "distill": distill_summary(found),
            "palettes": palette_rows(manifests, allowance_pp) if not unpaired else []}
