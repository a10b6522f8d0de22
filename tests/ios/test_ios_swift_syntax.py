"""Every Swift file parses with tree-sitter-swift, and the checker catches a broken one."""
import subprocess
import sys
from pathlib import Path

import pytest

IOS_DEMO = Path(__file__).resolve().parents[2] / "ios_demo"

SWIFT_FILES = sorted(p for p in IOS_DEMO.rglob("*.swift"))
EXPECTED = {
    "BenchmarkApp.swift", "ContentView.swift", "Benchmark.swift", "CoreMLRunner.swift",
    "ExecuTorchRunner.swift", "TestSample.swift", "ModelSpec.swift", "MemoryProbe.swift",
    "ResultsWriter.swift", "DeviceInfo.swift", "BenchmarkTests.swift", "MeasureTests.swift",
}


def test_the_app_and_its_tests_are_there():
    assert EXPECTED <= {p.name for p in SWIFT_FILES}


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: p.name)
def test_swift_file_parses_clean(check_swift, path):
    assert check_swift.syntax_problems(path) == []


def _inject(path, old, new):
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path.name}"
    line = text[:text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new))
    return line


def _run_checker(root):
    return subprocess.run([sys.executable, str(root / "check_swift.py"), "--root", str(root)],
                          capture_output=True, text=True)


def test_checker_reports_missing_paren_with_file_and_line(ios_copy):
    target = ios_copy / "ConvNetBench" / "Benchmark.swift"
    line = _inject(target, "Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000",
                   "Double(DispatchTime.now().uptimeNanoseconds / 1_000_000")
    result = _run_checker(ios_copy)
    assert result.returncode == 1, result.stdout
    assert f"Benchmark.swift:{line}:" in result.stdout
    assert "MISSING )" in result.stdout


def test_checker_reports_missing_brace_in_its_file(ios_copy, check_swift):
    target = ios_copy / "ConvNetBench" / "TestSample.swift"
    line = _inject(target, "var imageSize: Int { channels * height * width }",
                   "var imageSize: Int { channels * height * width")
    result = _run_checker(ios_copy)
    assert result.returncode == 1, result.stdout
    assert "TestSample.swift:" in result.stdout
    problems = check_swift.syntax_problems(target)
    assert problems and all(p.line >= line for p in problems)
    clean = [p for p in (ios_copy / "ConvNetBench").glob("*.swift") if p.name != "TestSample.swift"]
    assert all(check_swift.syntax_problems(p) == [] for p in clean)


def test_checker_passes_on_the_untouched_copy(ios_copy):
    result = _run_checker(ios_copy)
    assert result.returncode == 0, result.stdout
