"""One writer at a time: an OS file lock (flock / msvcrt) holding the owner's PID, released by the kernel
when its holder dies; why not the `filelock` package: docs/checks.md."""

from __future__ import annotations

import contextlib
import errno
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


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock descriptors. The lock belongs
    to the parent; a child that kept the descriptor would hold it after the parent is killed."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited)


def _try_lock(fd: int) -> bool | None:
    """True when locked, False when another process holds it, None where the filesystem has no locks
    (some network drives)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError as e:
        if fcntl is None or e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        return None


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False, poll_s: float = 0.2,
                   busy: str | None = None) -> Iterator[Path | None]:
    """Hold `path` as an exclusive lock for the block (yields it, or None where the filesystem cannot lock); a live
    holder means a UserError naming `what` and its PID (`busy`), or with wait=True a wait; a dead one's is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_lock(fd)
        if locked is None:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            print(f"warning: cannot lock {path.parent} (No locks available); make sure no other run uses "
                  f"{what} at the same time", flush=True)
            yield None
            return
        if locked:
            # the holder before us may have deleted the file between our open and our lock:
            # then we locked an orphaned inode and must start again on the new file
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
            continue
        os.close(fd)
        holder = _holder(path)
        if not wait:
            raise UserError(busy.format(pid=holder, path=path) if busy else
                            f"{what} is in use by another run (PID {holder}, lock file {path}); "
                            "wait for it to finish, or use another folder")
        if not announced:
            print(f"waiting for the run with PID {holder} to finish with {what} ({path})", flush=True)
            announced = True
        time.sleep(poll_s)
    try:
        stale = _holder(path)
        if stale not in ("unknown", str(os.getpid())):
            print(f"note: taking over {what} from run PID {stale}, which stopped without finishing "
                  "(its finished files are kept)", flush=True)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD.add(fd)
        yield path
    finally:
        _HELD.discard(fd)
        with contextlib.suppress(OSError):  # gone already, or (Windows) still open elsewhere
            os.unlink(path)
        os.close(fd)
