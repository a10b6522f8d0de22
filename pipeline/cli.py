"""`mobile-pipeline`: train, QAT, export, verify and benchmark a ConvNet for mobile runtimes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core import console
from core.config import FIELDS, ConfigError, RunConfig, field_kind, load_config_file, resolve

from . import commands

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


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, what runs it, the setting groups its --help shows, and whether torchrun may
    start it on several processes. `writes`: False for a command that reads nothing and writes nothing in OUT."""

    help: str
    handler: Callable[[RunConfig, argparse.Namespace], bool]
    groups: tuple[str, ...]
    distributed: bool = False
    writes: bool = True


# What every stage over OUT reads: the cache keys of the model and scheme, and the refusal of settings that cannot
# work together (checked before any stage runs, so `train` already refuses a scheme the backends cannot export).
MODEL = ("data", "train", "compute", "quant", "export")
COMMANDS = {
    "train": Command("train the fp32 model (seeded; checkpoint each epoch; --resume continues)", commands.train,
                     (*MODEL, "run"), distributed=True),
    "qat": Command("PTQ baseline and quantization-aware fine-tuning from the fp32 checkpoint", commands.qat,
                   (*MODEL, "verify", "run"), distributed=True),
    "export": Command("convert the QAT model with each backend, then verify every artifact", commands.export,
                      (*MODEL, "verify", "run")),
    "verify": Command("run every exported artifact on the test set in its runtime and check it", commands.verify,
                      (*MODEL, "verify", "run")),
    "parity": Command("compare PyTorch, the int8 .pte and the int8 .tflite layer by layer (and Core ML's weights)",
                      commands.parity, (*MODEL, "verify", "run")),
    "bundle": Command("copy verified artifacts, labels and a test sample into a demo app", commands.bundle,
                      (*MODEL, "verify", "run")),
    "bench": Command("measure load time, latency, throughput, memory and accuracy on this host", commands.bench,
                     (*MODEL, "bench", "run")),
    "report": Command("rebuild the reports and plots from the JSON files, without running anything", commands.report,
                      ("run",)),
    "run": Command("train, qat, export (with verify), bench and report, in order", commands.run,
                   (*MODEL, "verify", "bench", "run"), distributed=True),
    "schemes": Command("print which runtime honours which quantization scheme (the support matrix), and how",
                       commands.schemes, ("quant", "export"), writes=False),
    "study": Command("the quantization study of a trained model: per-layer error, sensitivity, mixed precision, "
                     "bit widths, pruning against quantization (writes OUT/study/)", commands.study,
                     (*MODEL, "verify", "bench", "study", "run")),
}
DISTRIBUTED_COMMANDS = tuple(name for name, c in COMMANDS.items() if c.distributed)  # torchrun may start these


def settings_parser(shown: tuple[str, ...] = tuple(GROUPS)) -> argparse.ArgumentParser:
    """Every setting as a flag; --help lists the groups in `shown`. The others are still accepted (one --config or
    make line serves every command) but stay out of --help: they do not change what this command does."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (flags override it)")
    groups = {g: parser.add_argument_group(title) if g in shown else parser for g, title in GROUPS.items()}
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        group = groups[f.metadata["group"]]
        help_text = f"{f.metadata['help']} (default: {f.default})" if f.metadata["group"] in shown else argparse.SUPPRESS
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
    for name, command in COMMANDS.items():
        hidden = [GROUPS[g] for g in GROUPS if g not in command.groups]
        epilog = (f"Settings of other commands ({', '.join(hidden)}) are accepted, so that one --config serves every "
                  "command, and do not change what this one does." if hidden else None)
        cmd = sub.add_parser(name, parents=[settings_parser(command.groups)], help=command.help,
                             description=command.help, epilog=epilog)
        cmd.add_argument("--verbose", action="store_true",
                         help="show third-party output live as well (it always goes to OUT/logs/)")
        if name == "bundle":
            cmd.add_argument("platform", choices=("android", "ios"), help="which demo app")
            cmd.add_argument("--dest", help="folder to fill (default: the app's assets/resources folder)")
        if name == "bench":
            cmd.add_argument("--compare", metavar="OLD/results.json",
                             help="also write OUT/bench/compare.md: ratios against an earlier run's results, "
                                  "flagging changes beyond the runs' own spread")
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

    if distributed.launched_by_torchrun() and not COMMANDS[command].distributed:
        raise ConfigError(f"`{command}` runs in one process; start it without torchrun "
                          f"(torchrun is for {', '.join(DISTRIBUTED_COMMANDS)})")
    if COMMANDS[command].distributed:  # a device this machine lacks is refused before any data is read
        from core import device

        device.check_amp(cfg.amp, device.resolve(cfg.device, distributed.env_local_rank()))
    return COMMANDS[command].handler(cfg, args)


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
    from core.errors import BadInput

    try:
        cfg = config_from_args(args)
        if not COMMANDS[args.command].writes:  # `schemes`: reads nothing, writes nothing
            return 0 if run_command(args.command, cfg, args) else 2
        with locked_out(cfg, args.command):
            log = Path(cfg.out) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.command}{rank_suffix()}.log"
            try:
                with console.capture(log, verbose=args.verbose):
                    ok = run_command(args.command, cfg, args)
            except Exception as exc:
                if not isinstance(exc, (BadInput, OSError)):  # unexpected: the log has the rest
                    print(f"(full output of {args.command}: {log})", file=sys.stderr)
                raise
    except BadInput as exc:
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
