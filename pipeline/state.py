"""One output directory (OUT) as the pipeline's stages see it: its manifest, cache keys, data and device.

Each stage (pipeline/train.py, quantize.py, export.py, verify.py, bundle.py) records in
OUT/manifest.json a key of the settings it depends on and the sha256 of every file it wrote. It
reuses its result only when the key matches AND every file is intact, so `make export-ios` after
`make export-android` does not retrain, while a damaged or overwritten file is never trusted. A
stage marks itself "running" before it rewrites anything, and files of an older model are moved
to OUT/stale/ rather than left under their final names. `--force` re-runs the stages.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from core import io as atomic
from core import manifest as mf
from core import distributed, loaders, models, qat, rewrites, train
from core.config import RunConfig
from core.console import say
from core.device import check_amp, check_input_memory
from core.errors import BadInput
from core.evaluate import predict
from core.export_check import check_exportable
from core.recipe import Recipe
from core import statistics
from core.schemes import Scheme
from core.workspace import CHECKPOINT, ExportSource, Workspace

import converters
from converters import support

from . import report

TRAIN_SETTINGS = ("dataset", "model", "weights", "pretrained", "image_size", "limit_train", "limit_test", "batch_size", "lr",
                  "seed", "optimizer", "momentum", "weight_decay", "lr_schedule", "lr_gamma", "warmup_epochs",
                  "label_smoothing", "augment", "augment_min_scale", "stats_images", "bn_recalibration")
QAT_SETTINGS = ("qat_epochs", "qat_max_steps", "qat_lr", "freeze_bn_at", "freeze_observers_at", "calib_batches")
SCHEME_SETTINGS = ("quant_mode", "weight_bits", "weight_granularity", "block_size", "weight_symmetry", "activations",
                   "calibration")
DISTILL_SETTINGS = ("distill", "distill_temperature", "distill_weight")


class StageError(BadInput, RuntimeError):
    """A stage was asked for before the one it needs, or its settings cannot work; the message says what to do."""


def run_by_every_rank(stage):
    """A stage every torchrun process runs (training is collective); rank 0 alone writes OUT,
    and the others wait for it, then read the manifest it wrote. One process: no change."""
    @functools.wraps(stage)
    def run(self, *args, **kwargs):
        ctx = self.ctx  # device and process group first
        result = stage(self, *args, **kwargs)
        if ctx.distributed:
            distributed.barrier()
            self.manifest = mf.load(self.out)
        return result

    return run


class OutState(Workspace):
    """OUT's state for one resolved config: its manifest and how it is saved, the stages' cache keys, the data and
    the device. The stages themselves are functions over it, one module each."""

    def __init__(self, cfg: RunConfig):
        check_input_memory(models.input_shape(cfg.model, cfg.image_size, cfg.dataset), cfg.batch_size)
        atomic.ensure_writable_dir(Path(cfg.out))
        super().__init__(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if distributed.launched_by_torchrun():  # rank 0 downloads or unpacks the dataset first; the others then read it
            if self.ctx.is_main:
                self.data
            distributed.barrier()
        self.preflight()

    # ---- checks before anything runs ---------------------------------------------
    def preflight(self) -> None:
        """Refuse, before any stage runs, settings that cannot give a sound model or artifact."""
        selected = converters.select(self.cfg.backends)
        problems = [p for conv in selected for p in conv.validate(converters.ExportOptions.from_config(self.cfg))]
        problems += support.check(self.scheme(), [c.name for c in selected])
        if problems:  # settings alone: refused before any data is read
            raise StageError("; ".join(problems))
        scheme = self.scheme()
        trains = scheme.trainable and scheme.mode in ("auto", "qat")
        # Under torchrun each process takes its shard of every epoch (DistributedSampler); QAT counts its steps on that.
        shard = math.ceil(len(self.data.train_labels) / distributed.env_world_size())
        problems = self.schedule().problems(shard) if trains else []
        if problems:
            raise StageError("; ".join(problems))

    def schedule(self) -> qat.QATSchedule:
        return qat.QATSchedule.from_config(self.cfg)

    # ---- shared pieces -------------------------------------------------------------
    @functools.cached_property
    def ctx(self) -> distributed.Context:
        """Device, rank and world size: decided once, when a stage first needs them."""
        ctx = distributed.setup(self.cfg.device)
        check_amp(self.cfg.amp, ctx.device)
        return ctx

    def train_loader(self, seed: int, ctx: distributed.Context | None = None) -> loaders.TrainLoader:
        recipe = Recipe.from_config(self.cfg)
        recipe.check_augmentation(self.shape[0])
        return loaders.TrainLoader(self.data, self.cfg.batch_size, seed=seed, ctx=ctx or self.ctx, workers=self.cfg.workers,
                                   augment=recipe.augmentation(self.shape[1]))

    def compute(self, loader: loaders.TrainLoader) -> dict:
        return {**loader.ctx.describe(), **loader.describe(), "amp": self.cfg.amp, "sync_bn": self.cfg.sync_bn}

    def train_key(self) -> str:
        return f"{self.cfg.key(*TRAIN_SETTINGS)}-{self.data.name}-{len(self.data.train_labels)}"

    def stage_entry(self, name: str) -> dict:
        """What stage `name` recorded in the manifest (status, key, sha256 of its files); empty if it never ran."""
        return self.manifest["stages"].get(name, {})

    def stage_done(self, name: str, key: str) -> bool:
        stage = self.stage_entry(name)
        return stage.get("status") == "done" and stage.get("key") == key

    def save(self) -> None:
        """Write the manifest, and the report that describes it, so the two never disagree (rank 0 alone, under torchrun)."""
        if distributed.env_rank() != 0:
            return
        self.manifest["config"] = self.cfg.to_dict()
        mf.save(self.out, self.manifest)
        report.write_export_report(self.out, self.manifest)

    def evaluate(self, fn, on_device: bool = True) -> float:
        """Test accuracy; float models run on the training device, quantized programs on the CPU."""
        return float(self.answers(fn, on_device).mean())

    def answers(self, fn, on_device: bool = True) -> np.ndarray:
        """Per test image: is fn's top-1 answer right? What the paired verdicts compare (core/statistics.py)."""
        device = self.ctx.device if on_device else None
        if device is not None and isinstance(fn, torch.nn.Module):
            fn = fn.to(device)
        return predict(fn, self.data, device=device).argmax(1) == self.data.test_labels.numpy()

    def record_answers(self, name: str, correct: np.ndarray) -> None:
        self.manifest.setdefault("per_image", {})[name] = statistics.pack(correct)

    def recorded_answers(self, name: str) -> np.ndarray | None:
        """Per-image right/wrong answers `train` ("fp32") or `qat` ("<tag>:ptq", "<tag>:qat") recorded, if any."""
        return statistics.unpack((self.manifest.get("per_image") or {}).get(name), len(self.data.test_labels))

    def retire(self, files: list[str], why: str, which: str = "that no longer match the settings") -> None:
        """Move outputs of an older model out of the way, into OUT/stale/<its run id>/; never delete them."""
        if distributed.env_rank() != 0:
            return  # under torchrun rank 0 alone touches OUT
        stale = self.out / "stale" / (self.manifest.get("run_id") or "unknown-run")
        moved = atomic.move_aside([self.out / f for f in files], stale)
        if moved:
            say(f"{why}: moved {len(moved)} file(s) {which} to {stale}")

    def downstream_of(self, stage: str) -> list[str]:
        """Files in OUT that were made from the result of `stage` (artifacts, reports, bench results)."""
        files = list(self.manifest["artifacts"])
        suffixes = {f".{c.format}" for c in converters.REGISTRY.values()}
        files += [p.name for p in self.out.iterdir() if p.suffix in suffixes and p.name not in files]
        files += ["report.md", "labels.txt", "bench", "parity"]
        if stage == "train":
            files += ["quantized"]
        return files

    def checkpoint_state(self) -> dict:
        """The fp32 checkpoint, only if it is the one `train` recorded."""
        ckpt, recorded = self.out / CHECKPOINT, self.stage_entry("train").get("sha256")
        if not atomic.intact(ckpt, recorded):
            state = "missing" if not ckpt.exists() else "changed since `train` wrote it (its sha256 differs)"
            raise train.CheckpointError(f"{ckpt} is {state}; it may have been overwritten by another run. "
                                        "Rerun `train --force` to train again (or restore the file)")
        return train.load_checkpoint(ckpt)

    def fp32_model(self) -> torch.nn.Module:
        state = self.checkpoint_state()
        model = self.build_model(len(state["meta"]["labels"]))
        model.load_state_dict(state["model"])
        return self.export_ready(model)

    def checked_model(self) -> tuple[torch.nn.Module, list[dict]]:
        """A fresh, seeded model of this run's source, checked to give logits and to export (ModelError if not),
        and the exact rewrites its exported graph gets."""
        n = len(self.data.labels)
        train.seed_everything(self.cfg.seed)
        model = self.build_model(n, self.cfg.weights, self.cfg.pretrained)
        rng = torch.get_rng_state()  # the checks must not change what training sees
        models.check_forward(model, self.cfg.model, self.shape, n)
        graph_rewrites = rewrites.graph_rewrites(check_exportable(self.export_ready(model), self.cfg.model, self.shape))
        torch.set_rng_state(rng)
        return model.train(), graph_rewrites

    def require_sound_model(self) -> None:
        """StageError unless the trained fp32 model beats chance significantly on its test set and its training
        loss did not diverge: every later stage (qat, export, bundle) refuses a broken model, before it writes."""
        stage = self.stage_entry("train")
        if stage.get("status") != "done" or "fp32" not in self.manifest.get("accuracy", {}):
            return  # not trained: the stage that needs the model says so
        data, cfg = self.data, self.cfg
        n = len(data.test_labels)
        chance = statistics.better_than_chance(round(self.manifest["accuracy"]["fp32"] * n), n, len(data.labels))
        problems = []
        diverged = train.divergence(stage.get("history") or [], len(data.labels))
        if diverged:
            problems.append(diverged)
        if not chance["passed"]:
            problems.append(
                f"it is not significantly better than chance on its test set: {chance['correct']} of {n} correct "
                f"(accuracy {chance['correct'] / max(n, 1):.4f}, chance {chance['chance']:.4f} for {chance['classes']} "
                f"classes; one-sided binomial test p = {chance['p_value']:.3g}, needs p < {chance['alpha']:g})")
        if problems:
            small = "raise --limit-test (too few test images to tell), " if n < 30 else ""
            raise StageError(f"the fp32 model in {self.out / CHECKPOINT} is broken: {'; and '.join(problems)}. "
                             f"qat, export and bundle refuse it. {small.capitalize()}{'l' if small else 'L'}ower --lr "
                             f"(it is {cfg.lr:g}), train more --epochs (it is {cfg.epochs}), or check the data and "
                             "labels; then rerun `train --force`")

    def scheme(self) -> Scheme:
        return Scheme.from_config(self.cfg)

    def quant_key(self) -> str:
        distill = DISTILL_SETTINGS if self.cfg.distill else ()  # plain runs keep the keys they always had
        kept = ("keep_float",) if self.cfg.keep_float not in (None, "none") else ()
        return f"{self.train_key()}/{self.cfg.key('epochs', *QAT_SETTINGS, *SCHEME_SETTINGS, *distill, *kept)}"

    def export_source(self, scheme: Scheme | None = None) -> ExportSource:
        """The converters' input for `scheme` (the configured one by default), only as `qat` made it with these settings."""
        scheme = scheme or self.scheme()
        entry = self.quant_stage(scheme.tag)
        if entry.get("status") != "done" or entry.get("key") != self.quant_key():
            raise qat.QuantError(f"{self.out} holds no quantized model for {scheme.tag} ({scheme.summary()}) with these "
                                 "settings; run `qat` first (or `run`)")
        damaged = self.quantized_damaged(scheme.tag)
        if damaged:
            raise qat.QuantError(f"{', '.join(damaged)} in {self.quantized_folder(scheme.tag)} are missing or changed "
                                 "since `qat` wrote them; rerun `qat` (it rebuilds them)")
        return super().export_source(scheme)

    def source_for(self, tag: str | None) -> ExportSource:
        """The converters' input for an artifact's scheme (by tag) as `qat` recorded it, whatever the settings now;
        the fp32 baselines' (None)."""
        if tag is None:
            return super().export_source()
        entry = self.quant_stage(tag)
        if entry.get("status") != "done":
            raise qat.QuantError(f"scheme {tag} has no finished quantize stage in {self.out}; run `qat` for it")
        damaged = self.quantized_damaged(tag)
        if damaged:
            raise qat.QuantError(f"{', '.join(damaged)} of scheme {tag} are missing or changed; rerun `qat` for it")
        return super().export_source(Scheme.from_dict(entry["scheme"]))
