"""The output folder of a run: checked before any long work, and held by one writer at a time."""

from __future__ import annotations

import errno
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError
from .locks import exclusive_lock

LOCK_FILE = ".output.lock"  # in the output folder, holds the writer's PID while it runs


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


def check_output_files(out_dir: Path, names) -> None:
    """The files a run will write into `out_dir` must not be folders (said now, not at the end of the run)."""
    for name in names:
        if (out_dir / name).is_dir():
            raise UserError(f"{out_dir / name} is a folder, but this run writes a file there; remove or rename that "
                            "folder, or choose another --output_dir")


@contextmanager
def hold_output_lock(output_dir: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """Be the only run writing into `output_dir` until the block ends.

        with hold_output_lock(out_dir, enabled=accelerator.is_main_process):
            ...  # every write into out_dir

    A second run into the same folder gets a UserError at once, naming the holder's PID. The lock
    (src.locks) is an OS file lock on <output_dir>/.output.lock, so it is released when the holder
    dies, even by SIGKILL: the next run takes the folder over (and says so). Under torchrun /
    accelerate only the main process takes it (`enabled=False` elsewhere); the other ranks write
    through it. Yields the lock file's path, or None when no lock was taken."""
    if not enabled:
        yield None
        return
    out = Path(output_dir).expanduser()
    busy = ("another run (PID {pid}) is writing into " + str(out) + " (lock file {path}); wait for it to finish, "
            "or choose another folder with --output_dir=")
    with exclusive_lock(out / LOCK_FILE, str(out), busy=busy) as path:
        yield path
