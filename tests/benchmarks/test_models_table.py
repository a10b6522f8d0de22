"""benchmarks/models.py: the models x schemes x runtimes table, read from a real OUT."""

import json

from benchmarks.models import markdown, table_rows


def test_table_has_every_artifact_with_its_numbers(benched):
    manifest = json.loads((benched / "manifest.json").read_text())
    results = json.loads((benched / "bench" / "results.json").read_text())
    rows = table_rows("convnet", benched)
    by_file = {r["file"]: r for r in rows}
    assert set(manifest["artifacts"]) | {"PyTorch eager fp32"} == set(by_file)
    pte = by_file["convnet_xnnpack_int8.pte"]
    bench_row = next(r for r in results["rows"] if r["name"] == "convnet_xnnpack_int8.pte")
    assert pte["p50_ms_1thread"] == next(m["p50_ms"] for m in bench_row["latency"] if m["threads"] == 1)
    assert pte["accuracy"] == manifest["artifacts"]["convnet_xnnpack_int8.pte"]["verification"]["accuracy"]
    assert pte["qat"] == manifest["accuracy"]["int8"]["qat"] and pte["fp32"] == manifest["accuracy"]["fp32"]
    assert pte["outside_fast_path"] == "none"
    # Core ML's palettized file keeps its small weights dense: they are named, not hidden
    pal = by_file["convnet_coreml_pal4.mlpackage"]
    assert pal["outside_fast_path"] != "none"
    text = markdown(rows, {"dataset": "mnist-5k", "args": "", "host": "test", "timings": {"convnet": {"train": 1.0}},
                           "failures": []})
    assert text.count("\n| convnet |") == len(rows) and "convnet: train 1" in text
