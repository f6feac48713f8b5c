"""HTTP to the Hugging Face hub as real mirrors answer it: requests retried on 429 and 5xx (waiting as
`Retry-After` says, else FIRST_WAIT_S doubling; one note, then HubTrouble), ranged reads checked to hold
exactly the bytes asked for (RangesUnusable otherwise), and whole-file downloads. Everything goes through
huggingface_hub's own client, so HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply. Used by src/hub_data.py."""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import io
import itertools
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

RETRY_STATUSES = (429, 500, 502, 503, 504)  # rate limited, or the server failing for now
TRIES = 5  # tries per request, the first included
FIRST_WAIT_S = 1.0  # wait before the second try when the answer has no Retry-After; doubled for each further try
LONGEST_WAIT_S = 60.0  # a longer Retry-After is not waited out: the run stops with the error line
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HubTrouble(Exception):
    """The hub kept failing a request (retries ran out) or sent something unusable; `reason` completes
    "the hub at <endpoint> ..." in the error line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RangesUnusable(Exception):
    """The server did not answer a range request with exactly the bytes asked for."""


@dataclasses.dataclass
class HubReads:
    """One reading pass (the question table, or the sample's images): where whole files go, whether the
    server's range answers can be used, and the notes already printed (each once)."""
    whole_dir: Path
    ranges_ok: bool = True
    said: set = dataclasses.field(default_factory=set)

    def note(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            print(text, flush=True)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _wait_s(headers, tries: int) -> float:
    """Seconds to wait before the next try: the answer's Retry-After (seconds or an HTTP date), else
    FIRST_WAIT_S doubled for each try made."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdecimal():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return FIRST_WAIT_S * 2 ** (tries - 1)


def retrying(what: str, call, reads: HubReads):
    """call() (one HTTP request), tried again after a 429 or 5xx answer or a connection that broke off
    mid-answer, at most TRIES times in all; then HubTrouble naming `what`."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    for tries in itertools.count(1):
        try:
            return call()
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status not in RETRY_STATUSES:
                raise
            failure, wait = f"HTTP {status} ({e.response.reason_phrase})", _wait_s(e.response.headers, tries)
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout) as e:
            failure, wait = f"{type(e).__name__} ({str(e)[:60]})", _wait_s({}, tries)
        if wait > LONGEST_WAIT_S:
            raise HubTrouble(f"answered {failure} to {what} and asks to wait {wait:.0f} s (Retry-After)") from None
        if tries >= TRIES:
            raise HubTrouble(f"still answered {failure} to {what} after {TRIES} tries") from None
        reads.note("retry", f"note: {endpoint()} answered {failure} to {what}; waiting {wait:g} s and trying "
                            f"again (up to {TRIES} tries per request)")
        time.sleep(wait)


def _raise_for_status(response) -> None:
    from huggingface_hub.utils import hf_raise_for_status

    if response.status_code >= 400:
        response.read()  # an error's body is small; the hub's error classes read it
        hf_raise_for_status(response)


def _headers(**extra) -> dict:
    """The hub's headers (token, user agent), asking for the stored bytes: a compressed answer's length
    would not be the file's."""
    from huggingface_hub.utils import build_hf_headers

    return {**build_hf_headers(), "Accept-Encoding": "identity", **extra}


def _file_size(url: str, name: str) -> int:
    """A hub file's size from a HEAD request (the hub's X-Linked-Size of an LFS file, else Content-Length)."""
    from huggingface_hub import constants, get_session

    r = get_session().head(url, headers=_headers(), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    _raise_for_status(r)
    for answer in (*r.history, r):
        if (linked := answer.headers.get(constants.HUGGINGFACE_HEADER_X_LINKED_SIZE, "")).isdecimal():
            return int(linked)
    if (length := r.headers.get("Content-Length", "")).isdecimal():
        return int(length)
    raise HubTrouble(f"gave no size (Content-Length) for {name}")


def _get_range(url: str, start: int, end: int, size: int) -> bytes:
    """Bytes [start, end) of a hub file by one range request, checked: 206 with the Content-Range asked
    for and exactly that many bytes (a 200 is taken only when the range is the whole file)."""
    from huggingface_hub import constants, get_session

    headers = _headers(Range=f"bytes={start}-{end - 1}")
    with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
        _raise_for_status(r)
        if r.status_code == 206:
            got = r.headers.get("Content-Range", "")
            m = CONTENT_RANGE.fullmatch(got.strip())
            if not m or (int(m[1]), int(m[2])) != (start, end - 1) or m[3] not in ("*", str(size)):
                raise RangesUnusable(f"answered a request for bytes {start}-{end - 1} with Content-Range {got!r}")
        elif not (r.status_code == 200 and (start, end) == (0, size)):
            raise RangesUnusable(f"answered a range request with HTTP {r.status_code} and the whole file "
                                  "(it ignores Range)")
        data = r.read()  # left unread above: a whole file sent instead of a range is not downloaded
    if len(data) != end - start:
        raise RangesUnusable(f"sent {len(data)} bytes for a range of {end - start}")
    return data


class RangedFile(io.RawIOBase):
    """A hub file as a seekable binary file whose every read is one checked range request of exactly
    the bytes asked for (pyarrow's reads: no read-ahead that would pull in the image bytes next to the
    question columns)."""

    def __init__(self, url: str, name: str, reads: HubReads):
        super().__init__()
        self.url, self.name, self.reads, self.pos = url, name, reads, 0
        self.size = retrying(f"the size of {name} (HEAD)", lambda: _file_size(url, name), reads)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        start = self.pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if end <= start:
            return b""
        data = retrying(f"a range read of {self.name}", lambda: _get_range(self.url, start, end, self.size),
                         self.reads)
        self.pos = end
        return data


def download_whole(url: str, dest: Path, name: str, size: int, reads: HubReads) -> None:
    """The whole file to `dest` (written to a temporary name first), checked to be `size` bytes."""
    from huggingface_hub import constants, get_session
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")

    def attempt() -> int:
        got = 0
        with get_session().stream("GET", url, headers=_headers(), timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
            _raise_for_status(r)
            with open(tmp, "wb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        return got

    try:
        got = retrying(f"downloading {name}", attempt, reads)
        if got != size:
            raise HubTrouble(f"sent {got} of the {size} bytes of {name}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
