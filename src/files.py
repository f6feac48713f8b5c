"""Files the scripts hand to each other: atomic JSON writes and append-only, resumable JSONL."""

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # errno values of a full disk or a used-up quota


@contextmanager
def reported_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a failed write of `path` (disk full, quota, read-only, permissions) into one line that
    names the file and says that a rerun continues from what was saved."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            why = "the disk is full" if e.errno == errno.ENOSPC else "the disk quota is used up"
            fix = "free some space"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            why, fix = f"no permission ({e.strerror})", f"make {Path(path).parent} writable"
        else:
            raise
        raise UserError(f"could not write {path}: {why}; {fix} and rerun the same command, it resumes from "
                        f"what was saved") from None


def give_default_permissions(folder: str | Path) -> None:
    """Files saved into `folder` get open()'s permissions (safetensors makes them 0600: unreadable to others)."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600:
            os.chmod(p, FILE_MODE)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with an existing .safetensors file (safe_open's reason as the fix a user needs: a Git LFS
    pointer, text, an interrupted copy), as a phrase to follow its name, or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt"):
            return None
    except PermissionError:
        return "cannot be read (permission denied)"
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
    with open(path, "rb") as f:
        start = f.read(200)
    if start.startswith(b"version https://git-lfs"):
        return (f"is a Git LFS pointer, not the weights (the repository was cloned without git-lfs: "
                f"run `git lfs pull` in {path.parent})")
    if start.lstrip()[:1] in (b"<", b"{"):
        return f"is not a safetensors file (it starts with text: {start.lstrip()[:40]!r})"
    if "not fully covered" in reason or "header length" in reason or "too large" in reason:
        return (f"is cut short ({path.stat().st_size:,} bytes: a save, copy or download was interrupted)")
    return f"has a corrupt header ({reason})"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; remove or rename that folder and rerun")
    path.parent.mkdir(parents=True, exist_ok=True)
    with reported_write_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; give the file the permissions open() would
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Replace a JSONL file atomically (appending goes through JsonlAppender)."""
    atomic_write_text(path, jsonl_text(rows))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path, what: str = "file", fix: str = "get the file again"):
    """A JSON file, or one line naming it and what is wrong: missing, a folder, empty, not UTF-8,
    nested absurdly deep, or not valid JSON (truncated). `fix` ends the line for a damaged file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; remove or rename that folder and put the file there")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise UserError(f"{what} {path} cannot be read (permission denied); make it readable") from None
    if not data.strip():
        raise UserError(f"{what} {path} is empty ({len(data)} bytes): a download, copy or save was interrupted; {fix}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
                        f"re-save it as UTF-8, or {fix}") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError(f"{what} {path} nests lists or objects thousands of levels deep: not a file this project "
                        f"writes or reads; {fix}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is corrupt (not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; "
                        f"the file may be truncated); {fix}") from None


def read_jsonl(path: str | Path, allow_torn_tail: bool = False) -> list[dict]:
    """Rows of a JSONL file, as read_jsonl_lines."""
    return [row for _, row in read_jsonl_lines(path, allow_torn_tail)]


def read_jsonl_lines(path: str | Path, allow_torn_tail: bool = False) -> list[tuple[int, dict]]:
    """(line number, row) of each row of a JSONL file. A malformed line is an error naming file and line, except
    a torn last line (no trailing newline) when `allow_torn_tail`: that is what a killed writer leaves."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a JSONL file; pass the file (or remove that folder)")
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            if allow_torn_tail and i == len(lines):  # the last line, no newline after it
                break
            raise UserError(f"{path}, line {i}: malformed JSONL row ({e}); fix or delete that line") from None
        rows.append((i, row))
    return rows


class JsonlAppender:
    """Append rows one line at a time, flushed and fsynced, so a kill loses at most the line in flight; a partial
    last line (a killed writer's, or a failed write's) is cut first, so appends start on a fresh line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with reported_write_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as f:
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":  # a torn last line: only then is the whole file read, to find its start
                        f.seek(0)
                        f.truncate(f.read().rfind(b"\n") + 1)

    def write(self, rows: Iterable[dict]) -> None:
        text = jsonl_text(rows)
        if text:
            with reported_write_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())


def iter_chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def replace_folder(tmp: Path, final: Path, keep: Callable[[Path], bool] = lambda entry: False) -> None:
    """Rename the finished folder `tmp` to `final`, never leaving half of one; entries of the old folder that
    `keep(entry)` names and the new one lacks (a user's notes, an eval/ folder) move into the new one."""
    recover_replace(final, keep)
    if final.exists():
        os.replace(final, final.with_name(f".old-{final.name}"))
    os.replace(tmp, final)
    recover_replace(final, keep)


def recover_replace(final: Path, keep: Callable[[Path], bool] = lambda entry: False) -> None:
    """Finish a replace_folder that was killed: between its renames the old folder, hidden as .old-<name>, is
    the last complete one and goes back; after them, what it holds that `keep` names moves into the new one."""
    old = final.with_name(f".old-{final.name}")
    if not old.exists():
        return
    if not final.exists():
        os.replace(old, final)
        return
    for entry in old.iterdir():
        if keep(entry) and not (final / entry.name).exists():
            os.replace(entry, final / entry.name)
    shutil.rmtree(old)


def resolved_if_local(path: str | None) -> str | None:
    """An existing local file or folder as its absolute, resolved path; anything else (a hub id, None) as is."""
    if path and os.path.exists(os.path.expanduser(path)):
        return str(Path(path).expanduser().resolve())
    return path
