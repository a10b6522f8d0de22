"""`make bench-train`: what training costs and gains across processes, and what the pipeline's loop costs.

1. Training images/s at world size 1 and 2 on this host's CPU cores (gloo): one process with all
   cores' threads, one process with one thread, two processes with one thread each (the same
   per-process batch, and half of it so that the global batch matches). The two-process rows
   against the one-process rows show what DistributedDataParallel itself costs here.
2. On a host with CUDA GPUs: images/s at 1, 2, 4, ... GPUs (nccl) and the scaling efficiency
   ips(n) / (n * ips(1)). Without a GPU the section says so; nothing is simulated.
3. The pipeline's loop against a bare PyTorch loop (fp32 and QAT), as `benchmarks.training`
   compares them.

Every multi-process row runs in a fresh `torchrun --standalone` job of this module's `child`
command, which trains with the pipeline's own code (`TrainLoader`, `distributed.wrap`,
`run_epoch`) and writes its measurement as JSON. Output: OUT/bench/training/results.json and
report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core import data as datasets
from core import distributed, models, qat
from core import io as atomic
from core import manifest as mf
from core.loaders import TrainLoader
from core.train import run_epoch

from . import training

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path("bench") / "training"
CHILD_TIMEOUT_S = 1800


# ---- one measurement, in every process of a torchrun job --------------------------------------
def child(args: argparse.Namespace) -> None:
    ctx = distributed.setup(args.device)
    torch.set_num_threads(args.threads)
    shape = models.input_shape(args.model)
    data = datasets.load(args.dataset, args.data_dir, shape[0], shape[1], limit_train=args.limit_train, limit_test=1)
    torch.manual_seed(0)
    model = models.build(args.model, len(data.labels))
    if args.mode == "qat":
        model = qat.prepare(model, shape)
    model.to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    net = distributed.wrap(model, ctx)
    loader = TrainLoader(data, args.batch_size, seed=0, ctx=ctx)
    run_epoch(net, optimizer, loader, 0, desc="warm-up", max_steps=args.warmup)
    distributed.barrier()
    cpu = time.process_time()
    stats = run_epoch(net, optimizer, loader, 1, desc="timed", max_steps=args.steps)
    cpu_total = distributed.all_reduce_sum([time.process_time() - cpu], ctx)[0]
    if ctx.is_main:
        atomic.write_json(Path(args.result), {
            "mode": args.mode, "device": ctx.device.type, "world_size": ctx.world_size, "threads_per_process": args.threads,
            "batch_per_process": args.batch_size, "global_batch": args.batch_size * ctx.world_size,
            "steps": stats["steps"], "images": stats["images"], "seconds": stats["seconds"],
            "images_per_s": stats["images_per_s"], "cpu_ms_per_image": 1e3 * cpu_total / stats["images"]})
    distributed.cleanup()


def launch(mode: str, device: str, world: int, threads: int, batch: int, args: argparse.Namespace, work: Path) -> dict:
    """Start one torchrun job of `child`; return what its rank 0 measured."""
    result = work / f"{mode}-{device}-w{world}-t{threads}-b{batch}-{time.monotonic_ns()}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               "-m", "benchmarks.distributed", "child", "--mode", mode, "--device", device, "--threads", str(threads),
               "--batch-size", str(batch), "--dataset", args.dataset, "--data-dir", args.data_dir, "--model", args.model,
               "--limit-train", str(args.limit_train), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--result", str(result)]
    print(f"bench-train: {mode} on {device}, world size {world}, {threads} thread(s) each, batch {batch} per process",
          flush=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0 or not result.exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"torchrun job ({mode}, {device}, world size {world}) failed with exit {done.returncode}:\n{tail}")
    return json.loads(result.read_text())


def median_row(runs: list[dict]) -> dict:
    row = dict(runs[0])
    for key in ("images_per_s", "cpu_ms_per_image", "seconds"):
        row[key] = statistics.median(r[key] for r in runs)
    row["runs_images_per_s"] = [round(r["images_per_s"], 2) for r in runs]
    return row


# ---- the sections -------------------------------------------------------------------------------
def cpu_scaling(args: argparse.Namespace, work: Path) -> dict:
    cores = os.cpu_count() or 1
    half = max(args.batch_size // 2, 2)
    configs = {mode: [(1, cores, args.batch_size), (1, 1, args.batch_size), (2, 1, args.batch_size), (2, 1, half)]
               for mode in args.modes}
    runs: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for mode, rows in configs.items():  # alternate the order between repeats: the host drifts
            for config in (rows if repeat % 2 == 0 else rows[::-1]):
                runs.setdefault((mode, *config), []).append(launch(mode, "cpu", *config, args, work))
    rows = [median_row(r) for r in runs.values()]
    summary = {}
    for mode in args.modes:
        by = {(r["world_size"], r["threads_per_process"], r["batch_per_process"]): r for r in rows if r["mode"] == mode}
        one_all, one_one = by[(1, cores, args.batch_size)], by[(1, 1, args.batch_size)]
        two = by[(2, 1, args.batch_size)]
        summary[mode] = {
            "world2_vs_world1": two["images_per_s"] / one_all["images_per_s"],
            "world2_same_global_batch_vs_world1": by[(2, 1, half)]["images_per_s"] / one_all["images_per_s"],
            "ddp_efficiency": two["images_per_s"] / (2 * one_one["images_per_s"]),
        }
    return {"cores": cores, "rows": sorted(rows, key=lambda r: (r["mode"], r["world_size"], -r["threads_per_process"])),
            "summary": summary}


def gpu_scaling(args: argparse.Namespace, work: Path) -> dict:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return {"skipped": "no CUDA device on this host (torch.cuda.is_available() is False): "
                           "no GPU figures were measured, none are simulated"}
    sizes = sorted({n for n in (1, 2, 4, 8, 16) if n <= count} | {count})
    rows = [median_row([launch(mode, "cuda", n, 1, args.batch_size, args, work) for _ in range(args.repeats)])
            for mode in args.modes for n in sizes]
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["world_size"] == 1)
        row["scaling_efficiency"] = row["images_per_s"] / (row["world_size"] * base["images_per_s"])
    return {"gpus": count, "gpu": torch.cuda.get_device_name(0), "rows": rows}


def loop_overhead(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.loop_threads or os.cpu_count() or 1)
    shape = models.input_shape(args.model)
    data = datasets.load(args.dataset, args.data_dir, shape[0], shape[1], limit_train=args.limit_train, limit_test=1)
    torch.manual_seed(0)
    model = models.build(args.model, len(data.labels))
    print("bench-train: pipeline loop against a bare loop (fp32, then QAT)", flush=True)
    fp32 = training.entry(*training.fp32_loops(model, data, args.batch_size, 1e-3, args.steps, 0, args.rounds))
    qat_ = training.entry(*training.qat_loops(model, shape, data, args.batch_size, 1e-4, args.steps, 0, args.rounds))
    return {"threads": torch.get_num_threads(), "batch_size": args.batch_size, "steps": args.steps,
            "rounds": args.rounds, "warmup_steps": training.WARMUP_STEPS, "fp32": fp32, "qat": qat_}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---- report -------------------------------------------------------------------------------------
def num(v, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def markdown(results: dict) -> str:
    s, cpu, gpu, loops = results["settings"], results["cpu"], results["gpu"], results["loops"]
    lines = ["# Training throughput", "",
             f"{results['created']} · host: {results['host']['cores']} cores, load average "
             f"{results['host']['load_average_start']} at the start and {results['host']['load_average_end']} at the end "
             f"(a load above the core count means other jobs shared the cores: absolute numbers drift with it) · "
             f"{s['dataset']} ({s['limit_train'] or 'all'} training images), {s['model']}, Adam · "
             f"{s['steps']} timed steps after {s['warmup']} untimed, median of {s['repeats']} run(s) per row.", ""]
    if cpu:
        lines += cpu_lines(cpu)
    if gpu:
        lines += gpu_lines(gpu)
    if loops:
        lines += loop_lines(loops)
    return "\n".join(lines) + "\n"


def cpu_lines(cpu: dict) -> list[str]:
    lines = ["## World size 1 and 2 on the CPU (gloo)", "",
             "| mode | processes | threads each | batch each | global batch | images/s | CPU ms/image | runs (images/s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in cpu["rows"]:
        lines.append(f"| {r['mode']} | {r['world_size']} | {r['threads_per_process']} | {r['batch_per_process']} | "
                     f"{r['global_batch']} | {num(r['images_per_s'])} | {num(r['cpu_ms_per_image'], '.2f')} | "
                     f"{', '.join(str(v) for v in r['runs_images_per_s'])} |")
    lines += ["", "| mode | 2 processes / 1 process (all threads) | same global batch | DDP efficiency: 2 processes / (2 × 1 process, 1 thread) |",
              "|---|---|---|---|"]
    for mode, v in cpu["summary"].items():
        lines.append(f"| {mode} | {num(v['world2_vs_world1'], '.2f')}x | {num(v['world2_same_global_batch_vs_world1'], '.2f')}x "
                     f"| {num(v['ddp_efficiency'], '.2f')} |")
    return lines + [""]


def gpu_lines(gpu: dict) -> list[str]:
    lines = ["## Several GPUs (nccl)", ""]
    if "skipped" in gpu:
        lines.append(f"Not measured: {gpu['skipped']}.")
    else:
        lines += [f"{gpu['gpus']} × {gpu['gpu']}", "", "| mode | GPUs | batch each | images/s | scaling efficiency |",
                  "|---|---|---|---|---|"]
        for r in gpu["rows"]:
            lines.append(f"| {r['mode']} | {r['world_size']} | {r['batch_per_process']} | {num(r['images_per_s'])} | "
                         f"{num(r['scaling_efficiency'], '.2f')} |")
    return lines + [""]


def loop_lines(loops: dict) -> list[str]:
    lines = ["## The pipeline's loop against a bare PyTorch loop", "",
              f"One process, {loops['threads']} threads, batch {loops['batch_size']}, {loops['rounds']} alternating rounds "
              f"of {loops['steps']} steps, each loop on its own copy of the model (see `benchmarks/training.py`). "
              "Target: pipeline / bare >= 0.95.", "",
              "| stage | pipeline (img/s) | bare (img/s) | pipeline / bare (wall) | pipeline / bare (CPU time) | rounds: pipeline | rounds: bare |",
              "|---|---|---|---|---|---|---|"]
    for stage in ("fp32", "qat"):
        e = loops[stage]
        lines.append(f"| {stage} | {num(e['pipeline_loop_images_per_s'])} | {num(e['bare_images_per_s'])} | "
                     f"{num(e['pipeline_vs_bare'], '.3f')} | {num(e.get('pipeline_vs_bare_cpu_time'), '.3f')} | "
                     f"{', '.join(map(str, e.get('pipeline_rounds_images_per_s', [])))} | "
                     f"{', '.join(map(str, e.get('bare_rounds_images_per_s', [])))} |")
    return lines


def bench(args: argparse.Namespace) -> dict:
    out = Path(args.out) / RESULTS_DIR
    atomic.ensure_writable_dir(out)
    load_start, start = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cpu = cpu_scaling(args, Path(tmp)) if "cpu" in args.sections else None
        gpu = gpu_scaling(args, Path(tmp)) if "gpu" in args.sections else None
    loops = loop_overhead(args) if "loops" in args.sections else None
    results = {"created": mf.now(), "versions": mf.tool_versions(),
               "host": {"cores": os.cpu_count(), "load_average_start": load_start, "load_average_end": load_average()},
               "settings": {k: getattr(args, k) for k in ("dataset", "model", "limit_train", "batch_size", "warmup",
                                                          "steps", "repeats", "rounds", "modes", "sections")},
               "cpu": cpu, "gpu": gpu, "loops": loops, "wall_time_s": time.perf_counter() - start}
    atomic.write_json(out / "results.json", results)
    atomic.write_text(out / "report.md", markdown(results))
    print(f"bench-train: wrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="bench", choices=("bench", "child"))
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model", default="convnet")
    p.add_argument("--limit-train", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=2, help="torchrun jobs per CPU/GPU row (median)")
    p.add_argument("--rounds", type=int, default=training.ROUNDS, help="alternating rounds of the loop comparison")
    p.add_argument("--modes", type=lambda s: s.split(","), default=["fp32", "qat"])
    p.add_argument("--sections", type=lambda s: s.split(","), default=["cpu", "gpu", "loops"],
                   help="cpu (world size 1 vs 2), gpu (scaling), loops (pipeline vs bare)")
    p.add_argument("--loop-threads", type=int, default=0, help="threads of the loop comparison (0 = all cores)")
    p.add_argument("--out", default="artifacts")
    # child only
    p.add_argument("--mode", default="fp32", choices=("fp32", "qat"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "child":
        child(args)
    else:
        bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
