"""Files in OUT: atomic writes, one writer at a time, and recovery from an interrupted run.

- `atomic_write` writes into a temporary sibling (`.tmp.<name>.<random>/<name>`), then renames it
  over the target. A directory (an .mlpackage) is swapped in two renames, through `.old.<name>`.
- `OutLock` is an exclusive lock on OUT/.lock: a second writer fails at once, naming the first.
- `recover` runs at start-up under the lock: it removes temporaries a killed run left behind,
  and puts `X` back from `.old.X` when a kill fell between the two renames of a swap.
- Every I/O failure becomes an `OutputDirError` that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import BadInput

TMP_PREFIX = ".tmp."
OLD_PREFIX = ".old."
LOCK_FILE = ".lock"
FREE_SPACE_MARGIN = 16 * 2**20  # keep this much free beyond any write we can size


class OutputDirError(BadInput, RuntimeError):
    """A file or folder in OUT cannot be written or read; the message names it and says what to do."""


class LockError(OutputDirError):
    """Another process is writing the same OUT."""


def describe_os_error(path: Path, exc: OSError, action: str = "write") -> OutputDirError:
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free some space, or pick another --out"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "it is read-only or not ours: make it writable, or pick another --out"
    else:
        hint = "check the disk and the path, or pick another --out"
    return OutputDirError(f"cannot {action} {path} ({exc.strerror or exc}); {hint}")


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=f"{TMP_PREFIX}probe.", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputDirError(
            f"output directory {path} is not writable ({exc.strerror or exc}); "
            "pick another one with --out (or OUT=... for make)"
        ) from exc
    return path


def require_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse a write of `needed_bytes` that the filesystem of `directory` cannot hold."""
    directory = Path(directory)
    probe = directory if directory.exists() else directory.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes + FREE_SPACE_MARGIN:
        raise OutputDirError(
            f"not enough free space for {what} in {directory}: it needs about {needed_bytes / 2**20:.1f} MiB "
            f"(+{FREE_SPACE_MARGIN / 2**20:.0f} MiB margin), {free / 2**20:.1f} MiB are free; "
            "free some space, or pick another --out")


def atomic_write(path: Path, write: Callable[[Path], None], size_hint: int = 0) -> Path:
    """Call write(tmp_path), then rename tmp_path over path. Works for files and directories."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size_hint:
            require_free_space(path.parent, size_hint, path.name)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")) / path.name
    except OSError as exc:
        raise describe_os_error(path, exc) from exc
    try:
        write(tmp)
        _fault_point("before-rename", path)
        if tmp.is_dir() and path.exists():
            old = path.with_name(f"{OLD_PREFIX}{path.name}")
            _remove(old)
            os.replace(path, old)
            _fault_point("between-renames", path)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise describe_os_error(path, exc) from exc
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    return path


@contextlib.contextmanager
def scratch_dir(beside: Path) -> Iterator[Path]:
    """A temporary folder next to `beside` (a file in OUT), named `.tmp.scratch.*` so that `recover` removes it if
    a kill leaves it behind; the system's temporary folder only when that folder cannot be written."""
    try:
        tmp = tempfile.mkdtemp(dir=Path(beside).parent, prefix=f"{TMP_PREFIX}scratch.")
    except OSError:
        tmp = tempfile.mkdtemp(prefix="mobile-pipeline-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Tests kill a run at a chosen point: MOBILE_PIPELINE_FAULT=<point>:<file name> makes the process
# exit at once (os._exit, like a SIGKILL: no cleanup runs) when it reaches that point for that file.
def _fault_point(point: str, path: Path) -> None:
    spec = os.environ.get("MOBILE_PIPELINE_FAULT")
    if spec and spec == f"{point}:{path.name}":
        os._exit(137)


def write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), size_hint=len(data))


def write_text(path: Path, text: str) -> Path:
    data = text.encode()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), size_hint=len(data))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise describe_os_error(Path(path), exc, "read") from exc


def recover(root: Path) -> list[str]:
    """Clean what a killed run left in `root` (recursively): temporaries, and swaps caught half-way.

    Call it only while holding the OUT lock, so no live writer's temporary is touched.
    Returns one line per action, for the log.
    """
    actions = []
    root = Path(root)
    if not root.is_dir():
        return actions
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            entry = here / name
            if name.startswith(TMP_PREFIX):
                _remove(entry)
                actions.append(f"removed the temporary {entry} left by an interrupted run")
            elif name.startswith(OLD_PREFIX):
                target = here / name[len(OLD_PREFIX):]
                if target.exists():
                    _remove(entry)
                    actions.append(f"removed {entry} (its replacement {target.name} is complete)")
                else:
                    os.replace(entry, target)
                    actions.append(f"restored {target} from {entry}: a run was killed while replacing it")
        dirnames[:] = [d for d in dirnames if not d.startswith((TMP_PREFIX, OLD_PREFIX)) and not d.endswith(".mlpackage")]
    return actions


class OutLock:
    """An exclusive lock on OUT/.lock for the life of one command; a second writer gets LockError at once."""

    def __init__(self, out: Path, command: str):
        self.path = Path(out) / LOCK_FILE
        self.command = command
        self.fh = None

    def __enter__(self) -> "OutLock":
        import fcntl

        ensure_writable_dir(self.path.parent)
        try:
            self.fh = open(self.path, "a+")
        except OSError as exc:
            raise describe_os_error(self.path, exc) from exc
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise LockError(f"{self.path.parent} is in use by {holder}; wait for it to finish, "
                            "or use another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()} (`{self.command}`, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fh:
            self.fh.seek(0)
            self.fh.truncate()
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (for .mlpackage)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def intact(path: Path, recorded: str | None) -> bool:
    """Does `path` exist and hash to the sha256 recorded when it was written?"""
    path = Path(path)
    return bool(recorded) and path.exists() and sha256(path) == recorded


def size_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def move_aside(paths: list[Path], stale_dir: Path) -> list[Path]:
    """Move files that no longer belong to the run into `stale_dir` (never delete them)."""
    moved = []
    for p in paths:
        if p.exists():
            stale_dir.mkdir(parents=True, exist_ok=True)
            target = stale_dir / p.name
            _remove(target)
            os.replace(p, target)
            moved.append(target)
    return moved
