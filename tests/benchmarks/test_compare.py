"""`bench --compare`: ratios against an earlier run, flagging only changes beyond the runs' own spread."""
from __future__ import annotations

import json

import pytest

from benchmarks import compare, host
from pipeline.cli import build_parser


def _lat(label, p50, p90):
    return {"label": label, "threads": 1, "p50_ms": p50, "p90_ms": p90}


def _results(run_id, rows, n_test=1000):
    return {"run_id": run_id, "created": "t", "host": {"cpu_model": "cpu"}, "dataset": {"n_test": n_test},
            "rows": [{"name": name, "size_bytes": size, "accuracy": acc, "latency": lat} for name, size, acc, lat in rows]}


OLD = _results("old", [("m_int8.pte", 1000, 0.95, [_lat("1 thread", 1.00, 1.10)]),
                       ("m_fp32.pte", 4000, 0.95, [_lat("1 thread", 2.00, 2.05)]),
                       ("gone.tflite", 10, 0.5, [])])


def test_changes_within_the_spread_are_shown_but_not_flagged():
    new = _results("new", [("m_int8.pte", 1000, 0.951, [_lat("1 thread", 1.08, 1.15)]),
                           ("m_fp32.pte", 4000, 0.95, [_lat("1 thread", 2.04, 2.10)])])
    result = compare.compare(OLD, new)
    (int8, fp32) = result["rows"]
    assert int8["latency"]["1 thread"]["ratio"] == pytest.approx(1.08) and not int8["latency"]["1 thread"]["flagged"]
    assert not fp32["latency"]["1 thread"]["flagged"]  # +0.04 ms, spread 0.06 (the new run's p90 - p50)
    assert not int8["accuracy"]["flagged"] and not int8["size"]["flagged"]
    assert result["only_old"] == ["gone.tflite"] and result["only_new"] == []
    text = compare.markdown(result)
    assert "Changes beyond the spread: none." in text and "1.080x (1 → 1.08 ms, ±0.1)" in text


def test_changes_beyond_the_spread_are_flagged():
    new = _results("new", [("m_int8.pte", 900, 0.90, [_lat("1 thread", 1.50, 1.60)]),
                           ("m_fp32.pte", 4000, 0.95, [_lat("1 thread", 1.50, 1.52)]),
                           ("added.pte", 1, 1.0, [])])
    result = compare.compare(OLD, new)
    int8, fp32 = result["rows"]
    assert int8["latency"]["1 thread"]["flagged"] and int8["size"]["flagged"] and int8["accuracy"]["flagged"]
    assert fp32["latency"]["1 thread"]["flagged"] and fp32["latency"]["1 thread"]["direction"] == "faster"
    text = compare.markdown(result)
    assert "**1.500x**" in text and "**0.900x**" in text and "**-5.00 (±2.30)**" in text
    assert "`m_int8.pte`: accuracy lower by 5.00 pp" in text and "`m_fp32.pte`: p50 at 1 thread faster, 0.75x" in text
    assert "Only in this run: added.pte" in text


def test_the_earlier_results_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(compare.CompareError, match="no such file"):
        compare.load_old(tmp_path / "missing.json", host.validate)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(compare.CompareError, match="not valid JSON"):
        compare.load_old(tmp_path / "bad.json", host.validate)
    (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(host.BenchError, match="results.schema.json"):
        compare.load_old(tmp_path, host.validate)  # a folder means its results.json


def test_write_puts_both_files_in_the_bench_folder(tmp_path):
    path, text = compare.write(tmp_path, compare.compare(OLD, OLD))
    assert path.read_text() == text and json.loads((tmp_path / "compare.json").read_text())["rows"]


def test_only_bench_takes_compare():
    assert build_parser().parse_args(["bench", "--compare", "old/results.json"]).compare == "old/results.json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--compare", "x"])


def test_bench_refuses_a_bad_compare_file_before_it_measures_or_writes(tiny_out, config_for, tmp_path):
    before = sorted((p.relative_to(tiny_out), p.stat().st_mtime_ns) for p in tiny_out.rglob("*") if p.is_file())
    with pytest.raises(host.BenchError, match="--compare .*missing.json: no such file"):
        host.bench(config_for(tiny_out), compare_to=str(tmp_path / "missing.json"))
    after = sorted((p.relative_to(tiny_out), p.stat().st_mtime_ns) for p in tiny_out.rglob("*") if p.is_file())
    assert after == before
