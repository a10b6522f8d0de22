"""What each `mobile-pipeline` command runs (the handlers of the command table in pipeline/cli.py)."""

from __future__ import annotations

import argparse

from core.config import RunConfig


def pipeline_over(cfg: RunConfig):
    from .stages import Pipeline

    return Pipeline(cfg)


def train(cfg: RunConfig, args: argparse.Namespace) -> bool:
    pipeline_over(cfg).train()
    return True


def qat(cfg: RunConfig, args: argparse.Namespace) -> bool:
    pipeline_over(cfg).qat()
    return True


def export(cfg: RunConfig, args: argparse.Namespace) -> bool:
    pipeline = pipeline_over(cfg)
    return summarized(pipeline, pipeline.export())


def verify(cfg: RunConfig, args: argparse.Namespace) -> bool:
    pipeline = pipeline_over(cfg)
    return summarized(pipeline, pipeline.verify())


def parity(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from . import parity

    return parity.run(pipeline_over(cfg))


def bundle(cfg: RunConfig, args: argparse.Namespace) -> bool:
    pipeline_over(cfg).bundle(args.platform, args.dest)
    return True


def bench(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from benchmarks import host

    return host.bench(cfg, getattr(args, "compare", None))


def report(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from benchmarks import host

    return host.rebuild_reports(cfg)


def run(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from benchmarks import host
    from core import distributed

    pipeline = pipeline_over(cfg)
    pipeline.train()
    pipeline.qat()
    distributed.cleanup()  # under torchrun, training is over: rank 0 alone exports and benchmarks
    if not pipeline.ctx.is_main:
        return True
    exported = pipeline.export()
    return summarized(pipeline, host.bench(cfg) and exported)


def schemes(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from core.schemes import Scheme

    from converters import select, support

    print(support.matrix_markdown())
    scheme = Scheme.from_config(cfg)
    problems = support.check(scheme, [c.name for c in select(cfg.backends)])
    print(f"\nThe settings given: {scheme.summary()} (tag {scheme.tag}): "
          + ("; ".join(problems) if problems else f"exported by {cfg.backends}"))
    return not problems


def study(cfg: RunConfig, args: argparse.Namespace) -> bool:
    from study.run import study

    return study(cfg)


def summarized(pipeline, ok: bool) -> bool:
    """A failed export or verify ends with one line: how many files verified, and which failed."""
    if not ok:
        from core.console import say
        from converters import select

        from .report import summary_line

        say(summary_line(pipeline.manifest, [c.name for c in select(pipeline.cfg.backends)]))
    return ok
