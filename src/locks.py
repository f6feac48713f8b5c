"""One writer at a time: an OS file lock (flock / msvcrt) holding the owner's PID, released by the kernel
when its holder dies (why not the `filelock` package: docs/checks.md); a run's output folder is held so."""

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
LOCK_FILE = ".output.lock"  # in the output folder, holds the writer's PID while it runs


def _drop_inherited() -> None:
    """In a forked child (a DataLoader worker): close the parent's lock descriptors, or it would hold them on."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited)


def _try_lock(fd: int) -> bool | None:
    """True when locked, False when another process holds it, None where the filesystem cannot lock."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError as e:  # held (EWOULDBLOCK; EACCES on Windows) unless the filesystem cannot lock at all
        return None if fcntl is not None and e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS) else False


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "unknown"
    return "unknown"


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, wait: bool = False,
                   busy: str = "{what} is in use by another run (PID {pid}, lock file {path}); wait for it to finish, "
                   "or use another folder") -> Iterator[Path | None]:
    """Hold `path` as an exclusive lock for the block (yields it, or None where the filesystem cannot lock); a live
    holder means a UserError naming `what` and its PID (`busy`), or with wait=True a wait; a dead one's is taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_lock(fd)
        # the holder before us may have deleted the file between our open and our lock:
        # then we locked an orphaned inode and must start again on the new file
        with contextlib.suppress(FileNotFoundError):
            if locked and os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)
        if locked is None:
            with contextlib.suppress(OSError):
                path.unlink()
            print(f"warning: cannot lock {path.parent} (No locks available); make sure no other run uses "
                  f"{what} at the same time", flush=True)
            yield None
            return
        if locked:
            continue
        holder = _holder(path)
        if not wait:
            raise UserError(busy.format(what=what, pid=holder, path=path))
        if not announced:
            print(f"waiting for the run with PID {holder} to finish with {what} ({path})", flush=True)
            announced = True
        time.sleep(0.2)
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


def hold_output_lock(output_dir: str | Path, enabled: bool = True):
    """Be the only run writing into `output_dir` (a second is told the holder's PID); `enabled` on the main process."""
    out = Path(output_dir).expanduser()
    busy = ("another run (PID {pid}) is writing into {what} (lock file {path}); wait for it to finish, or choose "
            "another folder with --output_dir=")
    return exclusive_lock(out / LOCK_FILE, str(out), busy=busy) if enabled else contextlib.nullcontext()
