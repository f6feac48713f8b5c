"""The output folder of a run, held by one writer at a time (src.preflight checks it before any work)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .locks import exclusive_lock

LOCK_FILE = ".output.lock"  # in the output folder, holds the writer's PID while it runs


@contextmanager
def hold_output_lock(output_dir: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """Be the only run writing into `output_dir` until the block ends (a second one is told the holder's PID; the OS
    lock dies with its holder, even by SIGKILL); only the main process takes it (`enabled`)."""
    if not enabled:
        yield None
        return
    out = Path(output_dir).expanduser()
    busy = ("another run (PID {pid}) is writing into " + str(out) + " (lock file {path}); wait for it to finish, "
            "or choose another folder with --output_dir=")
    with exclusive_lock(out / LOCK_FILE, str(out), busy=busy) as path:
        yield path
