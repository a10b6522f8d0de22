"""Run by torchrun in tests/core/test_distributed.py, once per rank (not a test module itself).

    ddp_worker.py cli LOGDIR COMMAND [flags]   the real CLI; each rank logs the files it writes to
                                               LOGDIR/writes-rank<R>.txt; CRASH_RANK=R makes rank R die
                                               (os._exit) at the second step of epoch CRASH_EPOCH (1-based)
    ddp_worker.py qat-sync RESULT.json         QAT of a small BatchNorm net, without and with the
                                               cross-rank sync; rank 0 writes what differs between ranks
                                               (DISTILL=1: QAT distils from the fp32 net, each rank on its shard)
"""

import json
import os
import sys
from pathlib import Path

RANK = int(os.environ["RANK"])


def cli(logdir: Path, argv: list[str]) -> int:
    from core import io as atomic
    from core import train
    from pipeline import cli as pipeline_cli

    original_write = atomic.atomic_write

    def recording_write(path, write, *args, **kwargs):
        with open(logdir / f"writes-rank{RANK}.txt", "a") as log:
            log.write(f"{path}\n")
        return original_write(path, write, *args, **kwargs)

    atomic.atomic_write = recording_write
    if os.environ.get("CRASH_RANK") == str(RANK):
        original_epoch, crash_epoch = train.run_epoch, int(os.environ["CRASH_EPOCH"]) - 1

        def crashing_epoch(model, optimizer, loader, epoch, *args, **kwargs):
            def die(step):
                if epoch == crash_epoch and step == 1:
                    os._exit(17)
            return original_epoch(model, optimizer, loader, epoch, *args, on_step=die, **kwargs)

        train.run_epoch = crashing_epoch
    return pipeline_cli.main(argv)


def qat_sync(result: Path) -> int:
    import copy

    import torch
    import torch.distributed as dist
    import torch.nn as nn

    from core import distributed, qat
    from core.data import DataBundle
    from core.distill import Distillation
    from core.loaders import TrainLoader

    ctx = distributed.setup("cpu")
    g = torch.Generator().manual_seed(0)  # random digits-shaped data: the ranks' shards differ, which is all this needs
    bundle = DataBundle("random", "torch.randint", torch.randint(0, 256, (128, 1, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (128,), generator=g), torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
                        torch.zeros(1, dtype=torch.int64), [str(i) for i in range(10)], mean=[0.5], std=[0.29])
    real_sync = (distributed.sync_observers, distributed.sync_batchnorm)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 12 * 12, 10))
    prepared_once = qat.prepare(model, (1, 28, 28))  # the export is the slow part: both runs start from a copy of it
    qat.prepare = lambda *args, **kwargs: copy.deepcopy(prepared_once)

    def run(sync: bool, freeze_at: float) -> dict:
        distributed.sync_observers, distributed.sync_batchnorm = real_sync if sync else (lambda m, c: 0, lambda m, c: 0)
        schedule = qat.QATSchedule(epochs=1.0, max_steps=4, lr=1e-3, batch_size=16, seed=0,
                                   freeze_bn_at=freeze_at, freeze_observers_at=freeze_at)
        loader = TrainLoader(bundle, 16, seed=schedule.shuffle_seed, ctx=ctx)
        distill = Distillation() if os.environ.get("DISTILL") else None
        prepared, stats = qat.qat(model, loader, (1, 28, 28), schedule, distill=distill)
        state = {}
        for name, fq in distributed.observers(prepared):
            obs = fq.activation_post_process
            state.update({f"{name}.min": obs.min_val, f"{name}.max": obs.max_val, f"{name}.scale": fq.scale,
                          f"{name}.zero_point": fq.zero_point})
            scale, zero_point = fq.calculate_qparams()  # what convert_pt2e will bake in
            state[f"{name}.qparams_match"] = torch.tensor(bool(torch.equal(scale, fq.scale) and
                                                               torch.equal(zero_point.to(fq.zero_point.dtype), fq.zero_point)))
        state.update({f"bn:{n}": t for n, t in distributed.batchnorm_statistics(prepared)})
        states = [None, None]
        dist.all_gather_object(states, {k: v.detach().clone() for k, v in state.items()})
        differ = sorted(k for k in states[0] if not torch.equal(states[0][k], states[1][k]))
        return {"tensors": len(states[0]), "observers": len(distributed.observers(prepared)),
                "batchnorm": sum(k.startswith("bn:") for k in states[0]), "differ": differ,
                "qparams_match": all(bool(v) for k, v in states[0].items() if k.endswith("qparams_match")),
                "events": stats["events"], "synced": stats["synced_across_ranks"], "steps": stats["steps"],
                "distill": stats["distill"], "loss": stats["history"][0]["loss"]}

    # Freezing at 1.0 keeps observers and BatchNorm statistics updating to the last step, where ranks diverge.
    report = {"without_sync": run(False, 1.0), "with_sync": run(True, 1.0)}
    if ctx.is_main:
        result.write_text(json.dumps(report, indent=1))
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "cli":
        sys.exit(cli(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit(qat_sync(Path(sys.argv[2])))
