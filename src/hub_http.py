"""HTTP to the hub as real mirrors answer it: huggingface_hub's requests and hf_hub_download, plus what they
lack: bounded retries with one note, checked range answers and a stall deadline (docs/data.md says why)."""

from __future__ import annotations

import dataclasses
import io
import itertools
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
    """One reading pass: where whole files go, the stall deadline, whether range answers can be used, the
    notes already printed (each once) and a bar counting the bytes received."""
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
    """call() tried again after a 429/5xx or a broken-off connection, TRIES times in all, with one note.
    Not http_backoff: it sleeps out any Retry-After (a day too), says nothing and ignores the stall deadline."""
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
            after = (e.response.headers.get("Retry-After") or "").strip()  # a date is read as absent, as the library does
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


class Stall:
    """Counts the bytes of one answer as they arrive: HubTrouble once PROGRESS_BYTES take longer than stall_s
    (a mirror that drips bytes, each within the read timeout)."""

    def __init__(self, what: str, stall_s: float):
        self.what, self.stall_s, self.got, self.mark, self.since = what, stall_s, 0, 0, time.monotonic()

    def __call__(self, n: int) -> None:
        self.got += n
        if self.got - self.mark >= PROGRESS_BYTES:
            self.since, self.mark = time.monotonic(), self.got
        elif time.monotonic() - self.since > self.stall_s:
            raise HubTrouble(f"sent {self.got - self.mark} bytes in over {self.stall_s:g} s to {self.what} "
                             "(it stalls)", "rerun later")


def _get_range(url: str, start: int, end: int, size: int, what: str, reads: HubReads) -> bytes:
    """Bytes [start, end) by one streamed range request, checked: 206 with the Content-Range asked for and
    exactly that many bytes (a 200 only when the range is the whole file)."""
    from huggingface_hub import constants, get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    headers = {**build_hf_headers(), "Accept-Encoding": "identity", "Range": f"bytes={start}-{end - 1}"}
    with get_session().stream("GET", url, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, headers=headers) as r:
        hf_raise_for_status(r)
        if r.status_code == 206:
            got = r.headers.get("Content-Range", "")
            m = CONTENT_RANGE.fullmatch(got.strip())
            if not m or (int(m[1]), int(m[2])) != (start, end - 1) or m[3] not in ("*", str(size)):
                raise RangesUnusable(f"answered a request for bytes {start}-{end - 1} with Content-Range {got!r}")
        elif not (r.status_code == 200 and (start, end) == (0, size)):
            raise RangesUnusable(f"answered a range request with HTTP {r.status_code} and the whole file "
                                 "(it ignores Range)")
        data, stall = bytearray(), Stall(what, reads.stall_s)
        for chunk in r.iter_bytes():  # only now: a whole file sent instead of a range is not read
            data.extend(chunk)
            stall(len(chunk))
            if reads.bar is not None:
                reads.bar.update(len(chunk))
    if len(data) != end - start:
        raise RangesUnusable(f"sent {len(data)} bytes for a range of {end - start}")
    return bytes(data)


class RangedFile(io.RawIOBase):
    """A hub file as a seekable binary file whose every read is one checked range request of exactly the bytes
    asked for (HfFileSystem's files read ahead into the image columns and do not check the answer)."""

    def __init__(self, url: str, name: str, reads: HubReads):
        from huggingface_hub import constants, get_hf_file_metadata
        from huggingface_hub.errors import HfHubHTTPError

        super().__init__()
        self.url, self.name, self.reads, self.pos = url, name, reads, 0
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
        self.size = meta.size

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


def download_whole(repo: str, commit: str, path: str, reads: HubReads) -> Path:
    """The whole file by hf_hub_download (size checked, resumable) to <whole_dir>/<repo>/<commit>/<path>, its
    bar held to the stall deadline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import tqdm

    what = f"downloading {path}"

    def attempt() -> str:
        stall = Stall(what, reads.stall_s)

        class Bar(tqdm):
            def update(self, n=1):
                stall(n or 0)
                return super().update(n)

        return hf_hub_download(repo, path, repo_type="dataset", revision=commit, tqdm_class=Bar,
                               local_dir=reads.whole_dir / repo.replace("/", "--") / commit)

    return Path(retrying(what, attempt, reads))
