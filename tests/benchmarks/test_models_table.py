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


def test_collect_gathers_finished_outs_and_names_what_failed(benched, tmp_path, capsys):
    from benchmarks.models import main

    root = tmp_path / "table"
    assert main(["--collect", str(benched), "--root", str(root)]) == 0
    table = json.loads((root / "models.json").read_text())
    manifest = json.loads((benched / "manifest.json").read_text())
    assert {r["file"] for r in table["rows"]} == set(manifest["artifacts"]) | {"PyTorch eager fp32"}
    assert table["collected_from"] == [str(benched)] and table["failures"] == []
    assert "Separate runs, one per model, collected" in (root / "models.md").read_text()
    # an artifact that failed verify is named, and the exit status says so
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest["artifacts"]["convnet_tflite_int8.tflite"]["verification"] = {"passed": False, "failures": ["agreement 90% < 99.5%"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--collect", str(copy), "--root", str(root)]) == 1
    assert "convnet_tflite_int8.tflite did not pass verify: agreement 90% < 99.5%" in (root / "models.md").read_text()
    assert main(["--collect", str(tmp_path / "nowhere"), "--root", str(root)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
