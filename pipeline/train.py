"""The `train` stage: the fp32 model, trained (or resumed) into OUT/checkpoints/fp32.pt."""

from __future__ import annotations

import time

from core import io as atomic
from core import manifest as mf
from core import models, rewrites, statistics, train
from core.console import say
from core.data import DataError
from core.recipe import Recipe
from core.workspace import CHECKPOINT

from .state import OutState, run_by_every_rank


@run_by_every_rank
def run(pipeline: OutState) -> None:
    """Train the fp32 model (or reuse it when OUT holds it for these settings), record its accuracy and answers."""
    cfg, data = pipeline.cfg, pipeline.data
    key, stage = pipeline.train_key(), pipeline.stage_entry("train")
    ckpt = pipeline.out / CHECKPOINT
    # --resume of a run that already finished with these settings has nothing to do: the same as a plain rerun
    if not cfg.force and pipeline.stage_done("train", key) and stage.get("epochs_done") == cfg.epochs:
        pipeline.checkpoint_state()  # an overwritten or corrupt checkpoint is an error, never silently reused
        say(f"train: reusing {ckpt} ({cfg.epochs} epochs, test accuracy {pipeline.manifest['accuracy']['fp32']:.4f})")
        pipeline.require_sound_model()
        return
    model, graph_rewrites = pipeline.checked_model()  # a model that cannot work stops here, before anything is rewritten
    if cfg.resume and ckpt.exists():  # a corrupt checkpoint, or one of other settings: refused before anything moves
        train.resumable(ckpt, key)
    if getattr(data, "streamed", False):  # read only after the last epoch: a bad test image is found now instead
        say(f"data: {data.check_readable('test')} test images decode")
    keep = [] if cfg.resume else [str(CHECKPOINT)]  # --resume continues the checkpoint; a new run keeps the old one aside
    same = stage.get("key") == key
    pipeline.retire(pipeline.downstream_of("train") + keep, "train",
                    "made from the earlier training run" if same else "that no longer match the settings")
    pipeline.manifest.update({"accuracy": {}, "artifacts": {}, "backends": {}, "verification": {}, "per_image": {}})
    pipeline.manifest.pop("parity", None)  # it compared the old model's files
    pipeline.manifest["stages"] = {"train": {"status": "running", "key": key}}
    pipeline.save()
    meta = {"model": cfg.model, "labels": data.labels, "mean": data.mean, "std": data.std, "input_shape": list(pipeline.shape)}
    start = time.perf_counter()
    loader = pipeline.train_loader(train.shuffle_seed(cfg.seed))
    try:
        result = train.train_fp32(model, loader, epochs=cfg.epochs, lr=cfg.lr, checkpoint=ckpt, key=key, meta=meta,
                                  resume=cfg.resume, recipe=Recipe.from_config(cfg), amp=cfg.amp,
                                  sync_bn=cfg.sync_bn, bn_batches=cfg.bn_recalibration)
    except DataError as exc:
        if not ckpt.exists():
            raise
        raise DataError(f"{exc} (the epochs finished so far are in {ckpt}: after fixing the file, "
                        "`train --resume` continues from the last of them)") from None
    if not pipeline.ctx.is_main:
        return
    if result.epochs_done == 0:  # epochs == 0: keep the initial weights as the checkpoint
        train.save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": 0, "key": key, "history": [], "meta": meta})
    fp32_correct = pipeline.answers(result.model.eval())
    fp32_acc = float(fp32_correct.mean())
    chance = statistics.better_than_chance(int(fp32_correct.sum()), len(data.test_labels), len(data.labels))
    result.model.to("cpu")
    _, module_rewrites, float_diff = rewrites.apply(result.model, pipeline.shape)
    say(f"train: fp32 test accuracy {fp32_acc:.4f} on {len(data.test_labels)} {data.name} images")
    pipeline.manifest.update({
        "run_id": f"{mf.now().replace(':', '').replace('-', '')[:15]}-{key[:8]}",
        "dataset": data.info(),
        "model": {"name": cfg.model, "input_shape": list(pipeline.shape),
                  "parameters": sum(p.numel() for p in result.model.parameters()),
                  "macs": models.count_macs(result.model, pipeline.shape),
                  "rewrites": module_rewrites + graph_rewrites, "rewrite_float_diff": float_diff},
        "accuracy": {"fp32": fp32_acc},
    })
    pipeline.record_answers("fp32", fp32_correct)
    pipeline.manifest["stages"] = {"train": {
        "status": "done", "key": key, "checkpoint": str(CHECKPOINT), "sha256": atomic.sha256(ckpt),
        "epochs_done": result.epochs_done, "images_per_s": result.images_per_s, "history": result.history,
        "bn_recalibration": result.bn_recalibration, "better_than_chance": chance,
        "diverged": train.divergence(result.history, len(data.labels)),
        "compute": pipeline.compute(loader), "wall_time_s": time.perf_counter() - start}}
    pipeline.save()
    pipeline.require_sound_model()
