"""A runtime is one `Converter` subclass and one registry line: a fake backend goes through `schemes`, export,
verify, the report and the bench without any other change."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core import config
from core import io as atomic
from core import manifest as mf
from core.export_check import MAX_BATCH
from core.schemes import Scheme, Support
from converters import REGISTRY, Artifact, Converter, register
from converters.base import float_input_spec, float_output_spec
from pipeline import cli


class FakeConverter(Converter):
    """Writes the torch.export program of the model it was given (dynamic batch); its "runtime" loads that file and
    runs it in PyTorch. Enough to see every part of the pipeline take a backend only from what it says of itself
    (the bench measures it in a fresh process, which finds this class through `converters.origin`)."""

    name = "fake"
    display_name = "Fake runtime"
    format = "fake"
    packages = ()
    settings = ()
    runtime_modules = ("torchao.quantization",)  # the quantized program's ops
    thread_control = "fake: torch.set_num_threads(n)"
    takes_threads = True

    def support(self, scheme: Scheme) -> Support:
        if scheme.activations == "static" and scheme.weight_bits == 8:
            return Support(self.name, True, "the PT2E graph's program")
        return Support(self.name, False, reason="the fake runtime takes static int8 only")

    def export_baseline(self, source, out: Path, options) -> list[Artifact]:
        return [self._write(source.fp32_model, f"{source.model_name}_fake_fp32.fake", "fp32", "fp32", None, source, out)]

    def export_scheme(self, source, out: Path, options) -> list[Artifact]:
        self.require_support(source.scheme)
        return [self._write(source.program, f"{source.model_name}_fake_{source.scheme.tag}.fake", source.scheme.tag,
                            "quantized", source.scheme, source, out)]

    def _write(self, model, file, quant, reference, scheme, source, out) -> Artifact:
        start = time.perf_counter()
        program = torch.export.export(model, (torch.zeros(2, *source.input_shape),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic.atomic_write(out / file, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        spec = {**float_input_spec(source, MAX_BATCH), "dynamic_batch": True}
        return Artifact(file, self.name, quant, self.format, reference, spec, float_output_spec(source), {},
                        time.perf_counter() - start, scheme.describe() if scheme else None)

    def runner(self, path: Path, artifact: dict, source, threads: int = 1):
        import torchao.quantization  # noqa: F401  (the quantized program's ops)

        model = torch.export.load(io.BytesIO(Path(path).read_bytes())).module()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

        return run, "fake runtime (its torch.export program in PyTorch)"

    def batch_support(self, artifact: dict, batch: int) -> str | None:
        return None if batch <= artifact["input"]["shape"][0] else f"batch up to {artifact['input']['shape'][0]} only"

    def set_threads(self, n: int) -> dict:
        return {"fake_threads": torch.get_num_threads()}

    def threads_note(self, reported: list[dict]) -> str | None:
        seen = sorted({f"asked {t['threads']}, got {t['fake_threads']}" for t in reported if "fake_threads" in t})
        return f"Fake runtime read back: {'; '.join(seen)}." if seen else None

    def placement(self, artifact: dict) -> tuple[str, str]:
        return "every op in the fake runtime", "none"


@pytest.fixture
def fake_backend():
    names = list(config.BACKENDS)
    register(FakeConverter())  # the one registry line
    yield REGISTRY["fake"]
    REGISTRY.pop("fake")
    config.BACKENDS[:] = names


def test_a_fake_backend_is_in_the_support_matrix_and_the_refusals(fake_backend, capsys):
    assert cli.main(["schemes", "--backends", "fake"]) == 0
    out = capsys.readouterr().out
    assert "| Fake runtime | QAT |" in out and "yes: the PT2E graph's program" in out and "exported by fake" in out
    assert cli.main(["schemes", "--backends", "fake", "--activations", "dynamic"]) == 2
    assert "Fake runtime cannot export" in capsys.readouterr().out


def test_a_fake_backend_is_exported_verified_and_reported(fake_backend, copy_of):
    pipeline = copy_of(backends="fake")
    assert pipeline.export() is True
    fake = {f: a for f, a in pipeline.manifest["artifacts"].items() if a["backend"] == "fake"}
    assert sorted(fake) == ["convnet_fake_fp32.fake", "convnet_fake_int8.fake"]
    for file, artifact in fake.items():
        assert (pipeline.out / file).is_file() and artifact["format"] == "fake"
        v = artifact["verification"]
        assert v["passed"] and v["agreement"] == 1.0 and v["method"] == "fake runtime (its torch.export program in PyTorch)"
    report = (pipeline.out / "report.md").read_text()
    assert "| `convnet_fake_int8.fake` | every op in the fake runtime | none |" in report
    assert pipeline.verify(["fake"]) is True  # `verify` alone runs them again


def test_a_fake_backend_is_benchmarked(fake_backend, copy_of, capsys):
    """`bench` measures the fake files in fresh processes (which load the fake class from this file), with the thread
    setting, batch support and read-back the backend states; its rows reach results.json and report.md."""
    pipeline = copy_of(backends="fake")
    assert pipeline.export() is True
    manifest = mf.load(pipeline.out)  # only the fake files, so the bench measures nothing else
    manifest["artifacts"] = {f: a for f, a in manifest["artifacts"].items() if a["backend"] == "fake"}
    mf.save(pipeline.out, manifest)
    quick = ["--bench-warmup", "2", "--bench-iterations", "10", "--bench-seconds", "0.25", "--bench-train-steps", "3"]
    assert cli.main(["bench", "--out", str(pipeline.out), *quick]) == 0
    results = json.loads((pipeline.out / "bench" / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert [r["backend"] for r in results["rows"]][-2:] == ["fake", "fake"]
    threads = results["settings"]["threads"]
    for file in ("convnet_fake_fp32.fake", "convnet_fake_int8.fake"):
        row = rows[file]
        assert row["error"] is None and row["label"].startswith("Fake runtime ")
        assert row["method"] == "fake runtime (its torch.export program in PyTorch)"
        assert row["accuracy"] == pipeline.manifest["artifacts"][file]["verification"]["accuracy"]
        assert [lat["threads"] for lat in row["latency"]] == threads and all(lat["p50_ms"] > 0 for lat in row["latency"])
        assert row["throughput"]["batch"] == 32 and row["throughput_note"] is None  # its batch_support said yes
        assert [t["fake_threads"] for t in row["threads_reported"]] == threads  # its set_threads ran in the child
    assert results["methods"]["thread_control"]["fake"] == "fake: torch.set_num_threads(n)"
    report = (pipeline.out / "bench" / "report.md").read_text()
    assert "| `convnet_fake_int8.fake` | fake | int8 |" in report
    assert "- **fake**: fake: torch.set_num_threads(n)" in report
    assert f"- Fake runtime read back: {'; '.join(sorted(f'asked {n}, got {n}' for n in threads))}." in report


def test_what_the_zoo_the_study_the_apps_and_the_keep_float_report_know_of_a_backend_comes_from_it(fake_backend,
                                                                                                     monkeypatch):
    from types import SimpleNamespace

    from benchmarks import zoo
    from converters import golden
    from core.config import RunConfig
    from pipeline.report import kept_float_in
    from study import artifacts

    assert [(label, backend) for label, backend, _ in zoo.file_cells() if backend == "fake"] == \
        [(".fake fp32", "fake"), (".fake int8", "fake")]  # its file_kinds are the zoo's columns
    failed_float = {"backend": "fake", "quant": "fp32", "file": "m.fake"}
    assert zoo._faithful({}, failed_float) is False  # no parity of its own, and it does not check stored weights
    monkeypatch.setattr(fake_backend, "checks_stored_weights", True)
    assert zoo._faithful({}, failed_float) is True
    monkeypatch.setattr(fake_backend, "app_name", "fakert")
    assert golden.runtime_name(fake_backend) == "fakert"
    row = {"backend": "fake", "quant": "int8", "reference": "quantized", "checks": {}, "verification": {"passed": True}}
    assert artifacts.how_it_ran(row) == "runtime"
    monkeypatch.setattr(fake_backend, "how_it_runs", lambda artifact: "readback")
    assert artifacts.how_it_ran(row) == "readback" and not artifacts.timeable({**row, "verification": {"method": "x"}})
    study = SimpleNamespace(cfg=RunConfig())
    assert artifacts._reusable(study, row) is True
    monkeypatch.setattr(fake_backend, "same_settings", lambda artifact, options: options.nbits == 3)
    assert artifacts._reusable(study, row) is False and artifacts._reusable(SimpleNamespace(cfg=RunConfig(nbits=3)), row)
    assert kept_float_in(row, ["fc2"]) == "–"
    monkeypatch.setattr(fake_backend, "float_in_file", lambda artifact, layers: {k: k == "fc2" for k in layers})
    assert kept_float_in(row, ["fc1", "fc2"]) == "`fc1` **no**, `fc2` yes"
    from benchmarks.models import outside_fast_path

    assert outside_fast_path(row) == "none"  # the model and zoo tables' column: what the backend says runs outside
    monkeypatch.setattr(fake_backend, "outside_ops", lambda artifact: {"aten.gelu": 2, "aten.add": 1})
    assert outside_fast_path(row) == "aten.add, aten.gelu x2"


def test_a_backend_registered_at_run_time_is_found_again_from_its_file(tmp_path):
    """What the bench's measuring process does: rebuild a registered backend from `origin` (module, file, class)."""
    from converters import ConversionError, origin, restore

    (tmp_path / "elsewhere.py").write_text(
        "from converters.base import Converter\n\n"
        "class Other(Converter):\n    name, display_name, format, packages, settings = 'other', 'Other', 'oth', (), ()\n"
        "    support = export_baseline = export_scheme = runner = None\n")
    where = {"module": "not_on_the_path", "file": str(tmp_path / "elsewhere.py"), "class": "Other"}
    names = list(config.BACKENDS)
    try:
        other = restore("other", where)
        assert REGISTRY["other"] is other and other.display_name == "Other" and "other" in config.BACKENDS
        assert restore("other", None) is other  # registered now
        assert origin(other)["file"] == str(tmp_path / "elsewhere.py") and origin(other)["class"] == "Other"
    finally:
        REGISTRY.pop("other", None)
        config.BACKENDS[:] = names
    with pytest.raises(ConversionError, match="cannot import not_on_the_path .*PYTHONPATH"):
        restore("other", {**where, "file": None})
    with pytest.raises(ConversionError, match="names itself 'other', not 'another'"):
        restore("another", where)
    REGISTRY.pop("other", None)
    config.BACKENDS[:] = names
