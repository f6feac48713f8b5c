"""The output folder of a run, held by one writer at a time (src.preflight checks it before any work)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .locks import exclusive_lock

LOCK_FILE = ".output.lock"  # in the output folder, holds the writer's PID while it runs


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
