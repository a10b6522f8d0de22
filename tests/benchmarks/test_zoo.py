"""benchmarks/zoo.py: the conformance table of networks x runtimes, read from real OUTs (the full zoo is a
benchmark, `make zoo`, not a test)."""

import json
import shutil

from benchmarks import zoo


def _copy(source, tmp_path, name="convnet"):
    out = tmp_path / "root" / name
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("bench", "parity", "*.png"))
    return out


def test_every_file_kind_gets_a_cell_and_a_verified_network_counts(tiny_out, tmp_path):
    out = _copy(tiny_out, tmp_path)
    row = zoo.network_row("convnet", out)
    manifest = json.loads((out / "manifest.json").read_text())
    made = {(a["backend"], a["quant"]) for a in manifest["artifacts"].values()}
    assert len(made) == len(zoo.file_cells())  # the fixture made every kind a default export makes
    passed = all(a["verification"]["passed"] for a in manifest["artifacts"].values())
    assert row["verified"] == sum(a["verification"]["passed"] for a in manifest["artifacts"].values())
    assert row["all_verified"] == (passed and row["parity"]["state"] == "ok")
    assert row["parity"]["text"].startswith(("identical on", "within"))
    assert row["accuracy"]["fp32"] == manifest["accuracy"]["fp32"]


def test_a_failed_backend_and_a_failed_check_each_get_their_one_line_cause(tiny_out, tmp_path):
    out = _copy(tiny_out, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for file in [f for f, a in manifest["artifacts"].items() if a["backend"] == "coreml" and a["quant"] != "fp16"]:
        del manifest["artifacts"][file]
    manifest["backends"]["coreml:int8"] = {"status": "failed", "reason": "coremltools: op 'foo' of layer blocks.3 "
                                           "is not supported\n" + "x" * 400}
    tfl = next(f for f, a in manifest["artifacts"].items() if a["backend"] == "tflite" and a["quant"] == "int8")
    manifest["artifacts"][tfl]["verification"] = {"passed": False, "failures": ["top-1 agreement 90.00% < 99.50%"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    row = zoo.network_row("convnet", out)
    w8a8, pal = row["cells"]["Core ML W8A8"], row["cells"]["Core ML palettized"]
    assert w8a8["state"] == pal["state"] == "missing"
    assert w8a8["cause"].startswith("failed: coremltools: op 'foo' of layer blocks.3") and len(w8a8["cause"]) <= 160
    assert "\n" not in w8a8["cause"]
    assert row["cells"][".tflite int8"] == {**row["cells"][".tflite int8"], "state": "failed",
                                            "cause": "top-1 agreement 90.00% < 99.50%"}
    assert not row["all_verified"]
    text = zoo.markdown([row], {"command": "python -m benchmarks.zoo", "host": "test", "flags": "--image-size 64"})
    assert "**0 of 1 networks**" in text
    assert "- convnet, .tflite int8: top-1 agreement 90.00% < 99.50%" in text
    assert "- convnet, Core ML W8A8: failed: coremltools: op 'foo'" in text


def test_a_finished_run_with_the_same_flags_is_reused_and_other_flags_rerun(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(zoo, "cli", lambda command, *args: calls.append(command) or (0, 0.5))
    out = tmp_path / "net"
    zoo.run_network("timm:tiny", out, ["--image-size", "64"], rerun=False)
    assert calls == ["train", "qat", "export"]
    state = json.loads((out / zoo.STATE).read_text())
    assert state["finished"] and state["codes"] == {"train": 0, "qat": 0, "export": 0}
    zoo.run_network("timm:tiny", out, ["--image-size", "64"], rerun=False)
    assert calls == ["train", "qat", "export"]  # reused
    zoo.run_network("timm:tiny", out, ["--image-size", "32"], rerun=False)
    assert calls[3:] == ["train", "qat", "export"]
    # a stage that fails stops the network's run (export's exit 1 is a verdict the table reads, not a stop)
    monkeypatch.setattr(zoo, "cli", lambda command, *args: calls.append(command) or (1, 0.5))
    zoo.run_network("timm:tiny", out, ["--image-size", "16"], rerun=False)
    assert calls[6:] == ["train"]
    row = zoo.network_row("timm:tiny", out)
    assert row["cells"][".pte int8"]["cause"] == "train exited 1" and row["verified"] == 0


def test_a_model_the_chance_gate_refused_names_that_cause_in_every_cell(tiny_out, tmp_path):
    """A network that did not learn in the zoo's budget (mobileone_s0: 27 of 200) is refused by train's chance gate;
    its OUT has a manifest but no files, and each cell says why rather than "not made"."""
    out = _copy(tiny_out, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"], manifest["backends"], manifest["parity"] = {}, {}, {}
    manifest["stages"]["train"]["better_than_chance"] = {"correct": 27, "images": 200, "classes": 10, "chance": 0.1,
                                                         "p_value": 0.0672, "alpha": 0.01, "passed": False}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / zoo.STATE).write_text(json.dumps({"codes": {"train": 2}, "finished": True}))
    row = zoo.network_row("timm:slow_learner", out)
    causes = {c["cause"] for c in row["cells"].values()}
    assert len(causes) == 1 and row["verified"] == 0
    assert causes.pop().startswith("train refused: the fp32 model is not significantly better than chance: 27 of 200")


def test_merge_keeps_earlier_rows_of_the_same_flags_each_with_its_command(tiny_out, tmp_path, capsys):
    """A table built over sittings whose OUTs are gone: --merge keeps the earlier table's other networks (same
    flags), names the command that made each, and drops rows made with other flags, saying so."""
    root, results = tmp_path / "root", tmp_path / "results"
    _copy(tiny_out, tmp_path, zoo.slug("first"))
    _copy(tiny_out, tmp_path, zoo.slug("second"))
    flags = "--image-size 64"
    assert zoo.main(["--networks", "first", "--root", str(root), "--results", str(results), "--flags", flags,
                     "--collect-only"]) in (0, 1)
    zoo.main(["--networks", "second", "--root", str(root), "--results", str(results), "--flags", flags,
              "--collect-only", "--merge"])
    table = json.loads((results / "zoo.json").read_text())
    assert [r["model"] for r in table["rows"]] == ["first", "second"]
    assert "--networks first" in table["rows"][0]["command"] and "--networks second" in table["rows"][1]["command"]
    text = (results / "zoo.md").read_text()
    assert "(first)" in text and "(second)" in text and "of 2 networks**" in text
    # without --merge the table holds this run's networks only
    zoo.main(["--networks", "second", "--root", str(root), "--results", str(results), "--flags", flags,
              "--collect-only"])
    assert [r["model"] for r in json.loads((results / "zoo.json").read_text())["rows"]] == ["second"]
    # rows made with other flags are not comparable: dropped, with a line that says so
    zoo.main(["--networks", "first", "--root", str(root), "--results", str(results), "--flags", flags,
              "--collect-only"])
    capsys.readouterr()
    zoo.main(["--networks", "second", "--root", str(root), "--results", str(results), "--flags", "--image-size 32",
              "--collect-only", "--merge"])
    assert [r["model"] for r in json.loads((results / "zoo.json").read_text())["rows"]] == ["second"]
    assert "made with other flags" in capsys.readouterr().out


def test_a_network_that_needs_its_own_training_flag_gets_it_and_the_table_says_so(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(zoo, "cli", lambda command, *args: seen.append(args) or (0, 0.5))
    monkeypatch.setitem(zoo.NETWORK_FLAGS, "timm:slow", ("--lr 3e-4", "stays at chance at 1e-3"))
    out = tmp_path / "slow"
    zoo.run_network("timm:slow", out, ["--image-size", "64", "--lr", "1e-3"], rerun=False)
    assert all(args[-2:] == ("--lr", "3e-4") for args in seen)  # after the common flags: it wins
    row = zoo.network_row("timm:slow", out)
    assert row["extra_flags"] == ["--lr 3e-4", "stays at chance at 1e-3"]
    text = zoo.markdown([row], {"command": "python -m benchmarks.zoo", "host": "test", "flags": "--image-size 64"})
    assert "| timm:slow (`--lr 3e-4`) |" in text and "- timm:slow: `--lr 3e-4`: stays at chance at 1e-3" in text
    # a run made before the flag was added does not claim it
    monkeypatch.setitem(zoo.NETWORK_FLAGS, "timm:slow", ("--lr 1e-4", "another"))
    assert zoo.network_row("timm:slow", out)["extra_flags"] is None


def test_a_core_ml_file_whose_accuracy_fell_below_its_reference_is_not_called_faithful():
    """Near ties that change sides leave accuracy where it was (`≈`); timm hgnetv2_b0's fp16 file read back at
    32.5% against its network's 86.5% is a wrong file or a wrong read-back, not a cost (`✗`)."""
    def artifact(outcome):
        return {"backend": "coreml", "quant": "fp16", "verification": {"passed": False, "verdicts": [
            {"name": "agreement with fp32", "outcome": "fail"},
            {"name": "accuracy drop vs fp32", "outcome": outcome}]}}

    assert zoo._faithful({}, artifact("inconclusive"))
    assert zoo._faithful({}, artifact("pass"))
    assert not zoo._faithful({}, artifact("fail"))
