"""The pipeline's stages over one output directory, as methods: train, qat, export (+ verify), bundle.

Each stage is a module of its own (pipeline/train.py, quantize.py, export.py, verify.py, bundle.py)
over OUT's state (pipeline/state.py: manifest, cache keys, data, device); `Pipeline` is that state
with one method per stage, what the CLI and the tests call.
"""

from __future__ import annotations

from pathlib import Path

from . import bundle as bundle_stage
from . import export as export_stage
from . import quantize as quantize_stage
from . import train as train_stage
from . import verify as verify_stage
from .state import OutState, StageError
from .verify import say_verdict

__all__ = ["Pipeline", "StageError", "say_verdict"]


class Pipeline(OutState):
    def train(self) -> None:
        train_stage.run(self)

    def qat(self) -> None:
        quantize_stage.run(self)

    def export(self) -> bool:
        return export_stage.run(self)

    def verify(self, backends: list[str] | None = None, sources: dict | None = None, reuse: bool = False) -> bool:
        return verify_stage.run(self, backends, sources, reuse)

    def bundle(self, platform: str, dest: Path | None = None) -> Path:
        return bundle_stage.run(self, platform, dest)
