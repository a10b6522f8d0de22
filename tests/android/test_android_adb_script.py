"""android_demo/benchmark.py against an adb test double: command sequence, parsing,
and every error path. No phone is involved, so no number here is a measurement."""
from __future__ import annotations

import json

import pytest

from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "benchmarks" / "schemas" / "device_results.schema.json"

PKG = "com.example.mobilebench"


@pytest.fixture
def happy(fake_adb, sample_results):
    fake_adb.scenario.update(results=sample_results, results_after=2)
    fake_adb.write()
    return fake_adb


def run(bench, fake_adb, tmp_path, export_dir, *extra: str) -> int:
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK fake apk")
    argv = ["--adb", str(fake_adb.path), "--apk", str(apk), "--models", str(export_dir),
            "--out", str(tmp_path / "out"), "--poll-interval", "0.01", "--timeout", "3", *extra]
    return bench.main(argv)


def shell_cmds(calls: list[list[str]]) -> list[str]:
    return [c[3] for c in calls if c[:1] == ["-s"] and c[2] == "shell"]


# --- parsing and device selection ----------------------------------------------------

def test_parse_devices_handles_daemon_lines_and_states(bench):
    text = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
            "List of devices attached\n"
            "R58M123\tdevice\n"
            "emulator-5554\toffline\n"
            "0A1B2C\tunauthorized\n"
            "ZX1\tno permissions (user in plugdev group; are your udev rules wrong?)\n\n")
    assert bench.parse_devices(text) == [
        ("R58M123", "device"), ("emulator-5554", "offline"), ("0A1B2C", "unauthorized"),
        ("ZX1", "no permissions (user in plugdev group; are your udev rules wrong?)")]
    assert bench.parse_devices("List of devices attached\n\n") == []


def test_select_device_rules(bench):
    one = [("A", "device")]
    assert bench.select_device(one, None) == "A"
    assert bench.select_device([("A", "device"), ("B", "device")], "B") == "B"
    with pytest.raises(bench.DeviceError, match="not connected"):
        bench.select_device(one, "Z")
    with pytest.raises(bench.DeviceError, match="not usable"):
        bench.select_device([("A", "no permissions (udev)")], None)


# --- the normal run ------------------------------------------------------------------

def test_happy_path_command_sequence_and_outputs(bench, happy, tmp_path, export_dir, capsys):
    assert run(bench, happy, tmp_path, export_dir, "--warmup", "3", "--iterations", "50", "--threads", "2") == 0
    calls = happy.calls()
    assert calls[0] == ["devices"]
    assert all(c[:2] == ["-s", "FAKE123"] for c in calls[1:]), "every later call must target the device"
    verbs = [c[2] if c[2] != "shell" else c[3].split()[0] for c in calls[1:]]
    # install before pushing, push before starting, start before polling
    order = [verbs.index(v) for v in ("install", "rm", "push", "chmod", "am", "run-as")]
    assert order == sorted(order), verbs

    install = next(c for c in calls if c[2:3] == ["install"])
    assert install[3:5] == ["-r", "-t"] and install[5].endswith("app-debug.apk")
    pushed = sorted(c[3].rsplit("/", 1)[1] for c in calls if c[2:3] == ["push"])
    assert pushed == sorted(["convnet_tflite_fp32.tflite", "convnet_tflite_int8.tflite", "convnet_xnnpack_fp32.pte",
                             "convnet_xnnpack_int8.pte", "labels.txt", "models.json", "test_sample.json",
                             "test_sample.u8"])
    assert all(c[4] == f"/data/local/tmp/{PKG}/" for c in calls if c[2:3] == ["push"])

    am = next(s for s in shell_cmds(calls) if s.startswith("am start"))
    assert am.startswith(f"am start -W -S -n {PKG}/.BenchmarkActivity ")
    for extra in (f"--es model_dir /data/local/tmp/{PKG}/",
                  "--es model_files convnet_tflite_fp32.tflite,convnet_tflite_int8.tflite,"
                  "convnet_xnnpack_fp32.pte,convnet_xnnpack_int8.pte",
                  "--ei warmup 3", "--ei iterations 50",
                  "--ei threads 2", "--ez autorun true"):
        assert extra in am
    assert f"run-as {PKG} cat files/benchmark_results.json" in shell_cmds(calls)

    out = tmp_path / "out" / "device" / "android"
    doc = json.loads((out / "benchmark_results.json").read_text())
    assert doc["run_id"] in am  # the results are this run's, not a stale file
    ctx = doc["run_context"]
    assert ctx["serial"] == "FAKE123" and ctx["repeat"] == 1
    assert ctx["before"]["thermal_status_name"] == "light"
    assert ctx["before"]["battery_temp_c"] == pytest.approx(30.1)
    assert ctx["before"]["cpufreq_khz"] == {"cpu0": 1804800, "cpu4": 2419200}
    report = (out / "report.md").read_text()
    assert "| convnet_tflite_int8.tflite | litert | int8 | 5.331 | 0.912 | 0.244 |" in report
    assert "error: ExecutorchRuntimeException" in report
    printed = capsys.readouterr()
    assert "| convnet_xnnpack_fp32.pte | executorch |" in printed.out
    assert "1 model run(s) ended in an error row" in printed.err


def test_adb_from_environment_and_serial_from_android_serial(bench, fake_adb, sample_results, tmp_path,
                                                             export_dir, monkeypatch):
    fake_adb.scenario.update(devices="List of devices attached\nAAA\tdevice\nBBB\tdevice\n",
                             results=sample_results)
    fake_adb.write()
    monkeypatch.setenv("ADB", str(fake_adb.path))
    monkeypatch.setenv("ANDROID_SERIAL", "BBB")
    apk = tmp_path / "app.apk"
    apk.write_bytes(b"PK")
    rc = bench.main(["--apk", str(apk), "--models", str(export_dir), "--out", str(tmp_path / "o"),
                     "--poll-interval", "0.01", "--timeout", "3", "--no-device-state"])
    assert rc == 0
    calls = fake_adb.calls()
    assert calls and all(c[:2] == ["-s", "BBB"] for c in calls[1:])
    assert not [s for s in shell_cmds(calls) if "thermalservice" in s]


def test_repeat_keeps_every_run(bench, happy, tmp_path, export_dir):
    stale = tmp_path / "out" / "device" / "android" / "benchmark_results.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    assert run(bench, happy, tmp_path, export_dir, "--repeat", "3") == 0
    out = tmp_path / "out" / "device" / "android"
    assert sorted(p.name for p in out.glob("*.json")) == [
        "benchmark_results_run1.json", "benchmark_results_run2.json", "benchmark_results_run3.json"]
    ids = {json.loads(p.read_text())["run_id"] for p in out.glob("*.json")}
    assert len(ids) == 3
    assert len([s for s in shell_cmds(happy.calls()) if s.startswith("am start")]) == 3
    report = (out / "report.md").read_text()
    assert "## Run 3 of 3" in report and "## Across runs" in report
    assert "| convnet_tflite_int8.tflite | litert | 3/3 | 0.244 |" in report


def test_stale_results_file_is_not_taken_for_this_run(bench, fake_adb, sample_results, tmp_path, export_dir):
    fake_adb.scenario.update(results=sample_results, results_after=3, stale_first=True)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 0
    cats = [s for s in shell_cmds(fake_adb.calls()) if s.startswith("run-as")]
    assert len(cats) >= 3


def test_no_push_uses_bundled_assets(bench, happy, tmp_path, export_dir):
    assert run(bench, happy, tmp_path, export_dir, "--no-push", "--no-install") == 0
    calls = happy.calls()
    assert not [c for c in calls if c[2:3] in (["push"], ["install"])]
    am = next(s for s in shell_cmds(calls) if s.startswith("am start"))
    assert "model_dir" not in am and "model_files" not in am
    assert f"pm path {PKG}" in shell_cmds(calls)


# --- error paths ---------------------------------------------------------------------

@pytest.mark.parametrize("devices, code, words", [
    ("List of devices attached\n\n", 2, ["no device found", "USB debugging"]),
    ("List of devices attached\nAAA\tdevice\nBBB\tdevice\n", 2, ["2 devices", "AAA", "BBB", "-s SERIAL"]),
    ("List of devices attached\nAAA\tunauthorized\n", 2, ["unauthorized", "Allow USB debugging"]),
    ("List of devices attached\nAAA\toffline\n", 2, ["offline", "adb kill-server"]),
])
def test_device_errors(bench, fake_adb, tmp_path, export_dir, capsys, devices, code, words, monkeypatch):
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    fake_adb.scenario.update(devices=devices)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == code
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert fake_adb.calls() == [["devices"]], "nothing may run on an unusable device"


def test_unknown_serial(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir, "-s", "NOPE") == 2
    assert "NOPE is not connected; adb sees: FAKE123 (device)" in capsys.readouterr().err


def test_timeout_when_results_never_come(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.scenario.update(results=None, logcat="I/MobileBench( 123): start run_id=x\n")
    fake_adb.write()
    apk = tmp_path / "a.apk"
    apk.write_bytes(b"PK")
    rc = bench.main(["--adb", str(fake_adb.path), "--apk", str(apk), "--models", str(export_dir),
                     "--out", str(tmp_path / "o"), "--poll-interval", "0.05", "--timeout", "0.5"])
    assert rc == 4
    err = capsys.readouterr().err
    assert "no results after 0 s" in err or "no results after 1 s" in err
    assert "I/MobileBench( 123): start run_id=x" in err
    assert not list((tmp_path / "o" / "device" / "android").glob("*.json"))


def test_app_crash_shows_logcat(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.scenario.update(
        results=None, dies_after=2,
        logcat_crash=("--------- beginning of crash\n"
                      "E/AndroidRuntime( 4242): FATAL EXCEPTION: benchmark\n"
                      "E/AndroidRuntime( 4242): java.lang.UnsatisfiedLinkError: dlopen failed: "
                      "library \"libexecutorch.so\" not found\n"),
        logcat="F/libc    ( 4242): Fatal signal 11 (SIGSEGV), code 1 (SEGV_MAPERR)\n")
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 3
    err = capsys.readouterr().err
    assert "the app process died before writing its results" in err
    assert "FATAL EXCEPTION: benchmark" in err and "libexecutorch.so" in err
    assert "Fatal signal 11 (SIGSEGV)" in err
    assert "--------- beginning of crash" not in err
    logcats = [c for c in fake_adb.calls() if c[2:3] == ["logcat"] and "-d" in c]
    assert any("crash" in c for c in logcats)


def test_activity_start_error(bench, fake_adb, sample_results, tmp_path, export_dir, capsys):
    fake_adb.scenario.update(results=sample_results,
                             am_start="Starting: Intent { cmp=x }\nError type 3\n"
                                      "Error: Activity class {com.example.mobilebench/.BenchmarkActivity} "
                                      "does not exist.\n")
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 1
    assert "am start failed" in capsys.readouterr().err


def test_install_failure_gives_hint(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.scenario.update(install="Performing Streamed Install\nadb: failed to install app.apk: "
                                     "Failure [INSTALL_FAILED_UPDATE_INCOMPATIBLE: signatures do not match]\n")
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 1
    err = capsys.readouterr().err
    assert "INSTALL_FAILED_UPDATE_INCOMPATIBLE" in err and f"adb uninstall {PKG}" in err


def test_release_build_cannot_be_read(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.scenario.update(results=None, run_as_error=f"run-as: package not debuggable: {PKG}\n")
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 1
    assert "not debuggable" in capsys.readouterr().err


def test_missing_apk_and_models(bench, fake_adb, tmp_path, export_dir, capsys):
    fake_adb.write()
    rc = bench.main(["--adb", str(fake_adb.path), "--apk", str(tmp_path / "none.apk"),
                     "--models", str(export_dir), "--out", str(tmp_path / "o")])
    assert rc == 1 and "./gradlew assembleDebug" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = bench.main(["--adb", str(fake_adb.path), "--no-install", "--models", str(empty),
                     "--out", str(tmp_path / "o")])
    assert rc == 1 and "make export-android" in capsys.readouterr().err


def test_missing_adb_binary(bench, tmp_path, export_dir, capsys):
    rc = bench.main(["--adb", str(tmp_path / "no-adb-here"), "--models", str(export_dir)])
    assert rc == 1
    assert "adb not found" in capsys.readouterr().err


def test_invalid_results_are_rejected_and_kept_aside(bench, fake_adb, sample_results, tmp_path,
                                                     export_dir, capsys):
    del sample_results["results"][0]["metrics"]["ram_pss_usage(mb)"]
    fake_adb.scenario.update(results=sample_results)
    fake_adb.write()
    assert run(bench, fake_adb, tmp_path, export_dir) == 1
    err = capsys.readouterr().err
    assert "results/0/metrics: 'ram_pss_usage(mb)' is a required property" in err
    out = tmp_path / "out" / "device" / "android"
    assert not list(out.glob("*.json"))
    assert (out / "benchmark_results.json.invalid").is_file()


def test_help_runs_as_a_script():
    import subprocess
    import sys
    ANDROID = Path(__file__).resolve().parents[2] / "android_demo"
    r = subprocess.run([sys.executable, str(ANDROID / "benchmark.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "ANDROID_SERIAL" in r.stdout and "--repeat" in r.stdout
    assert SCHEMA.name in r.stdout
