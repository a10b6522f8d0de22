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
