"""A runtime is one `Converter` subclass and one registry line: a fake backend goes through `schemes`, export,
verify and the report without any other change."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core import config
from core import io as atomic
from core.schemes import Scheme, Support
from converters import REGISTRY, Artifact, Converter, register
from converters.base import float_input_spec, float_output_spec
from pipeline import cli


class FakeConverter(Converter):
    """Writes the state dict of the model it was given; its "runtime" runs that model's PyTorch reference again.
    Enough to see every part of the pipeline take a backend only from what it says of itself."""

    name = "fake"
    display_name = "Fake runtime"
    format = "fake"
    packages = ()
    settings = ()

    def support(self, scheme: Scheme) -> Support:
        if scheme.activations == "static" and scheme.weight_bits == 8:
            return Support(self.name, True, "the PT2E graph's state dict")
        return Support(self.name, False, reason="the fake runtime takes static int8 only")

    def export_baseline(self, source, out: Path, options) -> list[Artifact]:
        return [self._write(source.fp32_model, f"{source.model_name}_fake_fp32.fake", "fp32", "fp32", None, source, out)]

    def export_scheme(self, source, out: Path, options) -> list[Artifact]:
        self.require_support(source.scheme)
        return [self._write(source.program, f"{source.model_name}_fake_{source.scheme.tag}.fake", source.scheme.tag,
                            "quantized", source.scheme, source, out)]

    def _write(self, model, file, quant, reference, scheme, source, out) -> Artifact:
        start = time.perf_counter()
        atomic.atomic_write(out / file, lambda tmp: torch.save(model.state_dict(), tmp))
        return Artifact(file, self.name, quant, self.format, reference, float_input_spec(source),
                        float_output_spec(source), {}, time.perf_counter() - start,
                        scheme.describe() if scheme else None)

    def runner(self, path: Path, artifact: dict, source, threads: int = 1):
        model = source.fp32_model if artifact["reference"] == "fp32" else source.program

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

        return run, "fake runtime (the PyTorch reference)"

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
    assert "| Fake runtime | QAT |" in out and "yes: the PT2E graph's state dict" in out and "exported by fake" in out
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
        assert v["passed"] and v["agreement"] == 1.0 and v["method"] == "fake runtime (the PyTorch reference)"
    report = (pipeline.out / "report.md").read_text()
    assert "| `convnet_fake_int8.fake` | every op in the fake runtime | none |" in report
    assert pipeline.verify(["fake"]) is True  # `verify` alone runs them again
