"""The compile-and-package check (make android-check) on the real sources and on
broken copies. It proves the app compiles and packages, not that it runs."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

ANDROID = Path(__file__).resolve().parents[2] / "android_demo"

RUNNER = Path("app/src/main/java/com/example/mobilebench/ExecuTorchRunner.java")
LITERT = Path("app/src/main/java/com/example/mobilebench/LiteRtRunner.java")


def copy_sources(dest: Path) -> Path:
    """The parts of android_demo the check reads, without build outputs or models."""
    root = dest / "android_demo"
    shutil.copytree(ANDROID / "app" / "src", root / "app" / "src",
                    ignore=shutil.ignore_patterns("*.pte", "*.tflite", "*.u8"))
    shutil.copy(ANDROID / "app" / "build.gradle.kts", root / "app" / "build.gradle.kts")
    shutil.copytree(ANDROID / "compile_stubs", root / "compile_stubs")
    return root


def inject(root: Path, rel: Path, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}; update the test"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def real_check(check_build, toolchain, tmp_path_factory):
    lines: list[str] = []
    result = check_build.run_check(ANDROID, tmp_path_factory.mktemp("check"), toolchain, log=lines.append)
    return result, lines


def test_real_sources_compile_and_package(real_check):
    result, lines = real_check

    assert result.apk.is_file() and result.apk_bytes > 10_000
    assert "package: name='com.example.mobilebench'" in result.badging
    assert "launchable-activity: name='com.example.mobilebench.BenchmarkActivity'" in result.badging
    assert all(line.startswith("[✓]") for line in lines), lines
    # Only app classes are dexed: no ExecuTorch classes, no LiteRT stubs.
    assert result.dex_classes and all(c.startswith("Lcom/example/mobilebench/") for c in result.dex_classes)
    assert "Lcom/example/mobilebench/ExecuTorchRunner;" in result.dex_classes
    with zipfile.ZipFile(result.apk) as z:
        names = z.namelist()
    assert "classes.dex" in names and "AndroidManifest.xml" in names
    assert not [n for n in names if n.endswith(".class") or n.endswith(".so")]


def test_broken_api_calls_fail_the_check(check_build, toolchain, tmp_path):
    """Misuse of the real ExecuTorch API (classes.jar) and of the LiteRT stubs: javac reports both."""
    root = copy_sources(tmp_path)
    inject(root, RUNNER, "Module.load(model.getAbsolutePath(), Module.LOAD_MODE_FILE, threads)", "Module.load(42)")
    inject(root, LITERT, "options.setNumThreads(threads);", 'options.setNumThreads("four");')
    # LiteRT's DataType has no FLOAT16 (the stubs must not invent one)
    inject(root, LITERT, "if (inType == DataType.FLOAT32) {", "if (inType == DataType.FLOAT16) {")
    with pytest.raises(check_build.CheckError) as err:
        check_build.run_check(root, tmp_path / "work", toolchain, log=lambda _: None)
    assert err.value.step == "javac app"
    message = err.value.message
    assert "ExecuTorchRunner.java" in message and "Module.load(42)" in message
    assert "incompatible types: int cannot be converted to String" in message
    assert "LiteRtRunner.java" in message and 'setNumThreads("four")' in message
    assert "symbol:   variable FLOAT16" in message
    assert not (tmp_path / "work" / "classes.dex").exists()


def test_lambda_is_rejected_against_android_23(check_build, toolchain, tmp_path):
    if toolchain.api_level != 23:
        pytest.skip(f"lambdas compile against android-{toolchain.api_level}.jar ({toolchain.source}); "
                    "only android-23.jar lacks java.lang.invoke")
    root = copy_sources(tmp_path)
    inject(root, RUNNER, "        outputs = module.forward(input);",
           "        Runnable r = () -> { };\n        outputs = module.forward(input);")
    with pytest.raises(check_build.CheckError) as err:
        check_build.run_check(root, tmp_path / "work", toolchain, log=lambda _: None)
    assert "MethodHandles" in err.value.message or "LambdaMetafactory" in err.value.message


def test_bad_manifest_fails_at_link(check_build, toolchain, tmp_path):
    root = copy_sources(tmp_path)
    inject(root, Path("app/src/main/AndroidManifest.xml"), "@string/app_name", "@string/no_such_string")
    with pytest.raises(check_build.CheckError) as err:
        check_build.run_check(root, tmp_path / "work", toolchain, log=lambda _: None)
    assert err.value.step == "aapt2 link"
    assert "no_such_string" in err.value.message


def test_missing_toolchain_says_what_to_run(check_build, tmp_path):
    with pytest.raises(check_build.CheckError) as err:
        check_build.run_check(ANDROID, tmp_path / "work", tmp_path / "empty-toolchain", log=lambda _: None)
    assert err.value.step == "toolchain"
    assert "make android-toolchain" in err.value.message


def test_dex_parser_reads_defined_classes_only(check_build, real_check):
    result, _ = real_check
    with zipfile.ZipFile(result.apk) as z:
        dex = z.read("classes.dex")
    assert b"Lorg/pytorch/executorch/Module;" in dex  # referenced...
    assert "Lorg/pytorch/executorch/Module;" not in check_build.dex_defined_classes(dex)  # ...not defined
    with pytest.raises(ValueError):
        check_build.dex_defined_classes(b"PK\x03\x04 not a dex")
