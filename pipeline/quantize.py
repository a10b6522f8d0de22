"""The `qat` stage: the fp32 model quantized with one scheme (PTQ, QAT, or the better of the two) into
OUT/quantized/<tag>/; other schemes already in OUT stay as they are."""

from __future__ import annotations

import dataclasses
import time

from core import io as atomic
from core import manifest as mf
from core import quantize, statistics, train
from core.console import say
from core.distill import Distillation
from core.device import for_quantization
from core.recipe import Recipe
from core.schemes import Scheme
from core.workspace import CHECKPOINT

from . import keep_float
from .state import OutState, run_by_every_rank


@run_by_every_rank
def run(pipeline: OutState) -> None:
    """Quantize the fp32 model with the configured scheme: PTQ, QAT where the scheme trains, and keep the
    better under --quant-mode auto. Other schemes already in OUT stay as they are."""
    cfg, data = pipeline.cfg, pipeline.data
    pipeline.require_sound_model()
    scheme, key = pipeline.scheme(), pipeline.quant_key()
    tag, entry = scheme.tag, pipeline.quant_stage(scheme.tag)
    if not cfg.force and entry.get("status") == "done" and entry.get("key") == key:
        damaged = pipeline.quantized_damaged(tag)
        if not damaged:
            acc = pipeline.manifest["accuracy"][tag]
            say(f"qat: reusing {tag} ({acc['chosen'].upper()} {acc['quantized']:.4f}; fp32 "
                f"{pipeline.manifest['accuracy']['fp32']:.4f})")
            return
        say(f"qat: {tag}: {', '.join(damaged)} missing or changed since they were written; quantizing again")
    if not pipeline.stage_done("train", pipeline.train_key()):
        raise train.CheckpointError(f"{pipeline.out / CHECKPOINT} was not trained with these settings; run `train` first")
    model = pipeline.fp32_model()
    kept, kept_choice = keep_float.choose(pipeline)  # before anything is retired: a bad layer name changes nothing
    replaced = [f for f, a in pipeline.manifest["artifacts"].items() if mf.scheme_tag(a) == tag]
    # Files of this scheme from other settings go aside (with the bench results that measured them);
    # other schemes in OUT stay.
    parity_of_tag = ((pipeline.manifest.get("parity") or {}).get("scheme") or {}).get("tag") == tag
    pipeline.retire(replaced + (["bench"] if replaced else []) + (["parity"] if parity_of_tag else []), f"qat: {tag}")
    if parity_of_tag:
        pipeline.manifest.pop("parity")
    for f in [f for f, a in pipeline.manifest["artifacts"].items() if mf.scheme_tag(a) == tag]:
        pipeline.manifest["artifacts"].pop(f)
    pipeline.manifest["backends"] = {k: v for k, v in pipeline.manifest["backends"].items() if not k.endswith(f":{tag}")}
    pipeline.manifest["stages"].setdefault("quantize", {})[tag] = {"status": "running", "key": key}
    pipeline.save()
    start = time.perf_counter()
    qdevice = for_quantization(pipeline.ctx.device, cfg.device)  # where calibration and QAT run
    results, accuracy, answers, loader = {}, {}, {}, None
    if pipeline.ctx.is_main:  # PTQ: rank 0 alone calibrates, on the batches one process would use
        ptq = quantize.post_training(model, scheme, data, pipeline.shape, cfg.calib_batches, cfg.batch_size,
                                     keep_float=kept, device=qdevice)
        results["ptq"], answers["ptq"] = ptq, pipeline.answers(ptq.program, on_device=False)
        accuracy["ptq"] = float(answers["ptq"].mean())
    if scheme.trainable and scheme.mode in ("auto", "qat"):
        train.seed_everything(cfg.seed)
        schedule = pipeline.schedule()
        loader = pipeline.train_loader(schedule.shuffle_seed, dataclasses.replace(pipeline.ctx, device=qdevice))
        results["qat"] = quantize.quant_aware(model, scheme, loader, pipeline.shape, schedule,
                                              recipe=Recipe.from_config(cfg), distill=Distillation.from_config(cfg),
                                              keep_float=kept)
        if not pipeline.ctx.is_main:
            return  # rank 0 converts, evaluates and writes
        answers["qat"] = pipeline.answers(results["qat"].program, on_device=False)
        accuracy["qat"] = float(answers["qat"].mean())
    if not pipeline.ctx.is_main:
        return
    chosen, accuracy["choice"] = choose(scheme, pipeline.manifest["accuracy"]["fp32"], accuracy, answers,
                                        pipeline.cfg.confidence)
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
    paths = quantize.save(result, pipeline.shape, pipeline.quantized_folder(tag))
    accuracy.update({"quantized": accuracy[chosen], "chosen": chosen,
                     "float": pipeline.evaluate(result.float_model.eval())})
    result.float_model.to("cpu")
    pipeline.manifest["accuracy"][tag] = accuracy
    for name, correct in answers.items():
        pipeline.record_answers(f"{tag}:{name}", correct)
    qat_run = results.get("qat")
    compute = pipeline.compute(loader) if loader else dataclasses.replace(pipeline.ctx, device=qdevice).describe()
    pipeline.manifest["stages"]["quantize"][tag] = {
        "status": "done", "key": key, "scheme": scheme.describe(), "chosen": chosen,
        "sha256": {name: atomic.sha256(path) for name, path in paths.items()},
        "weight_error": result.weight_error, "grid_snap": quantize.grid_snap(result),
        "steps": qat_run.stats["steps"] if qat_run else 0, "events": qat_run.stats["events"] if qat_run else [],
        "images_per_s": qat_run.stats["images_per_s"] if qat_run else None,
        "history": qat_run.stats["history"] if qat_run else [], "compute": compute,
        "synced_across_ranks": qat_run.stats["synced_across_ranks"] if qat_run else None,
        "float_bn_recalibration": float_bn,
        "keep_float": {"setting": cfg.keep_float, "layers": list(kept), "choice": kept_choice} if kept_choice else None,
        "distill": qat_run.stats.get("distill") if qat_run else None,
        "wall_time_s": time.perf_counter() - start}
    pipeline.save()


def choose(scheme: Scheme, fp32: float, accuracy: dict, answers: dict, confidence: float) -> tuple[str, dict | None]:
    """PTQ or QAT: what --quant-mode asks for, or under auto QAT unless PTQ is significantly better on the same
    test images (exact McNemar test at 1 - --confidence); the test is returned for the manifest."""
    ptq, qat_acc = accuracy["ptq"], accuracy.get("qat")
    line = f"qat: {scheme.tag}: test accuracy fp32 {fp32:.4f} | PTQ {ptq:.4f}"
    if qat_acc is None:
        say(f"{line} (QAT not run: {'--quant-mode ptq' if scheme.mode == 'ptq' else 'post-training scheme'})")
        return "ptq", None
    test = statistics.mcnemar(answers["ptq"], answers["qat"])
    alpha = 1.0 - confidence
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
