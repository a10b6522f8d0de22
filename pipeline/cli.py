"""`mobile-pipeline`: train, QAT, export, verify and benchmark a ConvNet for mobile runtimes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from core import console
from core.config import FIELDS, ConfigError, RunConfig, field_kind, load_config_file, resolve

COMMANDS = {
    "train": "train the fp32 model (seeded; checkpoint each epoch; --resume continues)",
    "qat": "PTQ baseline and quantization-aware fine-tuning from the fp32 checkpoint",
    "export": "convert the QAT model with each backend, then verify every artifact",
    "verify": "run every exported artifact on the test set in its runtime and check it",
    "parity": "compare PyTorch, the int8 .pte and the int8 .tflite layer by layer (and Core ML's weights)",
    "bundle": "copy verified artifacts, labels and a test sample into a demo app",
    "bench": "measure load time, latency, throughput, memory and accuracy on this host",
    "report": "rebuild the reports and plots from the JSON files, without running anything",
    "run": "train, qat, export (with verify), bench and report, in order",
    "schemes": "print which runtime honours which quantization scheme (the support matrix), and how",
    "study": "the quantization study of a trained model: per-layer error, sensitivity, mixed precision, "
             "bit widths, pruning against quantization (writes OUT/study/)",
}
DISTRIBUTED_COMMANDS = ("train", "qat", "run")  # the commands torchrun may start on several processes
GROUPS = {"data": "data and model", "train": "fp32 training", "compute": "device and distributed training (torchrun)",
          "quant": "quantization (PTQ and QAT)",
          "export": "export backends", "verify": "verification", "bench": "host benchmark", "study": "quantization study", "run": "run"}
EPILOG = """examples:
  mobile-pipeline run --dataset mnist-5k --epochs 1
  mobile-pipeline export --backends executorch,tflite --out artifacts
  mobile-pipeline export --backends coreml --nbits 2 --force
  mobile-pipeline parity --parity-images 0
  mobile-pipeline bundle android
  mobile-pipeline train --config my_run.yaml --epochs 5 --resume
  torchrun --standalone --nproc-per-node 2 -m pipeline.cli train --dataset mnist-5k
  mobile-pipeline study --keep-float auto:0.2 --sparsity 0.8

Output: one line per step; everything else (library output, warnings, tables) goes to
OUT/logs/<time>-<command>.log, and --verbose shows it live as well.
Settings resolve as: defaults < --config FILE (YAML or JSON) < flags. Every run records the
resolved config in OUT/manifest.json. Exit status: 0 ok, 1 a backend or a check failed,
2 bad input."""


def settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (flags override it)")
    groups = {g: parser.add_argument_group(title) for g, title in GROUPS.items()}
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        group = groups[f.metadata["group"]]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        kind, _ = field_kind(name)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=name.upper(), help=help_text)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobile-pipeline", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    settings = settings_parser()
    for name, help_text in COMMANDS.items():
        cmd = sub.add_parser(name, parents=[settings], help=help_text, description=help_text)
        cmd.add_argument("--verbose", action="store_true",
                         help="show third-party output live as well (it always goes to OUT/logs/)")
        if name == "bundle":
            cmd.add_argument("platform", choices=("android", "ios"), help="which demo app")
            cmd.add_argument("--dest", help="folder to fill (default: the app's assets/resources folder)")
    return parser


def quiet_libraries() -> None:
    """Keep the console for the pipeline's own messages; library chatter goes to warnings only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import torch  # noqa: F401  (importing torch sets its loggers' levels: set ours after it)

    for noisy in ("coremltools", "torch", "torchao", "executorch", "absl", "jax", "litert_torch", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|torchao|coremltools|executorch|litert_torch)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    file_values = load_config_file(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    return resolve(file_values, flags)


def run_command(command: str, cfg: RunConfig, args: argparse.Namespace) -> bool:
    from core import distributed

    from .stages import Pipeline

    if distributed.launched_by_torchrun() and command not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"`{command}` runs in one process; start it without torchrun "
                          f"(torchrun is for {', '.join(DISTRIBUTED_COMMANDS)})")
    if command in DISTRIBUTED_COMMANDS:  # a device this machine lacks is refused before any data is read
        from core import device

        device.check_amp(cfg.amp, device.resolve(cfg.device, distributed.env_local_rank()))
    if command == "schemes":
        from core import schemes

        from converters import select

        print(schemes.matrix_markdown())
        problems = schemes.check(schemes.Scheme.from_config(cfg), [c.name for c in select(cfg.backends)])
        scheme = schemes.Scheme.from_config(cfg)
        print(f"\nThe settings given: {scheme.summary()} (tag {scheme.tag}): "
              + ("; ".join(problems) if problems else f"exported by {cfg.backends}"))
        return not problems
    if command in ("bench", "report"):
        from benchmarks import host

        return host.bench(cfg) if command == "bench" else host.rebuild_reports(cfg)
    if command == "study":
        from study.run import study

        return study(cfg)
    pipeline = Pipeline(cfg)
    if command == "train":
        pipeline.train()
    elif command == "qat":
        pipeline.qat()
    elif command == "export":
        return summarized(pipeline, pipeline.export())
    elif command == "verify":
        return summarized(pipeline, pipeline.verify())
    elif command == "parity":
        from . import parity

        return parity.run(pipeline)
    elif command == "bundle":
        pipeline.bundle(args.platform, args.dest)
    elif command == "run":
        from benchmarks import host

        pipeline.train()
        pipeline.qat()
        distributed.cleanup()  # under torchrun, training is over: rank 0 alone exports and benchmarks
        if not pipeline.ctx.is_main:
            return True
        exported = pipeline.export()
        return summarized(pipeline, host.bench(cfg) and exported)
    return True


def summarized(pipeline, ok: bool) -> bool:
    """A failed export or verify ends with one line: how many files verified, and which failed."""
    if not ok:
        from core.console import say
        from converters import select

        from .report import summary_line

        say(summary_line(pipeline.manifest, [c.name for c in select(pipeline.cfg.backends)]))
    return ok


def rank_suffix() -> str:
    """Under torchrun every process logs to its own file: `-rank1`, ... (rank 0's log keeps the plain name)."""
    from core import distributed

    rank = distributed.env_rank()
    return f"-rank{rank}" if rank else ""


@contextlib.contextmanager
def locked_out(cfg: RunConfig, command: str):
    """Hold OUT's lock for the command, after cleaning what a killed run left there.

    Under torchrun rank 0 alone locks and cleans OUT (a second job on the same OUT is still
    refused); the other ranks start the process group and wait until it has done so, so that
    every rank then reads the same manifest.
    """
    from core import distributed
    from core.io import OutLock, recover

    torchrun = distributed.launched_by_torchrun() and command in DISTRIBUTED_COMMANDS
    if torchrun:
        distributed.setup(cfg.device)
    if distributed.env_rank() != 0:
        distributed.barrier()
        yield
        return
    with OutLock(cfg.out, f"mobile-pipeline {command}"):
        for action in recover(cfg.out):
            print(f"recover: {action}")
        if torchrun:
            distributed.barrier()
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    from benchmarks.host import BenchError
    from core.data import DataError
    from core.io import OutputDirError
    from core.manifest import ManifestError
    from core.models import ModelError
    from core.qat import QuantError
    from core.schemes import SchemeError
    from core.train import CheckpointError

    from study import StudyError

    from .state import StageError

    bad_input = (ConfigError, DataError, ModelError, CheckpointError, QuantError, OutputDirError, ManifestError,
                 StageError, BenchError, SchemeError, StudyError)
    from converters import ConversionError

    try:
        cfg = config_from_args(args)
        if args.command == "schemes":  # reads nothing, writes nothing
            return 0 if run_command(args.command, cfg, args) else 2
        with locked_out(cfg, args.command):
            log = Path(cfg.out) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.command}{rank_suffix()}.log"
            try:
                with console.capture(log, verbose=args.verbose):
                    ok = run_command(args.command, cfg, args)
            except Exception as exc:
                if not isinstance(exc, bad_input + (ConversionError, OSError)):  # unexpected: the log has the rest
                    print(f"(full output of {args.command}: {log})", file=sys.stderr)
                raise
    except bad_input + (ConversionError,) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O failure outside the atomic writes: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the disk and the path, or pick another --out",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.command} stopped; finished files in OUT are intact, and the next run "
              "cleans up and continues from them", file=sys.stderr)
        return 130
    finally:
        from core.distributed import cleanup

        cleanup()  # leave torchrun's process group (nothing to do in one process)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
