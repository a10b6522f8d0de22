"""benchmarks/recovery.py: the paired tables of fp32 / PTQ / QAT / QAT+distill / keep-float and the Core ML palettes,
built from fabricated manifests (fast), and one tiny real run through the CLI."""

import json

import numpy as np
import pytest

from benchmarks import recovery, recovery_markdown, recovery_table
from core import statistics

N = 1000
LABELS = np.arange(N) % 10


def _right(k: int, seed: int) -> np.ndarray:
    """k right answers out of N, at seeded places."""
    answers = np.zeros(N, bool)
    answers[np.random.default_rng(seed).permutation(N)[:k]] = True
    return answers


def _artifact(backend: str, quant: str, tag: str | None, right: np.ndarray, passed: bool = True, size: int = 10**6,
              **checks) -> dict:
    return {"backend": backend, "quant": quant, "scheme": {"tag": tag} if tag else None, "bytes": size,
            "reference": "quantized" if tag else "fp32", "checks": checks,
            "verification": {"accuracy": float(right.mean()), "passed": passed, "agreement": 1.0, "failures": [],
                             "method": "test", "per_image": statistics.pack(right)}}


def _manifest(fp32: np.ndarray, tag: str, chosen: str, quantized: np.ndarray, files: dict[str, np.ndarray],
              ptq: np.ndarray | None = None, kept=None, palettes: dict | None = None) -> dict:
    ptq = quantized if ptq is None else ptq
    artifacts = {f"m_{b}_fp32": _artifact(b, "fp16" if b == "coreml" else "fp32", None, fp32)
                 for b in ("executorch", "tflite", "coreml")}
    artifacts.update({f"m_{b}_{tag}": _artifact(b, tag, tag, right) for b, right in files.items()})
    for name, (right, size, widths) in (palettes or {}).items():
        artifacts[f"m_coreml_{name}.mlpackage"] = _artifact("coreml", name, tag, right, size=size,
                                                            nbits=name[3:], **({"layer_nbits": widths} if widths else {}))
    return {"accuracy": {"fp32": float(fp32.mean()),
                         tag: {"ptq": float(ptq.mean()), chosen: float(quantized.mean()), "chosen": chosen,
                               "quantized": float(quantized.mean())}},
            "per_image": {"fp32": statistics.pack(fp32), f"{tag}:ptq": statistics.pack(ptq),
                          f"{tag}:{chosen}": statistics.pack(quantized)},
            "stages": {"quantize": {tag: {"steps": 0 if chosen == "ptq" else 100,
                                          "keep_float": {"layers": kept} if kept else None}}},
            "artifacts": artifacts, "backends": {}}


@pytest.fixture
def fabricated():
    fp32 = _right(900, 0)
    ptq = fp32.copy()
    ptq[np.flatnonzero(fp32)[:60]] = False  # PTQ loses 60 images fp32 got right: 6 pp, far beyond noise
    qat = ptq.copy()
    qat[np.flatnonzero(~ptq & fp32)[:3]] = True  # QAT wins back 3: not distinguishable from PTQ
    distill = fp32.copy()  # distillation wins everything back
    three = {b: None for b in ("executorch", "tflite", "coreml")}
    return {
        "ptq": _manifest(fp32, "int8-ptq", "ptq", ptq, {b: ptq for b in three},
                         palettes={"pal4": (ptq, 630_000, None)}),
        "qat": _manifest(fp32, "int8-qat", "qat", qat, {b: qat for b in three}),
        "qat_distill": _manifest(fp32, "int8-qat", "qat", distill, {b: distill for b in three}),
        "qat_distill_kf": _manifest(fp32, "int8-qat", "qat", distill, {"executorch": distill}, kept=["conv1"]),
        "pal8": _manifest(fp32, "int8-ptq", "ptq", ptq, {}, palettes={"pal8": (fp32, 1_230_000, None)}),
        "palauto": _manifest(fp32, "int8-ptq", "ptq", ptq, {},
                             palettes={"palauto": (fp32, 700_000, {"conv1": 8, "conv2": 4, "fc1": 4})}),
    }


def _find(table, first, second, level):
    return next(c for c in table["comparisons"] if (c["first"], c["second"], c["level"]) == (first, second, level))


def test_each_comparison_is_paired_on_the_same_images_with_an_interval(fabricated):
    table = recovery_table.build(fabricated, allowance_pp=0.5)
    assert table["unpaired"] is None and table["images"] == N
    beat = _find(table, "qat_distill", "ptq", "pytorch")
    assert beat["n"] == N and (beat["only_first"], beat["only_second"]) == (60, 0)
    assert beat["diff"] == pytest.approx(0.06) and beat["low"] > 0 and beat["verdict"] == "better beyond noise"
    assert beat["p"] < 1e-10
    # 3 images of 1000 won back: an interval across 0, whatever the raw difference says
    small = _find(table, "qat", "ptq", "tflite")
    assert small["diff"] == pytest.approx(0.003) and small["low"] < 0 < small["high"]
    assert small["verdict"] == "not distinguishable" and small["p"] == pytest.approx(0.25)
    worse = _find(table, "ptq", "fp32", "executorch")
    assert worse["verdict"] == "worse beyond noise" and worse["within"]["outcome"] == "fail"
    same = _find(table, "qat_distill", "fp32", "coreml")
    assert same["diff"] == 0 and same["within"]["outcome"] == "pass"  # 0 lost of 900: shown within 0.5 pp at n=1000
    # the keep-float OUT has only a .pte: no comparison is made up for the runtimes it lacks
    assert {c["level"] for c in table["comparisons"] if c["first"] == "qat_distill_kf"} == {"pytorch", "executorch"}
    summary = {s["against"]: s for s in table["distill"]}
    assert summary["ptq"]["better"] == ["pytorch", "executorch", "tflite", "coreml"] and not summary["ptq"]["worse"]
    assert summary["qat"]["better"] == ["pytorch", "executorch", "tflite", "coreml"]
    assert summary["fp32"]["within"] == ["pytorch", "executorch", "tflite", "coreml"] and summary["fp32"]["levels"] == 4


def test_palettes_state_size_against_pal8_accuracy_and_widths(fabricated):
    table = recovery_table.build(fabricated, allowance_pp=0.5)
    rows = {p["palette"]: p for p in table["palettes"]}
    assert rows["pal4"]["share_of_pal8"] == pytest.approx(630 / 1230) and rows["pal8"]["share_of_pal8"] == 1
    assert rows["palauto"]["widths"] == {"4": 2, "8": 1}
    assert rows["pal4"]["vs_fp32"]["outcome"] == "fail" and rows["pal8"]["vs_fp32"]["outcome"] == "pass"


def test_the_markdown_says_what_the_statistics_say_and_no_verdict_from_raw_differences(fabricated):
    header = {"command": "python -m benchmarks.recovery --model convnet", "model": "convnet", "dataset": "d",
              "args": "--epochs 1", "host": "test", "variant_flags": {"fp32": [], "ptq": ["--quant-mode", "ptq"]},
              "stages": {"train": {"codes": {"train": 0}, "seconds": {"train": 3.0}}}, "failures": []}
    text = recovery_markdown.markdown(recovery_table.build(fabricated, 0.5), header)
    assert "n = 1000 test images" in text and "`python -m benchmarks.recovery --model convnet`" in text
    assert "| QAT | PTQ | .tflite | 1000 | 84.30 | 84.00 | +0.30 pp [" in text
    assert "| not distinguishable |" in text
    assert ("- QAT+distill vs PTQ, at 4 level(s) on n = 1000: better beyond noise at PyTorch, .pte, .tflite, "
            "Core ML W8A8 / fp16; worse beyond noise at none; not distinguishable at none.") in text
    assert "- QAT+distill at most 0.5 pp below fp32, at 4 level(s) on n = 1000: shown at PyTorch, .pte" in text
    # PTQ lost 60 of 1000 images: 6 pp below fp32, its interval wholly beyond 0.5 pp
    assert "| PTQ | fp32 | .pte | 1000 | 84.00 | 90.00 | -6.00 pp [" in text and "shown more than 0.5 pp below fp32" in text
    assert "| pal4 | `m_coreml_pal4.mlpackage` | 0.63 | 51% | 84.00 | yes | 100.00% vs quantized | 4 everywhere | -6.00 pp [" in text
    assert "| pal4 | `m_coreml_pal4.mlpackage` | 0.63 | 51% |" in text and "4: 2, 8: 1" in text
    assert "kept float" in text and "conv1" in text
    assert "## Files of the first table that did not verify (✗), and why\n\nNone." in text
    fabricated["qat"]["artifacts"]["m_tflite_int8-qat"]["verification"].update(
        passed=False, failures=["top-1 agreement with the quantized reference is 92.00% < 99.50%"])
    text = recovery_markdown.markdown(recovery_table.build(fabricated, 0.5), header)
    assert "| QAT | 84.30 | 84.30 ✓ (1.00 MB) | 84.30 ✗ (1.00 MB) |" in text
    assert "- QAT, `m_tflite_int8-qat`: top-1 agreement with the quantized reference is 92.00% < 99.50%" in text


def test_variants_that_did_not_answer_the_same_images_are_not_paired(fabricated):
    other = _manifest(_right(900, 1), "int8-qat", "qat", _right(890, 2), {})
    table = recovery_table.build({**fabricated, "qat": other}, 0.5)
    assert "qat did not answer the same test images" in table["unpaired"]
    assert table["comparisons"] == [] and table["palettes"] == []


def test_a_finished_variant_is_reused_and_one_from_another_model_is_set_aside(tmp_path, monkeypatch):
    calls = []

    def fake_cli(command, *args):
        calls.append(command)
        out = tmp_path / "r" / "train"
        if command == "train":
            (out / "manifest.json").write_text(json.dumps({"run_id": f"run{len(calls)}",
                                                           "stages": {"train": {"status": "done", "key": "k"}}}))
        return 0, 0.1

    monkeypatch.setattr(recovery, "cli", fake_cli)
    root = tmp_path / "r"
    assert recovery.train(root, ["--epochs", "1"], rerun=False) == 0
    recovery.run_variant(root, "qat", ["--epochs", "1"], ["--quant-mode", "qat"], [], "train", rerun=False)
    assert calls == ["train", "qat", "export"] and (root / "qat" / "manifest.json").exists()
    assert recovery.train(root, ["--epochs", "1"], rerun=False) == 0  # reused
    recovery.run_variant(root, "qat", ["--epochs", "1"], ["--quant-mode", "qat"], [], "train", rerun=False)
    assert calls == ["train", "qat", "export"]
    recovery.train(root, ["--epochs", "1"], rerun=True)  # a new model: the variant made from the old one reruns
    recovery.run_variant(root, "qat", ["--epochs", "1"], ["--quant-mode", "qat"], [], "train", rerun=False)
    assert calls[3:] == ["train", "qat", "export"]
    assert len(list((root / "stale").glob("*/qat/recovery.json"))) == 1  # the old copy set aside, not deleted


def test_a_tiny_real_run_pairs_the_files_run_in_their_runtime_and_is_resumable(tmp_path):
    """ConvNet, mnist-5k, 512/200 images, 1 epoch, 10 QAT steps, PTQ and QAT+distill, .tflite only: the table's
    numbers are the manifests' and the .tflite files' own answers, paired on the same 200 images."""
    root, results = tmp_path / "root", tmp_path / "results"
    argv = ["--model", "convnet", "--dataset", "mnist-5k", "--variants", "ptq,qat_distill", "--root", str(root),
            "--results", str(results), "--args", "--limit-train 512 --limit-test 200 --epochs 1 --qat-max-steps 10 "
            "--calib-batches 2 --backends tflite --threads 1"]
    assert recovery.main(argv) == 0
    table = json.loads((results / "recovery_convnet_mnist-5k.json").read_text())
    outs = root / "convnet_mnist-5k"
    distill = json.loads((outs / "qat_distill" / "manifest.json").read_text())
    assert distill["stages"]["quantize"]["int8-qat"]["distill"]["temperature"] == 4.0
    tflite = next(a for a in distill["artifacts"].values() if a["backend"] == "tflite" and a["quant"] == "int8-qat")
    assert table["images"] == 200 and table["unpaired"] is None
    pair = next(c for c in table["comparisons"] if (c["first"], c["second"], c["level"]) == ("qat_distill", "ptq", "tflite"))
    assert pair["n"] == 200 and pair["first_acc"] == tflite["verification"]["accuracy"]
    ptq_tflite = next(a for a in json.loads((outs / "ptq" / "manifest.json").read_text())["artifacts"].values()
                      if a["backend"] == "tflite" and a["quant"] == "int8-ptq")
    assert pair["second_acc"] == ptq_tflite["verification"]["accuracy"]
    assert pair["low"] <= pair["diff"] <= pair["high"] and pair["verdict"] in (
        "better beyond noise", "worse beyond noise", "not distinguishable")
    assert "--variants ptq,qat_distill" in table["command"]
    stamps = {v: json.loads((outs / v / recovery.STATE).read_text())["at"] for v in ("train", "ptq", "qat_distill")}
    assert recovery.main(argv) == 0  # everything finished with these flags: read, not rerun
    assert stamps == {v: json.loads((outs / v / recovery.STATE).read_text())["at"] for v in stamps}


def test_without_the_ptq_variant_fp32_comes_from_another_variant(fabricated):
    table = recovery_table.build({"qat": fabricated["qat"]}, 0.5)
    pair = _find(table, "qat", "fp32", "tflite")
    assert (pair["first_acc"], pair["second_acc"], pair["n"]) == (0.843, 0.9, N)
    assert [r["variant"] for r in table["variants"]] == ["fp32", "qat"]
