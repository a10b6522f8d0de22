"""The pipeline's stages over one output directory: train, qat, export (+ verify), bundle.

Each stage records a key of the settings it depends on in OUT/manifest.json and reuses
its result when the key still matches, so `make export-ios` after `make export-android`
does not retrain. `--force` re-runs them.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from core import io as atomic
from core import manifest as mf
from core import distributed, loaders, models, qat, train

from . import report
from core.config import RunConfig
from core.device import check_amp, for_quantization
from core.evaluate import accuracy, predict
from core.recipe import Recipe
from core.workspace import CHECKPOINT, Workspace

TRAIN_SETTINGS = ("dataset", "model", "weights", "image_size", "limit_train", "limit_test", "batch_size", "lr", "seed",
                  "optimizer", "momentum", "weight_decay", "lr_schedule", "lr_gamma", "warmup_epochs", "label_smoothing",
                  "augment", "augment_min_scale", "stats_images")
QAT_SETTINGS = ("qat_epochs", "qat_max_steps", "qat_lr", "freeze_bn_at", "freeze_observers_at", "calib_batches")
APP_DIRS = {"android": Path("android_demo/app/src/main/assets"), "ios": Path("ios_demo/Resources")}
APP_FORMATS = {"android": ("pte", "tflite"), "ios": ("mlpackage", "pte")}


class StageError(RuntimeError):
    """A stage was asked for before the one it needs."""


def run_by_every_rank(stage):
    """A stage every torchrun process runs (training is collective); rank 0 alone writes OUT,
    and the others wait for it, then read the manifest it wrote. One process: no change."""
    @functools.wraps(stage)
    def run(self, *args, **kwargs):
        ctx = self.ctx  # device and process group first: a bad --device fails before any data is read
        if ctx.distributed:  # rank 0 downloads or unpacks the dataset first; the others then read it
            if ctx.is_main:
                self.data
            distributed.barrier()
        result = stage(self, *args, **kwargs)
        if ctx.distributed:
            distributed.barrier()
            self.manifest = mf.load(self.out)
        return result

    return run


class Pipeline(Workspace):
    def __init__(self, cfg: RunConfig):
        atomic.ensure_writable_dir(Path(cfg.out))
        super().__init__(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

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

    def _save(self) -> None:
        self.manifest["config"] = self.cfg.to_dict()
        mf.save(self.out, self.manifest)

    def _evaluate(self, fn, on_device: bool = True) -> float:
        """Test accuracy; float models run on the training device, quantized programs on the CPU."""
        device = self.ctx.device if on_device else None
        if device is not None and isinstance(fn, torch.nn.Module):
            fn = fn.to(device)
        return accuracy(predict(fn, self.data, device=device), self.data.test_labels.numpy())

    # ---- train ---------------------------------------------------------------------
    @run_by_every_rank
    def train(self) -> None:
        cfg, data = self.cfg, self.data
        key, stage = self.train_key(), self._stage("train")
        ckpt = self.out / CHECKPOINT
        if (not cfg.force and not cfg.resume and stage.get("key") == key
                and stage.get("epochs_done") == cfg.epochs and ckpt.exists()):
            train.load_checkpoint(ckpt)  # a corrupt checkpoint is an error, never silently replaced
            print(f"train: reusing {ckpt} ({cfg.epochs} epochs, test accuracy {self.manifest['accuracy']['fp32']:.4f})")
            return
        train.seed_everything(cfg.seed)
        model = models.build(cfg.model, len(data.labels), cfg.weights)
        meta = {"model": cfg.model, "labels": data.labels, "mean": data.mean, "std": data.std, "input_shape": list(self.shape)}
        start = time.perf_counter()
        loader = self.train_loader(train.shuffle_seed(cfg.seed))
        result = train.train_fp32(model, loader, epochs=cfg.epochs, lr=cfg.lr, checkpoint=ckpt, key=key, meta=meta,
                                  resume=cfg.resume, recipe=Recipe.from_config(cfg), amp=cfg.amp, sync_bn=cfg.sync_bn)
        if not self.ctx.is_main:
            return
        if not ckpt.exists():  # epochs == 0: keep the initial weights as the checkpoint
            train.save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": 0, "key": key, "history": [], "meta": meta})
        fp32_acc = self._evaluate(result.model.eval())
        result.model.to("cpu")
        print(f"train: fp32 test accuracy {fp32_acc:.4f} on {len(data.test_labels)} {data.name} images")
        self.manifest.update({
            "run_id": f"{mf.now().replace(':', '').replace('-', '')[:15]}-{key[:8]}",
            "dataset": data.info(),
            "model": {"name": cfg.model, "input_shape": list(self.shape),
                      "parameters": sum(p.numel() for p in result.model.parameters()),
                      "macs": models.count_macs(result.model, self.shape)},
            "accuracy": {"fp32": fp32_acc},
            "artifacts": {}, "backends": {},
        })
        self.manifest["stages"] = {"train": {
            "key": key, "checkpoint": str(CHECKPOINT), "epochs_done": result.epochs_done,
            "images_per_s": result.images_per_s, "history": result.history, "compute": self.compute(loader),
            "wall_time_s": time.perf_counter() - start}}
        self._save()

    # ---- qat -----------------------------------------------------------------------
    @run_by_every_rank
    def qat(self) -> None:
        cfg, data = self.cfg, self.data
        key, stage = self.qat_key(), self._stage("qat")
        files = [self.out / qat.QAT_FOLDED, self.out / qat.QAT_UNFOLDED, self.out / qat.QAT_FLOAT]
        if not cfg.force and stage.get("key") == key and all(f.exists() for f in files):
            acc = self.manifest["accuracy"]
            print(f"qat: reusing {self.out} (fp32 {acc['fp32']:.4f}, PTQ {acc['ptq']:.4f}, QAT {acc['qat']:.4f})")
            return
        if self._stage("train").get("key") != self.train_key():
            raise train.CheckpointError(f"{self.out / CHECKPOINT} was not trained with these settings; run `train` first")
        model = self.fp32_model()
        start = time.perf_counter()
        train.seed_everything(cfg.seed)
        schedule = qat.QATSchedule(cfg.qat_epochs, cfg.qat_max_steps, cfg.qat_lr, cfg.batch_size, cfg.seed,
                                   cfg.freeze_bn_at, cfg.freeze_observers_at)
        ctx = dataclasses.replace(self.ctx, device=for_quantization(self.ctx.device, cfg.device))
        loader = self.train_loader(schedule.shuffle_seed, ctx)
        prepared, stats = qat.qat(model, loader, self.shape, schedule, Recipe.from_config(cfg))
        if not self.ctx.is_main:
            return
        # The PTQ baseline calibrates on the device; quantized programs are evaluated on the CPU.
        ptq_acc = self._evaluate(qat.ptq(model, data, self.shape, cfg.calib_batches, cfg.batch_size, ctx.device),
                                 on_device=False)
        qat_acc = self._evaluate(qat.convert(prepared), on_device=False)
        qat.save(prepared, model, self.shape, self.out)
        qat_float = models.build(cfg.model, len(data.labels))
        qat_float.load_state_dict(qat.float_weights(prepared, model))
        qat_float_acc = self._evaluate(qat_float.eval())
        acc = self.manifest["accuracy"]
        acc.update({"ptq": ptq_acc, "qat": qat_acc, "qat_float": qat_float_acc})
        print(f"qat: test accuracy fp32 {acc['fp32']:.4f} | PTQ int8 {ptq_acc:.4f} | QAT int8 {qat_acc:.4f} "
              f"| QAT weights in float {qat_float_acc:.4f}")
        self.manifest["stages"] = {"train": self._stage("train"), "qat": {
            "key": key, "files": [f.name for f in files], "steps": stats["steps"], "events": stats["events"],
            "images_per_s": stats["images_per_s"], "history": stats["history"],
            "compute": self.compute(loader), "synced_across_ranks": stats["synced_across_ranks"],
            "wall_time_s": time.perf_counter() - start}}
        self.manifest["quantization_error"] = qat.weight_quantization_error(prepared)
        self.manifest["artifacts"], self.manifest["backends"] = {}, {}
        self._save()

    # ---- export and verify ---------------------------------------------------------
    def export_source(self):
        if self._stage("qat").get("key") != self.qat_key():
            raise qat.QuantError(f"{self.out} holds no QAT result for these settings; run `qat` first (or `run`)")
        return super().export_source()

    def export(self) -> bool:
        """Export with every selected backend; a failing backend is reported and the others still run."""
        import converters
        from converters import ConversionError

        source, ok = self.export_source(), True
        selected = converters.select(self.cfg.backends)
        for conv in selected:
            key = f"{self.qat_key()}/{self.cfg.key(*conv.settings)}"
            previous = self.manifest["backends"].get(conv.name, {})
            files = [f for f, a in self.manifest["artifacts"].items() if a["backend"] == conv.name]
            if (not self.cfg.force and previous.get("key") == key and previous.get("status") == "ok"
                    and files and all((self.out / f).exists() for f in files)):
                print(f"export: {conv.name}: reusing {', '.join(files)}")
                continue
            start = time.perf_counter()
            try:
                conv.check_dependencies()
                artifacts = conv.export(source, self.out, self.cfg)
            except Exception as exc:  # a failing backend must not stop the others
                ok = False
                reason = str(exc) if isinstance(exc, ConversionError) else f"{type(exc).__name__}: {exc}"
                print(f"[x] export: {conv.name} FAILED: {reason}")
                self.manifest["backends"][conv.name] = {"key": key, "status": "failed", "reason": reason}
                self._save()
                continue
            for f in files:
                self.manifest["artifacts"].pop(f, None)
            for a in artifacts:
                path = self.out / a.file
                self.manifest["artifacts"][a.file] = {**a.to_dict(), "bytes": atomic.size_bytes(path),
                                                      "sha256": atomic.sha256(path)}
                print(f"[✓] export: {a.file} ({atomic.size_bytes(path) / 1e6:.2f} MB, {a.export_seconds:.1f} s)")
            self.manifest["backends"][conv.name] = {"key": key, "status": "ok", "reason": None,
                                                    "wall_time_s": time.perf_counter() - start}
            self._save()
        atomic.write_text(self.out / "labels.txt", "\n".join(self.data.labels) + "\n")
        verified = self.verify([c.name for c in selected], source)
        return ok and verified

    def verify(self, backends: list[str] | None = None, source=None) -> bool:
        """Run each artifact over the whole test set; compare with its PyTorch reference."""
        from converters.verify import Thresholds, cross_agreement, run_artifact, verify

        source = source or self.export_source()
        data, labels = self.data, self.data.test_labels.numpy()
        thresholds = Thresholds(self.cfg.min_agreement, self.cfg.max_acc_drop)
        references = {"qat": source.qat_folded, "fp32": source.fp32_model, "qat_float": source.qat_float_model}
        ref_logits: dict[str, np.ndarray] = {}
        logits_by_file, ok = {}, True
        selected = {f: a for f, a in self.manifest["artifacts"].items() if backends is None or a["backend"] in backends}
        if not selected:
            print("verify: no artifacts to verify; run `export` first")
            return False
        for file, artifact in selected.items():
            path = self.out / file
            if not path.exists():
                artifact["verification"] = {"passed": False, "failures": [f"{path} is missing"]}
                print(f"[x] verify: {file}: missing; re-run export")
                ok = False
                continue
            for name in {artifact["reference"], "qat"}:
                if name not in ref_logits:
                    ref_logits[name] = predict(references[name], data)
            start = time.perf_counter()
            try:
                logits, method = run_artifact(path, artifact, source, data)
            except Exception as exc:
                artifact["verification"] = {"passed": False, "failures": [f"could not run: {type(exc).__name__}: {exc}"]}
                print(f"[x] verify: {file}: could not run it: {exc}")
                ok = False
                continue
            result = verify(artifact, logits, ref_logits[artifact["reference"]], labels, thresholds)
            result.update({"method": method, "images": len(labels), "seconds": time.perf_counter() - start,
                           "agreement_with_qat": float((logits.argmax(1) == ref_logits["qat"].argmax(1)).mean())})
            artifact["verification"] = result
            logits_by_file[file] = logits
            mark = "✓" if result["passed"] else "x"
            print(f"[{mark}] verify: {file}: accuracy {result['accuracy']:.4f}, agreement with {artifact['reference']} "
                  f"{result['agreement']:.4f}, max |dlogit| {result['max_abs_logit_diff']:.4g} ({method})")
            for failure in result["failures"]:
                print(f"    FAILED: {file}: {failure}")
            ok &= result["passed"]
        self.manifest["verification"] = {
            "thresholds": {"min_agreement": thresholds.min_agreement, "max_acc_drop_pp": thresholds.max_acc_drop_pp},
            "cross_backend": {**self.manifest.get("verification", {}).get("cross_backend", {}),
                              **cross_agreement(logits_by_file, self.manifest["artifacts"])},
        }
        self.manifest["verification"]["passed"] = all(a.get("verification", {}).get("passed") for a in self.manifest["artifacts"].values())
        self._save()
        report.write_export_report(self.out, self.manifest)
        return ok

    # ---- demo apps -----------------------------------------------------------------
    def bundle(self, platform: str, dest: Path | None = None) -> Path:
        """Copy the verified artifacts, labels, a test sample and their input specs into a demo app."""
        dest = Path(dest or APP_DIRS[platform])
        dest.mkdir(parents=True, exist_ok=True)
        formats = APP_FORMATS[platform]
        chosen = {f: a for f, a in self.manifest["artifacts"].items()
                  if a["format"] in formats and a.get("verification", {}).get("passed")}
        if not chosen:
            raise StageError(f"no verified {'/'.join(formats)} artifacts in {self.out}; run `export` first")
        for stale in dest.iterdir():
            if stale.suffix.lstrip(".") in formats and stale.name not in chosen:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        for file in chosen:
            src = self.out / file
            atomic.atomic_write(dest / file, lambda tmp, s=src: shutil.copytree(s, tmp) if s.is_dir() else shutil.copyfile(s, tmp))
        data = self.data
        n = min(self.cfg.sample_size, len(data.test_labels))
        atomic.write_bytes(dest / "test_sample.u8", data.test_images[:n].contiguous().numpy().tobytes())
        atomic.write_json(dest / "test_sample.json", {
            "count": n, "shape": list(data.test_images.shape[1:]), "dtype": "uint8", "pixels": "test_sample.u8",
            "labels": data.test_labels[:n].tolist()})
        atomic.write_text(dest / "labels.txt", "\n".join(data.labels) + "\n")
        atomic.write_json(dest / "models.json", {"schema_version": 1, "run_id": self.manifest.get("run_id"), "models": [
            {"file": f, "backend": a["backend"], "quant": a["quant"], "input": a["input"], "output": a["output"]}
            for f, a in chosen.items()]})
        print(f"bundle: {len(chosen)} models, labels and {n} test images -> {dest}")
        return dest

