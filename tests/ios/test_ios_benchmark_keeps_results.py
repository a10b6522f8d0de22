"""ios_demo/benchmark.py never loses the previous session: a failed run (no results, results that
fail the schema, a damaged results block) leaves OUT/device/ios/ byte for byte as it was, and puts
its own files in last-failed-run/. A fake `xcodebuild` on PATH stands in for Xcode."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

LOG = Path(__file__).resolve().parent / "data" / "xcodebuild_device_test.log"
DEVICE = "platform=iOS,id=00008110-001A2B3C4D5E6F70"

FAKE_XCODEBUILD = """#!{python}
import os, sys
args = sys.argv[1:]
bundle = args[args.index("-resultBundlePath") + 1]
assert not os.path.exists(bundle), "xcodebuild refuses an existing result bundle"
os.makedirs(os.path.join(bundle, "Data"))
open(os.path.join(bundle, "Info.plist"), "w").write("new bundle")
sys.stdout.write(open({log!r}).read())
sys.exit({code})
"""


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous(tmp_path, sample_results) -> dict[str, str]:
    out = tmp_path / "out" / "device" / "ios"
    (out / "ConvNetBench.xcresult" / "Data").mkdir(parents=True)
    (out / "ConvNetBench.xcresult" / "Info.plist").write_text("earlier bundle")
    (out / "benchmark_results.json").write_text(json.dumps(dict(sample_results, started_at="earlier")))
    (out / "report.md").write_text("# the earlier report\n")
    (out / "xcodebuild.log").write_text("the earlier log\n")
    return tree(out)


def fake_xcodebuild(tmp_path: Path, monkeypatch, log_text: str, code: int = 0) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "canned.log"
    log.write_text(log_text)
    tool = bin_dir / "xcodebuild"
    tool.write_text(FAKE_XCODEBUILD.format(python=sys.executable, log=str(log), code=code))
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    project = tmp_path / "ConvNetBench.xcodeproj"
    project.mkdir()
    return project


def run(benchmark, tmp_path, project, destination=DEVICE) -> int:
    return benchmark.main(["--destination", destination, "--project", str(project),
                           "--out", str(tmp_path / "out")])


def assert_intact(tmp_path, previous):
    out = tmp_path / "out" / "device" / "ios"
    now = {k: v for k, v in tree(out).items() if not k.startswith("last-failed-run/")}
    assert now == previous
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "staging left behind"


def test_run_without_results_keeps_the_previous_session(benchmark, tmp_path, monkeypatch, previous, capsys):
    metrics_only = "\n".join(l for l in LOG.read_text().splitlines() if "CONVNETBENCH_JSON" not in l)
    project = fake_xcodebuild(tmp_path, monkeypatch, metrics_only, code=65)
    assert run(benchmark, tmp_path, project) == 1
    err = capsys.readouterr().err
    assert "no results JSON" in err and "are as they were" in err
    assert_intact(tmp_path, previous)
    failed = tmp_path / "out" / "device" / "ios" / "last-failed-run"
    assert (failed / "xcodebuild.log").read_text().strip() == metrics_only.strip()
    assert (failed / "ConvNetBench.xcresult" / "Info.plist").read_text() == "new bundle"
    assert "XCTest metrics" in (failed / "report.md").read_text()


def test_results_failing_checks_keep_the_previous_session(benchmark, tmp_path, monkeypatch, previous, capsys):
    project = fake_xcodebuild(tmp_path, monkeypatch, LOG.read_text())
    # a device log run against a simulator destination: is_simulator disagrees, so it is rejected
    assert run(benchmark, tmp_path, project, destination="platform=iOS Simulator,name=iPhone 16") == 1
    assert "kept as last-failed-run/benchmark_results.json.invalid" in capsys.readouterr().err
    assert_intact(tmp_path, previous)
    assert (tmp_path / "out" / "device" / "ios" / "last-failed-run" / "benchmark_results.json.invalid").is_file()


def test_damaged_results_block_keeps_the_previous_session(benchmark, tmp_path, monkeypatch, previous, capsys):
    cut = "\n".join(l for l in LOG.read_text().splitlines() if "CONVNETBENCH_JSON_CHUNK 2/" not in l)
    project = fake_xcodebuild(tmp_path, monkeypatch, cut)
    assert run(benchmark, tmp_path, project) == 2
    err = capsys.readouterr().err
    assert "missing chunk(s) [2]" in err and "are as they were" in err
    assert_intact(tmp_path, previous)
    assert (tmp_path / "out" / "device" / "ios" / "last-failed-run" / "xcodebuild.log").is_file()


def test_a_good_run_replaces_the_whole_session(benchmark, tmp_path, monkeypatch, previous):
    project = fake_xcodebuild(tmp_path, monkeypatch, LOG.read_text())
    assert run(benchmark, tmp_path, project) == 0
    out = tmp_path / "out" / "device" / "ios"
    assert json.loads((out / "benchmark_results.json").read_text())["started_at"] != "earlier"
    assert (out / "ConvNetBench.xcresult" / "Info.plist").read_text() == "new bundle"
    assert (out / "xcodebuild.log").read_text() == LOG.read_text()
    assert "earlier" not in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "ConvNetBench.xcresult", "benchmark_results.json", "report.md", "xcodebuild.log"]
