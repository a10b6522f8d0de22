"""What the user sees: one line per step that matters. Everything else goes to OUT/logs/.

- `say(message)` is for the pipeline's own lines (a stage's result, a check that failed, a decision
  such as a data fallback). They reach the terminal, and the command's log. `say_brief` is `say` for a
  failure: at most three lines on the terminal, the whole text in the log.
- Anything else (print() of details, Python warnings, logging, third-party progress bars, and what
  native code such as XNNPACK or absl writes to file descriptors 1 and 2, in this process and in
  its children) goes only to the log, while `capture()` is active. `--verbose` shows it live as well.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

_terminal: TextIO | None = None  # set while capture() is active
_log: TextIO | None = None


def terminal() -> TextIO:
    """The stream the user reads: the real terminal while capturing, else sys.stdout."""
    return _terminal or sys.stdout


def say(message: str = "") -> None:
    if _terminal is not None:
        _terminal.write(message + "\n")
        _terminal.flush()
        if _log is not None:
            _log.write(message + "\n")
            _log.flush()
    else:
        print(message, flush=True)


def say_brief(message: str, lines: int = 3, width: int = 600) -> None:
    """`say` a message on at most `lines` console lines of at most `width` characters; when that cuts it, the
    whole message goes to the log (the cut one to both)."""
    every = message.splitlines() or [""]
    kept = [line if len(line) <= width else line[:width] + "…" for line in every[:lines]]
    if kept != every:
        if _log is not None:
            _log.write(message + "\n")
        kept[-1] += " (in full in the log)"
    for line in kept:
        say(line)


def _tee(read_fd: int, *targets: int) -> None:
    """Copy the pipe to every target until its write ends are all closed."""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        for fd in targets:
            try:
                os.write(fd, chunk)
            except OSError:  # a target closed after capture() stopped waiting (a child kept the pipe open)
                pass
    os.close(read_fd)


@contextmanager
def capture(log_path: Path, verbose: bool = False) -> Iterator[Path]:
    """Send fds 1 and 2 (and so sys.stdout/sys.stderr, and child processes) to `log_path`; with
    `verbose`, to the terminal as well. `say()` keeps writing to the terminal."""
    global _terminal, _log
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    py_out, py_err = sys.stdout, sys.stderr
    try:
        real_terminal = py_out.fileno() == 1
    except (AttributeError, OSError, ValueError):  # e.g. pytest's capsys: keep writing to that object
        real_terminal = False
    saved_out, saved_err = os.dup(1), os.dup(2)
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    reader = None
    if verbose:
        read_fd, write_fd = os.pipe()
        reader = threading.Thread(target=_tee, args=(read_fd, saved_out, log.fileno()), daemon=True)
        reader.start()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    else:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
    _terminal = os.fdopen(os.dup(saved_out), "w", buffering=1) if real_terminal else py_out
    _log = log
    try:
        yield log_path
    finally:
        sys.stdout, sys.stderr = py_out, py_err
        try:
            py_out.flush()
            py_err.flush()
        finally:
            os.dup2(saved_out, 1)  # this closes our last write ends of the pipe: the tee drains it and stops
            os.dup2(saved_err, 2)
            if reader is not None:
                reader.join(timeout=5)  # before closing what it writes to
            os.close(saved_out)
            os.close(saved_err)
            if real_terminal:
                _terminal.close()
            _terminal, _log = None, None
            log.close()


ABSURD_SECONDS = 24 * 3600  # a stage expected to take longer than this gets a warning
LONG_SECONDS = 60.0  # a stage expected to take longer than this gets an estimate


def duration(seconds: float) -> str:
    """3.2 s, 4.5 min, 2.1 h, 3.0 days, 1.2e+05 years."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size if unit != "years" else seconds >= size:
            value = seconds / size
            return f"{value:.3g} {unit}" if value < 1e4 else f"{value:.2g} {unit}"
    return f"{seconds:.1f} s"


class StageClock:
    """After the first steps of a long stage, say how long the whole stage should take, and warn when that is
    absurd (more than a day): a mistyped `--epochs 1000000000` shows at once, not after the weekend.

    The first step is not timed (it pays for warm-up); the estimate comes once `min_steps` more steps or
    `min_seconds` have passed, and only when the stage has steps left and takes a minute or more."""

    def __init__(self, stage: str, total_steps: int, hint: str = "", *, min_steps: int = 20, min_seconds: float = 5.0,
                 clock=None):
        import time

        self.stage, self.total, self.hint = stage, total_steps, hint
        self.min_steps, self.min_seconds = min_steps, min_seconds
        self.clock = clock or time.perf_counter
        self.steps, self.start, self.done = 0, None, False
        self.estimate: float | None = None

    def step(self) -> None:
        if self.done:
            return
        self.steps += 1
        if self.steps == 1:
            self.start = self.clock()
            return
        timed, elapsed = self.steps - 1, self.clock() - self.start
        if timed < self.min_steps and elapsed < self.min_seconds:
            return
        self.done = True
        if self.steps >= self.total:
            return
        self.estimate = elapsed / timed * self.total
        if self.estimate < LONG_SECONDS:
            return  # a short stage needs no estimate
        say(f"{self.stage}: {timed} steps took {elapsed:.1f} s; all {self.total:,} steps should take about "
            f"{duration(self.estimate)}")
        if self.estimate > ABSURD_SECONDS:
            say(f"warning: {self.stage} would run for about {duration(self.estimate)}, more than a day"
                + (f"; {self.hint}" if self.hint else "") + " (Ctrl-C stops it)")
