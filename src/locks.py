"""One writer at a time: an exclusive lock file that holds the owner's PID.

The lock is an OS file lock (flock on Linux/macOS, msvcrt on Windows) on `<path>`, so it is released
by the kernel when its holder exits or is killed: a lock left behind by a killed run is not held by
anyone and is simply taken over. The PID written into the file is only for the message.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False, poll_s: float = 0.2) -> Iterator[None]:
    """Hold `path` as an exclusive lock for the duration of the block.

    When another live process holds it: with wait=False refuse at once with a UserError naming
    `what` and the holder's PID; with wait=True wait until it is released (e.g. a second process
    that only needs the first one's result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if _try_lock(fd):
            # the holder before us may have deleted the file between our open and our lock:
            # then we locked an orphaned inode and must start again on the new file
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
        os.close(fd)
        if not wait:
            raise UserError(f"{what} is in use by another run (PID {_holder(path)}, lock file {path}); "
                            "wait for it to finish, or use another folder")
        if not announced:
            print(f"waiting for the run with PID {_holder(path)} to finish with {what} ({path})", flush=True)
            announced = True
        time.sleep(poll_s)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):  # gone already, or (Windows) still open elsewhere
            os.unlink(path)
        os.close(fd)
