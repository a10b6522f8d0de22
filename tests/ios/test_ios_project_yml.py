"""project.yml is a usable XcodeGen spec, and --require-resources sees what export-ios staged."""
import json
import plistlib
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IOS_DEMO = REPO / "ios_demo"


@pytest.fixture()
def spec(check_swift):
    return check_swift.load_project(IOS_DEMO / "project.yml")


def test_project_yml_is_valid(check_swift, spec):
    assert check_swift.validate_project(spec, IOS_DEMO) == []


def test_app_bundles_the_resources_folder_and_tests_run_hosted(spec):
    app = spec["targets"]["ConvNetBench"]
    paths = [s if isinstance(s, str) else s["path"] for s in app["sources"]]
    assert "Resources" in paths
    tests = spec["targets"]["ConvNetBenchTests"]
    assert tests["type"] == "bundle.unit-test"
    assert {"target": "ConvNetBench"} in tests["dependencies"]
    assert "ConvNetBench.app" in tests["settings"]["base"]["TEST_HOST"]
    assert spec["schemes"]["ConvNetBench"]["test"]["targets"] == ["ConvNetBenchTests"]


def test_executorch_package_matches_the_python_pin(check_swift, spec):
    assert check_swift.executorch_pin_problems(spec, REPO / "requirements.lock") == []
    products = {d["product"] for d in spec["targets"]["ConvNetBench"]["dependencies"] if "package" in d}
    assert {"executorch", "backend_xnnpack", "kernels_optimized"} <= products
    assert "-all_load" in spec["targets"]["ConvNetBench"]["settings"]["base"]["OTHER_LDFLAGS"]


def test_pin_check_fails_on_a_wrong_branch(check_swift, spec, tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("executorch==9.9.9\n")
    assert check_swift.executorch_pin_problems(spec, lock)


@pytest.mark.parametrize("breakage", [
    lambda s: s.pop("targets"),
    lambda s: s["targets"]["ConvNetBench"].pop("platform"),
    lambda s: s["targets"]["ConvNetBench"]["dependencies"].append({"package": "Nope", "product": "x"}),
    lambda s: s["targets"]["ConvNetBench"].update(sources=["ConvNetBench"]),
    lambda s: s["packages"]["ExecuTorch"].pop("branch"),
    lambda s: s["schemes"]["ConvNetBench"]["test"].update(targets=["Missing"]),
], ids=["no-targets", "no-platform", "undeclared-package", "no-resources", "no-version", "bad-scheme"])
def test_validation_catches_broken_specs(check_swift, spec, breakage):
    breakage(spec)
    assert check_swift.validate_project(spec, IOS_DEMO)


def test_invalid_yaml_is_reported(check_swift, tmp_path):
    bad = tmp_path / "project.yml"
    bad.write_text("name: X\ntargets: [unclosed\n")
    with pytest.raises(ValueError):
        check_swift.load_project(bad)


def stage_resources(root: Path, channels=1, size=28, count=4):
    """What `make export-ios` would copy, with fake model bytes."""
    res = root / "Resources"
    package = res / "convnet_coreml_pal4.mlpackage"
    (package / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    (res / "convnet_xnnpack_int8.pte").write_bytes(b"fake")
    (res / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    (res / "test_sample.u8").write_bytes(bytes(count * channels * size * size))
    (res / "test_sample.json").write_text(json.dumps({
        "count": count, "shape": [channels, size, size], "dtype": "uint8",
        "pixels": "test_sample.u8", "labels": [0, 1, 2, 3][:count]}))
    tensor = {"shape": [1, channels, size, size], "layout": "NCHW", "dtype": "float32",
              "mean": [0.1307], "std": [0.3081], "scale": None, "zero_point": None}
    (res / "models.json").write_text(json.dumps({"schema_version": 1, "models": [
        {"file": "convnet_coreml_pal4.mlpackage", "backend": "coreml", "quant": "pal4", "input": tensor,
         "output": {"shape": [1, 10], "dtype": "float32", "scale": None, "zero_point": None}},
        {"file": "convnet_xnnpack_int8.pte", "backend": "executorch", "quant": "int8", "input": tensor,
         "output": {"shape": [1, 10], "dtype": "float32", "scale": None, "zero_point": None}},
        {"file": "convnet_int8.tflite", "backend": "tflite", "quant": "int8", "input": tensor,
         "output": {"shape": [1, 10], "dtype": "float32", "scale": None, "zero_point": None}},
    ]}))
    return res


def test_require_resources_fails_before_export(check_swift, ios_copy, capsys):
    assert check_swift.main(["--root", str(ios_copy), "--require-resources"]) == 1
    assert "models.json: missing" in capsys.readouterr().out


def test_require_resources_passes_after_staging(check_swift, ios_copy, capsys):
    stage_resources(ios_copy)
    assert check_swift.main(["--root", str(ios_copy), "--require-resources"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("damage", [
    lambda res: (res / "convnet_xnnpack_int8.pte").unlink(),
    lambda res: (res / "convnet_coreml_pal4.mlpackage" / "Manifest.json").unlink(),
    lambda res: (res / "test_sample.u8").write_bytes(b"short"),
    lambda res: (res / "labels.txt").unlink(),
], ids=["no-pte", "not-an-mlpackage", "wrong-pixel-count", "no-labels"])
def test_require_resources_catches_damage(check_swift, ios_copy, damage):
    damage(stage_resources(ios_copy))
    assert check_swift.resource_problems(ios_copy)
    assert check_swift.main(["--root", str(ios_copy), "--require-resources"]) == 1


def test_gitignore_keeps_generated_resources_out(tmp_path):
    rules = (IOS_DEMO / ".gitignore").read_text().split()
    assert "Resources/*" in rules and "!Resources/.gitkeep" in rules
    assert (IOS_DEMO / "Resources" / ".gitkeep").exists()
    assert yaml.safe_load((IOS_DEMO / "project.yml").read_text())["targets"]["ConvNetBench"]["sources"][1]["excludes"] == [".gitkeep"]


# --- the ExecuTorch Swift package pin ----------------------------------------------------

def pin(spec, **ref):
    spec["packages"]["ExecuTorch"].pop("branch", None)
    spec["packages"]["ExecuTorch"].update(ref)
    return spec


def test_the_pinned_branch_is_one_seen_to_exist(check_swift, spec):
    import executorch_pin  # ios_demo/ is on sys.path once check_swift is loaded

    branch = spec["packages"]["ExecuTorch"]["branch"]
    assert branch in executorch_pin.SEEN_SWIFTPM_REFS and branch != "swiftpm-1.5.1"


@pytest.mark.parametrize("ref, words", [
    ({"branch": "swiftpm-1.5.1"}, ["'swiftpm-1.5.1' was not seen", "git ls-remote"]),
    ({"branch": "swiftpm-1.4.1"}, ["not an ExecuTorch 1.5.x package", "executorch==1.5.1"]),
    ({"revision": "0123456789abcdef0123456789abcdef01234567"}, ["was not seen"]),
    ({}, ["pin a `branch:` or `revision:`"]),
    ({"branch": "swiftpm-1.5.0.20260822", "product": "backend_metal"}, ["no product 'backend_metal'"]),
], ids=["no-such-branch", "older-minor", "unknown-revision", "no-pin", "unknown-product"])
def test_pin_check_rejects(check_swift, spec, ref, words):
    ref = dict(ref)
    product = ref.pop("product", None)
    if product:
        spec["targets"]["ConvNetBench"]["dependencies"].append({"package": "ExecuTorch", "product": product})
    problems = " ".join(check_swift.executorch_pin_problems(pin(spec, **ref), REPO / "requirements.lock"))
    for w in words:
        assert w in problems


def test_pin_by_revision_of_a_seen_branch_is_accepted(check_swift, spec):
    spec = pin(spec, revision="9e89536b5e5ee83c71cc26571d51f65c3ef40ec5")
    assert check_swift.executorch_pin_problems(spec, REPO / "requirements.lock") == []


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd,
                   check=True, capture_output=True, text=True)


@pytest.mark.parametrize("has_branch", [True, False])
def test_remote_check_asks_git_ls_remote(check_swift, spec, tmp_path, has_branch):
    remote = tmp_path / "executorch"
    remote.mkdir()
    git(remote, "init", "-q", "-b", "main")
    git(remote, "commit", "-q", "--allow-empty", "-m", "Package.swift")
    if has_branch:
        git(remote, "branch", spec["packages"]["ExecuTorch"]["branch"])
    problems = check_swift.remote_pin_problems(spec, url=str(remote))
    if has_branch:
        assert problems == []
    else:
        assert problems and "has no branch swiftpm-" in problems[0]


# --- file sharing in the real Info.plist ---------------------------------------------

def test_file_sharing_is_in_the_xcodegen_info_plist(check_swift, spec):
    assert check_swift.file_sharing_problems(IOS_DEMO / "project.yml") == []
    info = spec["targets"]["ConvNetBench"]["info"]
    assert info["path"] == "ConvNetBench/Info.plist"
    # what XcodeGen writes: real booleans, not the string "YES"
    plist = plistlib.loads(plistlib.dumps(info["properties"]))
    assert plist["UIFileSharingEnabled"] is True and plist["LSSupportsOpeningDocumentsInPlace"] is True
    settings = spec["targets"]["ConvNetBench"]["settings"]["base"]
    assert not [k for k in settings if k.startswith("INFOPLIST_KEY_") and "FileSharing" in k]
    assert "ConvNetBench/Info.plist" in (IOS_DEMO / ".gitignore").read_text().split()


@pytest.mark.parametrize("old, new, words", [
    ("UIFileSharingEnabled: true", "UIFileSharingEnabled: YES", ["UIFileSharingEnabled: must be `true` (is YES)"]),
    ("        LSSupportsOpeningDocumentsInPlace: true\n", "", ["LSSupportsOpeningDocumentsInPlace: must be `true`"]),
    ("      path: ConvNetBench/Info.plist\n", "", ["needs `path:` and `properties:`"]),
    ("        INFOPLIST_KEY_UIApplicationSceneManifest_Generation: YES\n",
     "        INFOPLIST_KEY_UIApplicationSceneManifest_Generation: YES\n"
     "        INFOPLIST_KEY_UIFileSharingEnabled: YES\n", ["drop INFOPLIST_KEY_UIFileSharingEnabled"]),
], ids=["YES-string", "missing-key", "no-path", "build-setting"])
def test_file_sharing_check_catches(check_swift, tmp_path, old, new, words):
    text = (IOS_DEMO / "project.yml").read_text()
    assert old in text
    broken = tmp_path / "project.yml"
    broken.write_text(text.replace(old, new, 1))
    problems = " ".join(check_swift.file_sharing_problems(broken))
    for w in words:
        assert w in problems
