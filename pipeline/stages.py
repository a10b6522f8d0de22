"""The pipeline's stages over one output directory: train, qat, export (+ verify), bundle.

Each stage records in OUT/manifest.json a key of the settings it depends on and the sha256 of
every file it wrote. It reuses its result only when the key matches AND every file is intact,
so `make export-ios` after `make export-android` does not retrain, while a damaged or
overwritten file is never trusted. A stage marks itself "running" before it rewrites anything,
and files of an older model are moved to OUT/stale/ rather than left under their final names.
`--force` re-runs the stages.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from core import io as atomic
from core import manifest as mf
from core import distributed, loaders, models, qat, quantize, rewrites, train
from core.config import RunConfig
from core.console import say, say_brief
from core.data import DataError
from core.distill import Distillation
from core.device import check_amp, check_input_memory, for_quantization
from core.evaluate import predict
from core.export_check import check_exportable
from core.recipe import Recipe
from core import schemes, statistics
from core.schemes import Scheme
from core.workspace import CHECKPOINT, Workspace

from . import keep_float, parity, report

TRAIN_SETTINGS = ("dataset", "model", "weights", "pretrained", "image_size", "limit_train", "limit_test", "batch_size", "lr",
                  "seed", "optimizer", "momentum", "weight_decay", "lr_schedule", "lr_gamma", "warmup_epochs",
                  "label_smoothing", "augment", "augment_min_scale", "stats_images", "bn_recalibration")
QAT_SETTINGS = ("qat_epochs", "qat_max_steps", "qat_lr", "freeze_bn_at", "freeze_observers_at", "calib_batches")
SCHEME_SETTINGS = ("quant_mode", "weight_bits", "weight_granularity", "block_size", "weight_symmetry", "activations",
                   "calibration")
DISTILL_SETTINGS = ("distill", "distill_temperature", "distill_weight")
ARTIFACT_SUFFIXES = (".pte", ".tflite", ".mlpackage")
APP_DIRS = {"android": Path("android_demo/app/src/main/assets"), "ios": Path("ios_demo/Resources")}
APP_FORMATS = {"android": ("pte", "tflite"), "ios": ("mlpackage", "pte")}


class StageError(RuntimeError):
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


class Pipeline(Workspace):
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
        import converters

        selected = converters.select(self.cfg.backends)
        problems = [p for conv in selected for p in conv.validate(self.cfg)]
        problems += schemes.check(self.scheme(), [c.name for c in selected])
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

    def qat_key(self) -> str:
        return f"{self.train_key()}/{self.cfg.key('epochs', *QAT_SETTINGS)}"

    def _stage(self, name: str) -> dict:
        return self.manifest["stages"].get(name, {})

    def _done(self, name: str, key: str) -> bool:
        stage = self._stage(name)
        return stage.get("status") == "done" and stage.get("key") == key

    def _save(self) -> None:
        """Write the manifest, and the report that describes it, so the two never disagree (rank 0 alone, under torchrun)."""
        if distributed.env_rank() != 0:
            return
        self.manifest["config"] = self.cfg.to_dict()
        mf.save(self.out, self.manifest)
        report.write_export_report(self.out, self.manifest)

    def _evaluate(self, fn, on_device: bool = True) -> float:
        """Test accuracy; float models run on the training device, quantized programs on the CPU."""
        return float(self._answers(fn, on_device).mean())

    def _answers(self, fn, on_device: bool = True) -> np.ndarray:
        """Per test image: is fn's top-1 answer right? What the paired verdicts compare (core/statistics.py)."""
        device = self.ctx.device if on_device else None
        if device is not None and isinstance(fn, torch.nn.Module):
            fn = fn.to(device)
        return predict(fn, self.data, device=device).argmax(1) == self.data.test_labels.numpy()

    def _record_answers(self, name: str, correct: np.ndarray) -> None:
        self.manifest.setdefault("per_image", {})[name] = statistics.pack(correct)

    def recorded_answers(self, name: str) -> np.ndarray | None:
        """Per-image right/wrong answers `train` ("fp32") or `qat` ("<tag>:ptq", "<tag>:qat") recorded, if any."""
        return statistics.unpack((self.manifest.get("per_image") or {}).get(name), len(self.data.test_labels))

    def _retire(self, files: list[str], why: str, which: str = "that no longer match the settings") -> None:
        """Move outputs of an older model out of the way, into OUT/stale/<its run id>/; never delete them."""
        if distributed.env_rank() != 0:
            return  # under torchrun rank 0 alone touches OUT
        stale = self.out / "stale" / (self.manifest.get("run_id") or "unknown-run")
        moved = atomic.move_aside([self.out / f for f in files], stale)
        if moved:
            say(f"{why}: moved {len(moved)} file(s) {which} to {stale}")

    def _downstream_of(self, stage: str) -> list[str]:
        """Files in OUT that were made from the result of `stage` (artifacts, reports, bench results)."""
        files = list(self.manifest["artifacts"])
        files += [p.name for p in self.out.iterdir() if p.suffix in ARTIFACT_SUFFIXES and p.name not in files]
        files += ["report.md", "labels.txt", "bench", "parity"]
        if stage == "train":
            files += ["quantized"]
        return files

    def checkpoint_state(self) -> dict:
        """The fp32 checkpoint, only if it is the one `train` recorded."""
        ckpt, recorded = self.out / CHECKPOINT, self._stage("train").get("sha256")
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

    def checked_model(self) -> torch.nn.Module:
        """A fresh, seeded model of this run's source, checked to give logits and to export; ModelError if not."""
        n = len(self.data.labels)
        train.seed_everything(self.cfg.seed)
        model = self.build_model(n, self.cfg.weights, self.cfg.pretrained)
        rng = torch.get_rng_state()  # the checks must not change what training sees
        models.check_forward(model, self.cfg.model, self.shape, n)
        self.graph_rewrites = rewrites.graph_rewrites(check_exportable(self.export_ready(model), self.cfg.model, self.shape))
        torch.set_rng_state(rng)
        return model.train()

    # ---- train ---------------------------------------------------------------------
    @run_by_every_rank
    def train(self) -> None:
        cfg, data = self.cfg, self.data
        key, stage = self.train_key(), self._stage("train")
        ckpt = self.out / CHECKPOINT
        # --resume of a run that already finished with these settings has nothing to do: the same as a plain rerun
        if not cfg.force and self._done("train", key) and stage.get("epochs_done") == cfg.epochs:
            self.checkpoint_state()  # an overwritten or corrupt checkpoint is an error, never silently reused
            say(f"train: reusing {ckpt} ({cfg.epochs} epochs, test accuracy {self.manifest['accuracy']['fp32']:.4f})")
            self.require_sound_model()
            return
        model = self.checked_model()  # a model that cannot work stops here, before anything is rewritten
        if cfg.resume and ckpt.exists():  # a corrupt checkpoint, or one of other settings: refused before anything moves
            train.resumable(ckpt, key)
        if getattr(data, "streamed", False):  # read only after the last epoch: a bad test image is found now instead
            say(f"data: {data.check_readable('test')} test images decode")
        keep = [] if cfg.resume else [str(CHECKPOINT)]  # --resume continues the checkpoint; a new run keeps the old one aside
        same = stage.get("key") == key
        self._retire(self._downstream_of("train") + keep, "train",
                     "made from the earlier training run" if same else "that no longer match the settings")
        self.manifest.update({"accuracy": {}, "artifacts": {}, "backends": {}, "verification": {}, "per_image": {}})
        self.manifest.pop("parity", None)  # it compared the old model's files
        self.manifest["stages"] = {"train": {"status": "running", "key": key}}
        self._save()
        meta = {"model": cfg.model, "labels": data.labels, "mean": data.mean, "std": data.std, "input_shape": list(self.shape)}
        start = time.perf_counter()
        loader = self.train_loader(train.shuffle_seed(cfg.seed))
        try:
            result = train.train_fp32(model, loader, epochs=cfg.epochs, lr=cfg.lr, checkpoint=ckpt, key=key, meta=meta,
                                      resume=cfg.resume, recipe=Recipe.from_config(cfg), amp=cfg.amp,
                                      sync_bn=cfg.sync_bn, bn_batches=cfg.bn_recalibration)
        except DataError as exc:
            if not ckpt.exists():
                raise
            raise DataError(f"{exc} (the epochs finished so far are in {ckpt}: after fixing the file, "
                            "`train --resume` continues from the last of them)") from None
        if not self.ctx.is_main:
            return
        if result.epochs_done == 0:  # epochs == 0: keep the initial weights as the checkpoint
            train.save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": 0, "key": key, "history": [], "meta": meta})
        fp32_correct = self._answers(result.model.eval())
        fp32_acc = float(fp32_correct.mean())
        chance = statistics.better_than_chance(int(fp32_correct.sum()), len(data.test_labels), len(data.labels))
        result.model.to("cpu")
        _, module_rewrites, float_diff = rewrites.apply(result.model, self.shape)
        say(f"train: fp32 test accuracy {fp32_acc:.4f} on {len(data.test_labels)} {data.name} images")
        self.manifest.update({
            "run_id": f"{mf.now().replace(':', '').replace('-', '')[:15]}-{key[:8]}",
            "dataset": data.info(),
            "model": {"name": cfg.model, "input_shape": list(self.shape),
                      "parameters": sum(p.numel() for p in result.model.parameters()),
                      "macs": models.count_macs(result.model, self.shape),
                      "rewrites": module_rewrites + self.graph_rewrites, "rewrite_float_diff": float_diff},
            "accuracy": {"fp32": fp32_acc},
        })
        self._record_answers("fp32", fp32_correct)
        self.manifest["stages"] = {"train": {
            "status": "done", "key": key, "checkpoint": str(CHECKPOINT), "sha256": atomic.sha256(ckpt),
            "epochs_done": result.epochs_done, "images_per_s": result.images_per_s, "history": result.history,
            "bn_recalibration": result.bn_recalibration, "better_than_chance": chance,
            "diverged": train.divergence(result.history, len(data.labels)),
            "compute": self.compute(loader), "wall_time_s": time.perf_counter() - start}}
        self._save()
        self.require_sound_model()

    def require_sound_model(self) -> None:
        """StageError unless the trained fp32 model beats chance significantly on its test set and its training
        loss did not diverge: every later stage (qat, export, bundle) refuses a broken model, before it writes."""
        stage = self._stage("train")
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

    # ---- quantize (the `qat` command) -------------------------------------------------
    def scheme(self) -> Scheme:
        return Scheme.from_config(self.cfg)

    def quant_key(self) -> str:
        distill = DISTILL_SETTINGS if self.cfg.distill else ()  # plain runs keep the keys they always had
        kept = ("keep_float",) if keep_float.active(self.cfg) else ()
        return f"{self.train_key()}/{self.cfg.key('epochs', *QAT_SETTINGS, *SCHEME_SETTINGS, *distill, *kept)}"

    @run_by_every_rank
    def qat(self) -> None:
        """Quantize the fp32 model with the configured scheme: PTQ, QAT where the scheme trains, and keep the
        better under --quant-mode auto. Other schemes already in OUT stay as they are."""
        cfg, data = self.cfg, self.data
        self.require_sound_model()
        scheme, key = self.scheme(), self.quant_key()
        tag, entry = scheme.tag, self.quant_stage(scheme.tag)
        if not cfg.force and entry.get("status") == "done" and entry.get("key") == key:
            damaged = self.quantized_damaged(tag)
            if not damaged:
                acc = self.manifest["accuracy"][tag]
                say(f"qat: reusing {tag} ({acc['chosen'].upper()} {acc['quantized']:.4f}; fp32 "
                      f"{self.manifest['accuracy']['fp32']:.4f})")
                return
            say(f"qat: {tag}: {', '.join(damaged)} missing or changed since they were written; quantizing again")
        if not self._done("train", self.train_key()):
            raise train.CheckpointError(f"{self.out / CHECKPOINT} was not trained with these settings; run `train` first")
        model = self.fp32_model()
        kept, kept_choice = keep_float.choose(self)  # before anything is retired: a bad layer name changes nothing
        replaced = [f for f, a in self.manifest["artifacts"].items() if mf.scheme_tag(a) == tag]
        # Files of this scheme from other settings go aside (with the bench results that measured them);
        # other schemes in OUT stay.
        parity_of_tag = ((self.manifest.get("parity") or {}).get("scheme") or {}).get("tag") == tag
        self._retire(replaced + (["bench"] if replaced else []) + (["parity"] if parity_of_tag else []), f"qat: {tag}")
        if parity_of_tag:
            self.manifest.pop("parity")
        for f in [f for f, a in self.manifest["artifacts"].items() if mf.scheme_tag(a) == tag]:
            self.manifest["artifacts"].pop(f)
        self.manifest["backends"] = {k: v for k, v in self.manifest["backends"].items() if not k.endswith(f":{tag}")}
        self.manifest["stages"].setdefault("quantize", {})[tag] = {"status": "running", "key": key}
        self._save()
        start = time.perf_counter()
        qdevice = for_quantization(self.ctx.device, cfg.device)  # where calibration and QAT run
        results, accuracy, answers, loader = {}, {}, {}, None
        if self.ctx.is_main:  # PTQ: rank 0 alone calibrates, on the batches one process would use
            ptq = quantize.post_training(model, scheme, data, self.shape, cfg.calib_batches, cfg.batch_size,
                                         keep_float=kept, device=qdevice)
            results["ptq"], answers["ptq"] = ptq, self._answers(ptq.program, on_device=False)
            accuracy["ptq"] = float(answers["ptq"].mean())
        if scheme.trainable and scheme.mode in ("auto", "qat"):
            train.seed_everything(cfg.seed)
            schedule = self.schedule()
            loader = self.train_loader(schedule.shuffle_seed, dataclasses.replace(self.ctx, device=qdevice))
            results["qat"] = quantize.quant_aware(model, scheme, loader, self.shape, schedule,
                                                  recipe=Recipe.from_config(cfg), distill=Distillation.from_config(cfg),
                                                  keep_float=kept)
            if not self.ctx.is_main:
                return  # rank 0 converts, evaluates and writes
            answers["qat"] = self._answers(results["qat"].program, on_device=False)
            accuracy["qat"] = float(answers["qat"].mean())
        if not self.ctx.is_main:
            return
        chosen, accuracy["choice"] = self._choose(scheme, accuracy, answers)
        result = results[chosen]
        float_bn = None
        if chosen == "qat":
            # The QAT graph's BatchNorm running averages do not fit the float network of its weights (MobileNetV3:
            # 75% with them, 85% with its own): before it is saved, it gets statistics of its own, as fp32 did
            float_bn = train.recalibrate_batchnorm(result.float_model.to(qdevice), loader, cfg.bn_recalibration,
                                                   epoch=10_000)
            result.float_model.to("cpu")
            if float_bn:
                say(f"qat: {tag}: QAT-trained float weights: BatchNorm statistics of {float_bn['layers']} layers "
                    f"re-estimated over {float_bn['batches']} training batches (--bn-recalibration)")
        paths = quantize.save(result, self.shape, self.quantized_folder(tag))
        accuracy.update({"quantized": accuracy[chosen], "chosen": chosen,
                         "float": self._evaluate(result.float_model.eval())})
        result.float_model.to("cpu")
        self.manifest["accuracy"][tag] = accuracy
        for name, correct in answers.items():
            self._record_answers(f"{tag}:{name}", correct)
        qat_run = results.get("qat")
        compute = self.compute(loader) if loader else dataclasses.replace(self.ctx, device=qdevice).describe()
        self.manifest["stages"]["quantize"][tag] = {
            "status": "done", "key": key, "scheme": scheme.describe(), "chosen": chosen,
            "sha256": {name: atomic.sha256(path) for name, path in paths.items()},
            "weight_error": result.weight_error, "grid_snap": quantize.grid_snap(result),
            "steps": qat_run.stats["steps"] if qat_run else 0, "events": qat_run.stats["events"] if qat_run else [],
            "images_per_s": qat_run.stats["images_per_s"] if qat_run else None,
            "history": qat_run.stats["history"] if qat_run else [], "compute": compute,
            "synced_across_ranks": qat_run.stats["synced_across_ranks"] if qat_run else None,
            "float_bn_recalibration": float_bn, "keep_float": {"setting": cfg.keep_float, "layers": list(kept),
                                                               "choice": kept_choice} if kept_choice else None, "distill": qat_run.stats.get("distill") if qat_run else None,
            "wall_time_s": time.perf_counter() - start}
        self._save()

    def _choose(self, scheme: Scheme, accuracy: dict, answers: dict) -> tuple[str, dict | None]:
        """PTQ or QAT: what --quant-mode asks for, or under auto QAT unless PTQ is significantly better on the same
        test images (exact McNemar test at 1 - --confidence); the test is returned for the manifest."""
        fp32, ptq, qat_acc = self.manifest["accuracy"]["fp32"], accuracy["ptq"], accuracy.get("qat")
        line = f"qat: {scheme.tag}: test accuracy fp32 {fp32:.4f} | PTQ {ptq:.4f}"
        if qat_acc is None:
            say(f"{line} (QAT not run: {'--quant-mode ptq' if scheme.mode == 'ptq' else 'post-training scheme'})")
            return "ptq", None
        test = statistics.mcnemar(answers["ptq"], answers["qat"])
        alpha = 1.0 - self.cfg.confidence
        test["alpha"] = alpha
        ptq_better = ptq > qat_acc and test["p"] < alpha
        noise = (f"PTQ right on {test['only_first']} images QAT gets wrong, QAT on {test['only_second']}: "
                 f"p = {test['p']:.2g}, n = {test['n']}")
        noisy = ptq > qat_acc and not ptq_better  # PTQ ahead, by no more than the two could differ by chance
        say(f"{line} | QAT {qat_acc:.4f}" + (f" (PTQ ahead within noise: {noise}; keeping QAT)" if noisy else ""))
        if ptq_better:
            say(f"WARNING: PTQ ({ptq:.4f}) is significantly better than QAT ({qat_acc:.4f}) for {scheme.tag} ({noise}): "
                "QAT fine-tuning made this network worse (PT2E QAT is known to fall below float on some networks, "
                "e.g. MobileNetV3). " + ("Exporting PTQ (--quant-mode auto)." if scheme.mode == "auto" else
                                          "Exporting QAT as --quant-mode qat asks; consider --quant-mode auto or ptq."))
        if scheme.mode == "auto":
            return ("ptq" if ptq_better else "qat"), test
        return scheme.mode, test

    # ---- export and verify ---------------------------------------------------------
    def export_source(self, scheme: Scheme | None = None):
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

    def export(self) -> bool:
        """Export the fp32 baselines and the scheme with every selected backend, then verify what was exported.

        A failing backend is reported, and the others still run.
        """
        import converters

        self.require_sound_model()
        scheme = self.scheme()
        source, ok = self.export_source(scheme), True
        selected = converters.select(self.cfg.backends)
        for conv in selected:
            for part in ("fp32", scheme.tag):
                ok &= self._export_part(conv, part, source)
        atomic.write_text(self.out / "labels.txt", "\n".join(self.data.labels) + "\n")
        verified = self.verify([c.name for c in selected], {scheme.tag: source}, reuse=not self.cfg.force)
        return ok and verified

    def _export_part(self, conv, part: str, source) -> bool:
        """One backend's baseline (part "fp32") or scheme artifacts: reuse them if intact, else export them."""
        from converters import ConversionError, PartialExport

        base = self.train_key() if part == "fp32" else self.quant_key()
        key, name = f"{base}/{self.cfg.key(*conv.settings)}", f"{conv.name}:{part}"
        previous = self.manifest["backends"].get(name, {})
        files = {f: a for f, a in self.manifest["artifacts"].items()
                 if a["backend"] == conv.name and (mf.scheme_tag(a) or "fp32") == part}
        if not self.cfg.force and previous.get("key") == key and previous.get("status") == "ok" and files:
            damaged = [f for f, a in files.items() if not atomic.intact(self.out / f, a.get("sha256"))]
            if not damaged:
                say(f"export: {name}: reusing {', '.join(files)}")
                return True
            say(f"export: {name}: {', '.join(damaged)} missing or changed since export; exporting again")
        for f in files:  # not done until the new files are written and recorded
            self.manifest["artifacts"].pop(f)
        self.manifest["backends"][name] = {"key": key, "status": "running"}
        self._save()
        start = time.perf_counter()
        try:
            conv.check_dependencies()
            kept = ((self.quant_stage(part).get("keep_float") or {}).get("layers") if part != "fp32" else None)
            options = keep_float.export_options(self.cfg, kept)
            artifacts = (conv.export_baseline if part == "fp32" else conv.export_scheme)(source, self.out, options)
        except atomic.OutputDirError:
            raise  # a full or read-only disk stops every backend: exit 2 with the file named
        except Exception as exc:  # a failing backend must not stop the others; the files it did make are kept
            failures = exc.failures if isinstance(exc, PartialExport) else [exc]
            reasons = []
            for failure in failures:
                if not isinstance(failure, ConversionError):  # a raw library exception: its traceback to the log
                    traceback.print_exception(failure)
                first = (str(failure).strip().splitlines() or [""])[0][:300]
                reasons.append(str(failure) if isinstance(failure, ConversionError) else
                               f"{type(failure).__name__}: {first} (the full traceback is in the log)")
                say_brief(f"[x] export: {name} FAILED: {reasons[-1]}")
            self._record(exc.artifacts if isinstance(exc, PartialExport) else [])
            self.manifest["backends"][name] = {"key": key, "status": "failed", "reason": "; ".join(reasons)}
            self._retire([f for f in files if f not in self.manifest["artifacts"]], f"export: {name}")
            self._save()
            return False
        self._record(artifacts)
        self._retire([f for f in files if f not in self.manifest["artifacts"]], f"export: {name}")
        self.manifest["backends"][name] = {"key": key, "status": "ok", "reason": None,
                                           "wall_time_s": time.perf_counter() - start}
        self._save()
        return True

    def _record(self, artifacts) -> None:
        """List exported files in the manifest, with their size and sha256."""
        for a in artifacts:
            path = self.out / a.file
            self.manifest["artifacts"][a.file] = {**a.to_dict(), "bytes": atomic.size_bytes(path),
                                                  "sha256": atomic.sha256(path)}
            say(f"[✓] export: {a.file} ({atomic.size_bytes(path) / 1e6:.2f} MB, {a.export_seconds:.1f} s)")

    def _verified_basis(self, artifact: dict, thresholds) -> dict:
        """What a verification result depends on: the file, its reference's files, the test set and the thresholds."""
        tag = mf.scheme_tag(artifact)
        stage = self.quant_stage(tag) if tag else self._stage("train")
        return {"sha256": artifact.get("sha256"), "reference_sha256": stage.get("sha256"),
                "reference_chosen": stage.get("chosen"), "images": len(self.data.test_labels),
                "thresholds": thresholds.basis()}

    def verify(self, backends: list[str] | None = None, sources: dict | None = None, reuse: bool = False) -> bool:
        """Run each artifact over the whole test set; compare it with its PyTorch reference, and its accuracy with
        fp32 and with PTQ of its scheme (the cost of quantization).

        reuse (what `export` asks for): an artifact that already passed on the same bytes, the same reference
        files, the same test set and the same thresholds keeps that result instead of running again; `verify`
        itself always runs everything."""
        from converters.verify import Thresholds, cross_agreement, run_artifact, verify

        data, labels = self.data, self.data.test_labels.numpy()
        thresholds = Thresholds.from_config(self.cfg)
        sources = dict(sources or {})
        ref_logits: dict[tuple, np.ndarray] = {}
        logits_by_file, recheck = {}, {}
        selected = {f: a for f, a in self.manifest["artifacts"].items() if backends is None or a["backend"] in backends}
        if not selected:
            say("verify: no artifacts to verify; run `export` first")
            return False
        for file, artifact in selected.items():
            path, tag = self.out / file, mf.scheme_tag(artifact)
            failure, basis, earlier = None, self._verified_basis(artifact, thresholds), artifact.get("verification", {})
            if reuse and earlier.get("passed") and earlier.get("basis") == basis and atomic.intact(path, basis["sha256"]):
                say(f"[✓] verify: {file}: passed earlier on these bytes, reference, test set and thresholds "
                    f"(accuracy {earlier['accuracy']:.4f}); not run again (`verify` re-runs every file)")
                continue
            if not atomic.intact(path, artifact.get("sha256")):
                state = "missing" if not path.exists() else "changed since export (its sha256 differs)"
                failure = f"{path} is {state}; re-run `export`, which rebuilds it"
            else:
                try:
                    source = sources.get(tag) or sources.setdefault(tag, self._source_for(tag))
                except (qat.QuantError, train.CheckpointError) as exc:
                    failure = f"its reference cannot be loaded: {exc}"
            if failure:
                artifact["verification"] = {"passed": False, "failures": [failure]}
                say(f"[x] verify: {file}: {failure}")
                continue
            reference = (artifact["reference"], tag)
            if reference not in ref_logits:
                model = {"fp32": source.fp32_model, "quantized": source.program, "float": source.float_model}
                ref_logits[reference] = predict(model[artifact["reference"]], data)
            start = time.perf_counter()
            try:
                logits, method = run_artifact(path, artifact, source, data)
            except Exception as exc:
                artifact["verification"] = {"passed": False, "failures": [f"could not run: {type(exc).__name__}: {exc}"]}
                say_brief(f"[x] verify: {file}: could not run it: {type(exc).__name__}: {exc}\n    the file passed "
                          "its sha256 check, so its runtime refused it: see the log; `export --force` rebuilds it")
                continue
            baselines = self._baselines(tag, source, ref_logits, labels)
            result = verify(artifact, logits, ref_logits[reference], labels, thresholds, baselines)
            result.update({"method": method, "seconds": time.perf_counter() - start, "basis": basis})
            artifact["verification"] = result
            logits_by_file[file] = logits
            recheck[file] = lambda rounding, a=artifact, lg=logits, ref=ref_logits[reference], b=baselines: verify(
                a, lg, ref, labels, thresholds, b, rounding)
            say_verdict(file, result, f"max |dlogit| {result['max_abs_logit_diff']:.4g} ({method})")
        smallest = thresholds.smallest_test_set()
        if len(labels) < smallest:
            say(f"verify: WARNING: {len(labels)} test images cannot show {100 * thresholds.min_agreement:g}% agreement "
                f"even when every answer agrees (that takes {smallest:,} at {100 * thresholds.confidence:g}% "
                "confidence): only gross errors can fail here; verify on more test images (--limit-test)")
        previous = self.manifest.get("verification", {})
        self.manifest["verification"] = {
            "thresholds": {"min_agreement": thresholds.min_agreement, "max_acc_drop_pp": thresholds.max_acc_drop_pp,
                           "max_quant_drop_pp": thresholds.max_quant_drop_pp,
                           "rounding_agreement": thresholds.rounding_agreement, "confidence": thresholds.confidence},
            "images": len(labels), "smallest_test_set": smallest,
            "cross_backend": {**previous.get("cross_backend", {}),
                              **cross_agreement(logits_by_file, self.manifest["artifacts"])},
        }
        parity_ok = parity.verify_layers(self, sources, logits_by_file)  # None: no .pte/.tflite pair to compare
        self._accept_rounding(recheck, thresholds)
        ok = all(self.manifest["artifacts"][f].get("verification", {}).get("passed") for f in selected)
        self.manifest["verification"]["passed"] = all(a.get("verification", {}).get("passed")
                                                      for a in self.manifest["artifacts"].values())
        if parity_ok is None and reuse and self.cfg.parity_check:  # the pair was not re-run: its earlier check stands
            parity_ok = previous.get("parity_passed")
        if parity_ok is not None:
            self.manifest["verification"]["parity_passed"] = parity_ok
            self.manifest["verification"]["passed"] &= parity_ok
            ok &= parity_ok
        self._save()
        return ok

    def _baselines(self, tag: str | None, source, ref_logits: dict, labels: np.ndarray) -> dict:
        """Per-image answers a quantized file's accuracy is compared with: fp32, and PTQ of its scheme."""
        if tag is None:
            return {}
        fp32 = self.recorded_answers("fp32")
        if fp32 is None:  # an OUT trained before answers were recorded: ask the fp32 model again
            if ("fp32", None) not in ref_logits:
                ref_logits[("fp32", None)] = predict(source.fp32_model, self.data)
            fp32 = ref_logits[("fp32", None)].argmax(1) == labels
        ptq = self.recorded_answers(f"{tag}:ptq")
        if ptq is None and self.quant_stage(tag).get("chosen") == "ptq" and ("quantized", tag) in ref_logits:
            ptq = ref_logits[("quantized", tag)].argmax(1) == labels  # PTQ is the quantized reference itself
        return {"fp32": fp32, "ptq": ptq}

    def _accept_rounding(self, recheck: dict, thresholds) -> None:
        """Hold again, at the rounding floor, each int8 .pte/.tflite that failed top-1 agreement and whose every
        layer the teacher-forced parity of this run found within --max-local-steps of PyTorch."""
        from converters.verify import rounding_floor

        parity_result = self.manifest.get("parity") or {}
        verdicts = parity_result.get("local_check") or {}
        scheme_tag = (parity_result.get("scheme") or {}).get("tag")
        for file, again in recheck.items():
            artifact = self.manifest["artifacts"][file]
            result = artifact["verification"]
            runtime = {"executorch": "pte", "tflite": "tflite"}.get(artifact["backend"])
            if (result["passed"] or runtime not in verdicts or mf.scheme_tag(artifact) != scheme_tag
                    or (parity_result.get("files") or {}).get(file) != artifact.get("sha256")):  # not these bytes
                continue
            floor = rounding_floor(verdicts[runtime], parity_result["images"], thresholds)
            if floor is None:
                continue
            redone = again(floor)
            redone.update({k: result[k] for k in ("method", "images", "seconds", "basis")})
            artifact["verification"] = redone
            say_verdict(file, redone, f"held to the rounding floor {100 * floor['min_agreement']:.2f}%: {floor['why']}")

    def _source_for(self, tag: str | None):
        """The converters' input for an artifact's scheme (by tag), or the fp32 baselines' (None)."""
        if tag is None:
            return Workspace.export_source(self)
        entry = self.quant_stage(tag)
        if entry.get("status") != "done":
            raise qat.QuantError(f"scheme {tag} has no finished quantize stage in {self.out}; run `qat` for it")
        damaged = self.quantized_damaged(tag)
        if damaged:
            raise qat.QuantError(f"{', '.join(damaged)} of scheme {tag} are missing or changed; rerun `qat` for it")
        fields = {k: v for k, v in entry["scheme"].items() if k in Scheme.__dataclass_fields__}
        return Workspace.export_source(self, Scheme(**fields))

    # ---- demo apps -----------------------------------------------------------------
    def bundle(self, platform: str, dest: Path | None = None) -> Path:
        """Copy the verified, intact artifacts, labels, a test sample and their input specs into a demo app."""
        self.require_sound_model()
        dest = Path(dest or APP_DIRS[platform])
        formats = APP_FORMATS[platform]
        chosen = {f: a for f, a in self.manifest["artifacts"].items()
                  if a["format"] in formats and a.get("verification", {}).get("passed")
                  and atomic.intact(self.out / f, a.get("sha256"))}
        if not chosen:
            raise StageError(f"no verified, intact {'/'.join(formats)} artifacts in {self.out}; run `export` first")
        from converters import golden

        n = min(self.cfg.sample_size, len(self.data.test_labels))  # golden outputs first: a failure writes nothing
        outputs = golden.compute({f: (self.out / f, a) for f, a in chosen.items()}, self.data.test_images[:n].numpy(),
                                 lambda a: self._source_for(mf.scheme_tag(a)))
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for stale in dest.iterdir():
                if stale.suffix.lstrip(".") in formats and stale.name not in chosen:
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        except OSError as exc:
            raise atomic.describe_os_error(dest, exc) from exc
        for file in chosen:
            src = self.out / file
            atomic.atomic_write(dest / file, lambda tmp, s=src: shutil.copytree(s, tmp) if s.is_dir() else shutil.copyfile(s, tmp),
                                size_hint=atomic.size_bytes(src))
        data = self.data
        atomic.write_bytes(dest / "test_sample.u8", data.test_images[:n].contiguous().numpy().tobytes())
        atomic.write_json(dest / "test_sample.json", {
            "count": n, "shape": list(data.test_images.shape[1:]), "dtype": "uint8", "pixels": "test_sample.u8",
            "labels": data.test_labels[:n].tolist()})
        atomic.write_text(dest / "labels.txt", "\n".join(data.labels) + "\n")
        atomic.write_json(dest / "models.json", {"schema_version": 1, "run_id": self.manifest.get("run_id"), "models": [
            {"file": f, "backend": a["backend"], "quant": a["quant"], "input": a["input"], "output": a["output"]}
            for f, a in chosen.items()]})
        golden.write(dest, outputs, self.manifest.get("run_id"))
        say(f"bundle: {len(chosen)} models, labels, {n} test images and the host's outputs on them -> {dest}")
        return dest


def say_verdict(file: str, result: dict, detail: str) -> None:
    """One console line per verified file: accuracy, agreement with its interval and n, and what the data show
    (every check within its threshold, or which are within noise and about how many images would decide them);
    a line per failure after it. The manifest and report.md hold each verdict in full."""
    verdicts = result.get("verdicts", [])
    agreement = next((v for v in verdicts if v["method"] == "Clopper-Pearson"), None)
    interval = f" [{100 * agreement['low']:.2f}, {100 * agreement['high']:.2f}]%, n={agreement['n']}" if agreement else ""
    undecided = [v for v in verdicts if v["outcome"] == "inconclusive"]
    if not result["passed"]:
        outcome = "FAILED"
    elif undecided:
        needed = [v["needed"] for v in undecided if v.get("needed")]
        names = [v["name"] if v["name"].startswith("quantization") else v["name"].split(" with ")[0].split(" vs ")[0]
                 for v in undecided]
        outcome = (f"within noise on {', '.join(names)}"
                   + (f" (~{max(needed):,} images would decide)" if needed else ""))
    else:
        outcome = "every check shown within its threshold" if verdicts else ""
    say(f"[{'✓' if result['passed'] else 'x'}] verify: {file}: accuracy {result['accuracy']:.4f}, agreement "
        f"{100 * result['agreement']:.2f}%{interval}: {outcome}; {detail}")
    failures = result["failures"]
    if failures:  # at most two more console lines; every failure is in the manifest and report.md
        more = f" (and {len(failures) - 1} more failed check(s): report.md, Verdicts)" if len(failures) > 1 else ""
        say_brief(f"    FAILED: {file}: {failures[0]}{more}", lines=2)
