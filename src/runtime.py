"""Process set-up shared by the long-running scripts: the Accelerator, early input checks and the
output-folder lock (one writer per folder)."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None

LOCK_FILE = ".output.lock"  # in the output folder, holds the writer's PID while it runs


def make_accelerator(**kwargs):
    """An Accelerator that also goes data-parallel on CPU-only machines (gloo) when launched with
    torchrun; accelerate only does that when told the run is on CPU."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def check_output_dir(output_dir: str | Path, setting: str = "--output_dir") -> Path:
    """Create the output folder and make sure we can write there, before any long work.
    `setting` names the flag in messages (e.g. "--report_dir")."""
    if not str(output_dir).strip():
        raise UserError(f"{setting}= is empty; pass a folder, e.g. {setting}=outputs")
    out = Path(output_dir).expanduser()  # "~/runs" as a constant means the home folder, not ./~
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file, not a folder; choose another with {setting}=")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        why = "it is read-only" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else e.strerror
        raise UserError(f"cannot write to output folder {out} ({why}); choose another with {setting}=") from None
    return out


def check_positive(**values) -> None:
    for name, value in values.items():
        if value < 1:
            raise UserError(f"--{name}={value}: must be at least 1")


def _lock_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode("ascii", "replace").strip()


def _take_lock(path: Path) -> int | None:
    """An fd holding the flock on `path` (None where the filesystem has no locks); UserError when
    another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            who = f"another run (PID {holder})" if holder else "another run"
            raise UserError(f"{who} is writing into {path.parent} (lock file {path}); wait for it to finish, "
                            f"or choose another folder with --output_dir=") from None
        except OSError as e:  # some network filesystems have no locks: run, but say it is unguarded
            os.close(fd)
            path.unlink(missing_ok=True)
            print(f"warning: cannot lock {path.parent} ({e.strerror}); make sure no other run writes into it",
                  flush=True)
            return None
        try:  # a finishing holder may have deleted the file between our open and our lock
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def hold_output_lock(output_dir: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """Be the only run writing into `output_dir` until the block ends.

        with hold_output_lock(out_dir, enabled=accelerator.is_main_process):
            ...  # every write into out_dir

    A second run into the same folder gets a UserError at once, naming the holder's PID. The lock
    is an flock on <output_dir>/.output.lock, so the kernel releases it when the holder dies, even
    by SIGKILL: the next run takes the folder over (and says so). Under torchrun / accelerate only
    the main process takes it (`enabled=False` elsewhere); the other ranks write through it.
    Yields the lock file's path, or None when no lock was taken."""
    fd = None
    if enabled and fcntl is not None:
        out = Path(output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        path = out / LOCK_FILE
        fd = _take_lock(path)
    if fd is None:
        yield None
        return
    try:
        stale = _lock_holder(fd)
        if stale and stale != str(os.getpid()):
            print(f"note: taking over {out} from run PID {stale}, which stopped without finishing "
                  f"(its finished files are kept)", flush=True)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # still locked here, so no other run holds this file
        os.close(fd)
