"""android_demo/benchmark.py under device and app failures (adb test double): each failure keeps
the previous session's results in OUT/device/android/ byte for byte, says what happened, and exits
with the documented status. No phone is involved."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

PKG = "com.example.mobilebench"


def run(bench, fake_adb, tmp_path, export_dir, *extra: str, timeout: str = "3") -> int:
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK fake apk")
    argv = ["--adb", str(fake_adb.path), "--apk", str(apk), "--models", str(export_dir),
            "--out", str(tmp_path / "out"), "--poll-interval", "0.01", "--timeout", timeout, *extra]
    return bench.main(argv)


def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out" / "device" / "android"


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def previous(tmp_path, sample_results) -> dict[str, str]:
    """A complete earlier session (three repeats and a report) in OUT/device/android/."""
    folder = out_dir(tmp_path)
    folder.mkdir(parents=True)
    for i in (1, 2, 3):
        doc = dict(sample_results, run_id=f"earlier-{i}")
        (folder / f"benchmark_results_run{i}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (folder / "report.md").write_text("# Android on-device benchmark\n\nthe earlier session\n")
    (folder / "notes.txt").write_text("a file of the user's, never touched\n")
    return snapshot(folder)


def assert_previous_intact(tmp_path, previous, extra: set[str] = frozenset()):
    folder = out_dir(tmp_path)
    now = snapshot(folder)
    assert {k: v for k, v in now.items() if k in previous} == previous, "earlier results changed"
    assert set(now) - set(previous) == set(extra), f"unexpected new files: {set(now) - set(previous)}"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "staging left behind"


# --- the failure modes ---------------------------------------------------------------

def test_device_offline_mid_run(bench, fake_adb, tmp_path, export_dir, previous, capsys):
    fake_adb.scenario.update(results=None, offline_after=2)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 2
    err = capsys.readouterr().err
    assert "device FAKE123 went offline while the app was running (adb get-state: error: device offline)" in err
    assert "app process died" not in err
    assert "nothing replaced: the previous results" in err
    assert ["-s", "FAKE123", "get-state"] in fake_adb.calls()
    assert_previous_intact(tmp_path, previous)


def test_app_crash(bench, fake_adb, tmp_path, export_dir, previous, capsys):
    fake_adb.scenario.update(results=None, dies_after=2,
                             logcat_crash="E/AndroidRuntime( 4242): FATAL EXCEPTION: benchmark\n")
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 3
    err = capsys.readouterr().err
    assert "the app process died before writing its results" in err and "FATAL EXCEPTION" in err
    assert "nothing replaced" in err
    assert_previous_intact(tmp_path, previous)


@pytest.mark.parametrize("app_exits", [True, False], ids=["app-exits", "app-stays"])
def test_results_file_unparseable(bench, fake_adb, tmp_path, export_dir, previous, capsys, app_exits):
    raw = '{"schema_version": 1, "platform": "andr'
    fake_adb.scenario.update(results_raw=raw, results_after=1, dies_after=2 if app_exits else None)
    fake_adb.write()
    started = time.monotonic()
    assert run(bench, fake_adb, tmp_path, export_dir, timeout="30") == 1
    assert time.monotonic() - started < 20, "an unparseable file must not wait for the timeout"
    err = capsys.readouterr().err
    assert "results file unparseable" in err and "app process died" not in err
    assert "Unterminated string" in err and "schema_version" in err
    assert "benchmark_results.json.unparseable" in err
    assert (out_dir(tmp_path) / "benchmark_results.json.unparseable").read_text() == raw
    assert_previous_intact(tmp_path, previous, extra={"benchmark_results.json.unparseable"})


def test_results_failing_the_schema(bench, fake_adb, sample_results, tmp_path, export_dir, previous, capsys):
    del sample_results["results"][0]["metrics"]["ram_pss_usage(mb)"]
    fake_adb.scenario.update(results=sample_results)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 1
    err = capsys.readouterr().err
    assert "results/0/metrics: 'ram_pss_usage(mb)' is a required property" in err
    assert "nothing replaced" in err
    assert_previous_intact(tmp_path, previous, extra={"benchmark_results.json.invalid"})


def test_app_never_finishes(bench, fake_adb, tmp_path, export_dir, previous, capsys):
    fake_adb.scenario.update(results=None)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir, timeout="0.5") == 4
    err = capsys.readouterr().err
    assert "no results after" in err and "the app is still running" in err
    assert_previous_intact(tmp_path, previous)


def test_am_start_hanging_is_cut_at_the_timeout(bench, fake_adb, sample_results, tmp_path, export_dir,
                                                previous, capsys):
    fake_adb.scenario.update(results=sample_results, am_start_hang=20)
    fake_adb.write()
    started = time.monotonic()
    assert run(bench, fake_adb, tmp_path, export_dir, timeout="1") == 4
    assert time.monotonic() - started < 12
    err = capsys.readouterr().err
    assert f"shell 'am start -W -S -n {PKG}/.BenchmarkActivity" in err
    assert "did not return within 1 s (--timeout)" in err
    assert_previous_intact(tmp_path, previous)


def test_a_failed_repeat_keeps_the_whole_previous_session(bench, fake_adb, sample_results, tmp_path,
                                                          export_dir, previous, capsys):
    """Run 1 of 2 succeeds, run 2 crashes: neither replaces anything."""
    fake_adb.scenario.update(results=sample_results, crash_on_start=2)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir, "--repeat", "2") == 3
    assert "the app process died" in capsys.readouterr().err
    assert_previous_intact(tmp_path, previous)


def test_success_replaces_the_whole_previous_session(bench, fake_adb, sample_results, tmp_path, export_dir,
                                                     previous):
    (out_dir(tmp_path) / "benchmark_results.json.invalid").write_text("{}")  # a rejected earlier run
    fake_adb.scenario.update(results=sample_results)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 0
    folder = out_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["benchmark_results.json", "notes.txt", "report.md"]
    assert json.loads((folder / "benchmark_results.json").read_text())["run_id"] not in ("earlier-1", "$RUN_ID")
    assert "the earlier session" not in (folder / "report.md").read_text()


# --- the swap itself -------------------------------------------------------------------

def test_commit_rolls_back_when_a_move_fails(bench, tmp_path, monkeypatch):
    folder = tmp_path / "android"
    folder.mkdir()
    (folder / "benchmark_results.json").write_text("old")
    (folder / "report.md").write_text("old report")
    staging = bench.new_staging(folder)
    (staging / "benchmark_results.json").write_text("new")
    (staging / "report.md").write_text("new report")
    real_replace = os.replace

    def flaky(src, dst):
        if Path(src).name == "report.md" and Path(src).parent == staging:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(bench.os, "replace", flaky)
    with pytest.raises(OSError):
        bench.commit_session(staging, folder)
    assert (folder / "benchmark_results.json").read_text() == "old"
    assert (folder / "report.md").read_text() == "old report"
    assert (staging / "benchmark_results.json").read_text() == "new"


def test_interrupted_swap_is_undone_at_the_next_start(bench, tmp_path):
    """A run killed between moving the old session aside and moving the new one in."""
    folder = tmp_path / "android"
    aside = folder / ".previous-999999999-x"
    aside.mkdir(parents=True)
    (aside / "benchmark_results.json").write_text("old")
    stale_staging = folder / ".staging-999999999-y"
    stale_staging.mkdir()
    (stale_staging / "report.md").write_text("half a session")
    bench.recover_interrupted(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["benchmark_results.json"]
    assert (folder / "benchmark_results.json").read_text() == "old"
