"""`make bench-stream`: the memory that training on a folder of many small images takes, streamed and in memory.

For each folder size, `mobile-pipeline train` runs in a fresh process on `imagefolder:` data,
once with `--loader stream` (DataLoader workers decode the files) and once with
`--loader memory` (every image decoded into one uint8 tensor first, as before). While it runs,
the process tree (the trainer and its DataLoader workers) is sampled every 50 ms:

- the tree's own memory: the sum over its processes of the proportional anonymous and
  shared-memory pages (Pss_Anon + Pss_Shmem in /proc/PID/smaps_rollup): heap and tensors,
  including batches in flight from the workers, with pages the forked workers share counted
  once. Library code (file-backed pages, about 0.4 GiB for torch) is left out: other processes
  on the host map the same files, which makes a file-backed PSS depend on who else is running;
- the RSS of the training process alone (VmRSS, libraries included), and its anonymous part (RssAnon).

The peaks are set against the folder's size on disk (allocated blocks, as `du`) and the size of
the decoded images (N x C x H x W bytes). Output: OUT/bench/streaming/results.json and report.md.
The folders are synthetic PNGs (a class-dependent pattern plus noise), written once and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from core import io as atomic
from core import manifest as mf

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path("bench") / "streaming"
SIZE = 32  # cifarcnn's input
CLASSES = 10


def make_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png; kept if already complete."""
    from PIL import Image

    stamp = root / ".complete"
    if stamp.exists() and stamp.read_text() == f"{n_train} {n_test}":
        return root
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (CLASSES, 4, 4, 3)).astype(np.float32)
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            label = i % CLASSES
            base = np.kron(patterns[label], np.ones((SIZE // 4, SIZE // 4, 1), np.float32))
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:06d}.png")
    stamp.write_text(f"{n_train} {n_test}")
    return root


def disk_bytes(root: Path) -> tuple[int, int]:
    """(allocated bytes, as du counts them; the files' apparent size) of the images under root."""
    allocated = apparent = 0
    for path in root.rglob("*.png"):
        st = path.stat()
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_sampled(command: list[str], env: dict, interval: float = 0.05) -> dict:
    """Run `command`; return its exit code and the peaks of the tree's PSS and the main process's RSS (MiB)."""
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"tree_mib": 0.0, "main_rss_mib": 0.0, "main_anon_mib": 0.0, "processes": 1}
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        own = 0
        pids = _tree(process.pid)
        for pid in pids:
            try:
                own += _kib(f"/proc/{pid}/smaps_rollup", "Pss_Anon") + _kib(f"/proc/{pid}/smaps_rollup", "Pss_Shmem")
            except OSError:
                continue
        try:
            peak["main_rss_mib"] = max(peak["main_rss_mib"], _kib(f"/proc/{process.pid}/status", "VmRSS") / 1024)
            peak["main_anon_mib"] = max(peak["main_anon_mib"], _kib(f"/proc/{process.pid}/status", "RssAnon") / 1024)
        except OSError:
            pass
        peak["tree_mib"] = max(peak["tree_mib"], own / 1024)
        peak["processes"] = max(peak["processes"], len(pids))
        time.sleep(interval)
    reader.join(timeout=5)
    return {"returncode": process.returncode, **peak, "output_tail": "".join(output)[-2000:]}


def measure(folder: Path, loader: str, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"out-{loader}-{folder.name}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "pipeline.cli", "train", "--dataset", f"imagefolder:{folder}", "--model", "cifarcnn",
               "--epochs", "1", "--batch-size", str(args.batch_size), "--loader", loader, "--workers", str(args.workers),
               "--threads", str(args.threads), "--device", "cpu", "--out", str(out), "--force"]
    print(f"bench-stream: {loader} on {folder.name} ...", flush=True)
    start = time.perf_counter()
    result = run_sampled(command, env)
    if result["returncode"] != 0:
        raise RuntimeError(f"training on {folder} with --loader {loader} failed:\n{result['output_tail']}")
    manifest = json.loads((out / mf.MANIFEST).read_text())
    stage = manifest["stages"]["train"]
    return {"loader": loader, "images": manifest["dataset"]["n_train"] + manifest["dataset"]["n_test"],
            "n_train": manifest["dataset"]["n_train"], "tree_mib": result["tree_mib"],
            "main_rss_mib": result["main_rss_mib"], "main_anon_mib": result["main_anon_mib"], "processes": result["processes"],
            "train_images_per_s": stage["images_per_s"], "wall_s": time.perf_counter() - start,
            "fp32_accuracy": manifest["accuracy"]["fp32"], "normalization": manifest["dataset"].get("normalization")}


def markdown(results: dict) -> str:
    lines = ["# Training memory: streamed vs in memory", "",
             f"{results['created']} · cifarcnn, 1 epoch, batch {results['settings']['batch_size']}, "
             f"{results['settings']['workers']} DataLoader workers when streamed, {results['settings']['threads']} threads · "
             "synthetic 32x32 RGB PNGs · peaks sampled every 50 ms (see `benchmarks/streaming.py`).", "",
             "| images (train+test) | on disk (du) | decoded (uint8) | loader | peak anon+shm PSS, trainer + workers | "
             "peak RSS, trainer (anon part) | train img/s |",
             "|---|---|---|---|---|---|---|"]
    for f in results["folders"]:
        for r in f["runs"]:
            lines.append(f"| {f['images']} | {f['disk_mib']:.1f} MiB | {f['decoded_mib']:.1f} MiB | {r['loader']} | "
                         f"{r['tree_mib']:.0f} MiB | {r['main_rss_mib']:.0f} MiB ({r['main_anon_mib']:.0f}) | "
                         f"{r['train_images_per_s']:.0f} |")
    lines += ["", "Growth of the peak from the smallest to the largest folder, against the growth of the data:", ""]
    for loader, growth in results["growth"].items():
        lines.append(f"- {loader}: peak anon+shm PSS {growth['tree_mib']:+.0f} MiB, peak trainer RSS {growth['rss_mib']:+.0f} MiB "
                     f"for {growth['disk_mib']:+.0f} MiB more on disk ({growth['decoded_mib']:+.0f} MiB more decoded)")
    return "\n".join(lines) + "\n"


def bench(args: argparse.Namespace) -> dict:
    out = Path(args.out) / RESULTS_DIR
    atomic.ensure_writable_dir(out)
    data_root = Path(args.data_root)
    folders = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for n in args.sizes:
            folder = make_folder(data_root / f"folder-{n}", n, max(n // 10, CLASSES))
            allocated, apparent = disk_bytes(folder)
            images = n + max(n // 10, CLASSES)
            runs = [measure(folder, loader, args, Path(tmp)) for loader in args.loaders]
            folders.append({"folder": str(folder), "images": images, "disk_mib": allocated / 2**20,
                            "apparent_mib": apparent / 2**20, "decoded_mib": images * 3 * SIZE * SIZE / 2**20, "runs": runs})
    growth = {}
    for loader in args.loaders:
        first, last = folders[0], folders[-1]
        a = next(r for r in first["runs"] if r["loader"] == loader)
        b = next(r for r in last["runs"] if r["loader"] == loader)
        growth[loader] = {"tree_mib": b["tree_mib"] - a["tree_mib"], "rss_mib": b["main_rss_mib"] - a["main_rss_mib"],
                          "disk_mib": last["disk_mib"] - first["disk_mib"],
                          "decoded_mib": last["decoded_mib"] - first["decoded_mib"]}
    results = {"created": mf.now(), "host": {"cores": os.cpu_count(), "load_average": list(os.getloadavg())},
               "settings": {k: getattr(args, k) for k in ("sizes", "loaders", "batch_size", "workers", "threads")},
               "folders": folders, "growth": growth}
    atomic.write_json(out / "results.json", results)
    atomic.write_text(out / "report.md", markdown(results))
    print(f"bench-stream: wrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[5000, 20000],
                   help="training images per folder (a tenth more for test)")
    p.add_argument("--loaders", type=lambda s: s.split(","), default=["stream", "memory"])
    p.add_argument("--data-root", default="data/bench-stream", help="where the synthetic folders are written (reused)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads of the trainer (0 = all cores)")
    p.add_argument("--out", default="artifacts")
    bench(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
