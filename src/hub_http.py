"""HTTP to the hub as real mirrors answer it, on huggingface_hub's client, with what its helpers lack: 429/5xx
retried a bounded number of times with one note, range answers checked, a stall deadline on every read
(docs/data.md says why each is ours)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import re
import time
from pathlib import Path

RETRY_STATUSES = (429, 500, 502, 503, 504)  # rate limited, or the server failing for now
TRIES = 5  # tries per request, the first included
FIRST_WAIT_S = 1.0  # wait before the second try without Retry-After; doubled for each further try
LONGEST_WAIT_S = 60.0  # a longer Retry-After is not waited out: the run stops with the error line
STALL_S = 120.0  # a read that brings less than PROGRESS_BYTES (and does not end) for this long stops the run
PROGRESS_BYTES = 64 << 10
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HubTrouble(Exception):
    """The hub failed a request for good: `reason` completes "the hub at <endpoint> ...", `retry` says when a
    rerun may help."""

    def __init__(self, reason: str, retry: str = "wait a few minutes and rerun"):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


class RangesUnusable(Exception):
    """The server did not answer a range request with exactly the bytes asked for."""


@dataclasses.dataclass
class HubReads:
    """One reading pass: where whole files go, the stall deadline, whether range answers can be used,
    the notes already printed (each once) and a bar counting the bytes received."""
    whole_dir: Path
    stall_s: float = STALL_S
    ranges_ok: bool = True
    said: set = dataclasses.field(default_factory=set)
    bar: object = None

    def note(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            print(text, flush=True)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _duration(seconds: float) -> str:
    return (f"{seconds / 3600:.0f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 90
            else f"{seconds:.0f} s")


def retrying(what: str, call, reads: HubReads):
    """call() tried again after a 429/5xx answer or a broken-off connection, TRIES times in all, with one note.
    Not http_backoff: it sleeps out any Retry-After (a day too), only logs, and has no stall deadline."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    began = time.monotonic()
    for tries in itertools.count(1):
        wait = FIRST_WAIT_S * 2 ** (tries - 1)
        try:
            return call()
        except HfHubHTTPError as e:
            if e.response is None or e.response.status_code not in RETRY_STATUSES:
                raise
            failure = f"HTTP {e.response.status_code} ({e.response.reason_phrase})"
            after = (e.response.headers.get("Retry-After") or "").strip()  # a date: absent, as huggingface_hub reads it
            wait = float(after) if after.isdecimal() else wait
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout) as e:
            failure = f"{type(e).__name__} ({str(e)[:60]})"
            if time.monotonic() + wait - began > reads.stall_s:  # silent, not refusing: the stall deadline
                raise HubTrouble(f"sent nothing usable to {what} for over {reads.stall_s:g} s ({failure}; it "
                                 "stalls)", "rerun later") from None
        if wait > LONGEST_WAIT_S:
            raise HubTrouble(f"answered {failure} to {what} and asks to wait {wait:.0f} s (Retry-After)",
                             f"wait {_duration(wait)} as it asks and rerun") from None
        if tries >= TRIES:
            raise HubTrouble(f"still answered {failure} to {what} after {TRIES} tries") from None
        reads.note("retry", f"note: {endpoint()} answered {failure} to {what}; waiting {wait:g} s and trying "
                            f"again (up to {TRIES} tries per request)")
        time.sleep(wait)


def _stream(response, what: str, reads: HubReads, sink, bar=None) -> int:
    """Pass the body to sink(chunk) as it arrives, counted on `bar` or reads.bar; HubTrouble once PROGRESS_BYTES
    take longer than reads.stall_s (a mirror that drips bytes, each within the read timeout)."""
    got, since, mark, bar = 0, time.monotonic(), 0, bar or reads.bar
    for chunk in response.iter_bytes():
        sink(chunk)
        got += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
        if got - mark >= PROGRESS_BYTES:
            since, mark = time.monotonic(), got
        elif time.monotonic() - since > reads.stall_s:
            raise HubTrouble(f"sent {got - mark} bytes in over {reads.stall_s:g} s to {what} (it stalls)",
                             "rerun later")
    return got


@contextlib.contextmanager
def _get(url: str, **headers):
    """A streamed GET with the hub's headers, raised for its status (identity: a compressed length is not the
    file's)."""
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    with get_session().stream("GET", url, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                              headers={**build_hf_headers(), "Accept-Encoding": "identity", **headers}) as r:
        hf_raise_for_status(r)  # it reads an error's body itself
        yield r


def _get_range(url: str, start: int, end: int, size: int, what: str, reads: HubReads) -> bytes:
    """Bytes [start, end) by one range request, checked: 206 with the Content-Range asked for and exactly that
    many bytes (a 200 only when the range is the whole file)."""
    with _get(url, Range=f"bytes={start}-{end - 1}") as r:
        if r.status_code == 206:
            got = r.headers.get("Content-Range", "")
            m = CONTENT_RANGE.fullmatch(got.strip())
            if not m or (int(m[1]), int(m[2])) != (start, end - 1) or m[3] not in ("*", str(size)):
                raise RangesUnusable(f"answered a request for bytes {start}-{end - 1} with Content-Range {got!r}")
        elif not (r.status_code == 200 and (start, end) == (0, size)):
            raise RangesUnusable(f"answered a range request with HTTP {r.status_code} and the whole file "
                                 "(it ignores Range)")
        data = bytearray()
        _stream(r, what, reads, data.extend)  # not before: a whole file sent instead of a range is not read
    if len(data) != end - start:
        raise RangesUnusable(f"sent {len(data)} bytes for a range of {end - start}")
    return bytes(data)


def file_size(url: str, name: str, reads: HubReads) -> int:
    """A listed hub file's size (huggingface_hub's HEAD); a 404 is a mirror not synced, one HubTrouble."""
    from huggingface_hub import constants, get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    try:
        meta = retrying(f"the size of {name} (HEAD)",
                        lambda: get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT), reads)
    except HfHubHTTPError as e:
        if e.response is None or e.response.status_code != 404:
            raise
        raise HubTrouble(f"lists {name} but answers HTTP 404 for it (a mirror not in step with the hub)",
                         "rerun later") from None
    if meta.size is None:
        raise HubTrouble(f"gave no size for {name}")
    return meta.size


class RangedFile(io.RawIOBase):
    """A hub file as a seekable binary file whose every read is one checked range request of exactly the bytes
    asked for (HfFileSystem's files read ahead into the image columns and check no answer)."""

    def __init__(self, url: str, name: str, reads: HubReads):
        super().__init__()
        self.url, self.name, self.reads, self.pos = url, name, reads, 0
        self.size = file_size(url, name, reads)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        start = self.pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if end <= start:
            return b""
        what = f"a range read of {self.name}"
        data = retrying(what, lambda: _get_range(self.url, start, end, self.size, what, self.reads), self.reads)
        self.pos = end
        return data


def download_whole(url: str, dest: Path, name: str, size: int, reads: HubReads) -> None:
    """The whole file to `dest` (through a temporary name), checked to be `size` bytes (not hf_hub_download:
    it hands on 10 MB chunks, so a mirror dripping bytes never meets the stall deadline)."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")

    def attempt() -> int:
        with _get(url) as r, open(tmp, "wb") as f, tqdm(total=size, unit="B", unit_scale=True,
                                                         desc=f"downloading {name}") as bar:
            return _stream(r, f"downloading {name}", reads, f.write, bar)

    try:
        got = retrying(f"downloading {name}", attempt, reads)
        if got != size:
            raise HubTrouble(f"sent {got} of the {size} bytes of {name}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
