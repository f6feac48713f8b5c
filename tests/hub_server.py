"""A Hugging Face hub on 127.0.0.1 for the tests of dataset=vqav2_hub: real HTTP (a threading
http.server) answering what huggingface_hub and src/hub_data.py ask of huggingface.co or a mirror, and
misbehaving on demand the way mirrors do.

Served, as the hub does:
- GET /api/datasets/<repo> and /api/datasets/<repo>/revision/<rev>: the dataset info (`sha`, `siblings`);
  an unknown repository or revision is a 404 with the hub's X-Error-Code (RepoNotFound, RevisionNotFound);
- HEAD and GET /datasets/<repo>/resolve/<rev>/<path>: a parquet file is stored like an LFS file, so the
  answer is a 302 to /cdn/<sha256> carrying X-Repo-Commit, X-Linked-Etag and X-Linked-Size; the /cdn/
  answer has ETag, Content-Length, Accept-Ranges, and `Range: bytes=a-b` gives 206 + Content-Range.

Models (`models=`) are served the same way under the hub's model URLs: /api/models/<repo>[/revision/<rev>]
and /<repo>/resolve/<rev>/<path>, so `from_pretrained("<repo>")` downloads them; `list_sizes=False` leaves
the sizes out of the file listing (as a mirror that does not report them).

Misbehaviour (see `HubServer.fail` and `range_mode`): given status codes (429, 503, ...) with an optional
Retry-After for the next N requests of a kind; range answers that ignore Range (200 + the whole file),
carry fewer bytes than asked ("short"), another range than asked ("shifted"), or drip one byte every
`drip_s` seconds ("drip"; `drip_whole`: whole-file answers too); `plain_404` leaves the X-Error-Code out
of a 404 (as a plain proxy); `broken_info` cuts off the JSON of the next N dataset-info answers.

Every request is logged (`requests`) with its kind, time and answer, so tests count what the hub saw.

    with HubServer({"lmms-lab/VQAv2": folder}) as hub:   # folder holds data/validation-*.parquet
        hub.fail("range", 429, times=3, retry_after="0")
        ... HF_ENDPOINT=hub.url ...
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

SHA = "0123456789abcdef0123456789abcdef01234567"
KINDS = ("info", "head", "range", "whole")  # dataset info API; HEAD, ranged GET, plain GET of a resolve URL
RANGE_MODES = ("exact", "ignore", "short", "shifted", "drip")


@dataclass
class Request:
    kind: str  # one of KINDS, or "cdn" for the redirected file request
    method: str
    path: str  # URL path, unquoted
    range: str | None
    status: int
    time: float  # time.monotonic() when it arrived
    body_bytes: int = 0
    query: str = ""  # the URL's query string (e.g. blobs=True: the file listing with sizes)


class HubServer:
    """Serves `repos` ({repo id: folder with the repository's files}) at commit `sha`, also under the
    branch `main` and the tags `tags` gives a repository ({repo id: tag names}). `extra_files` are listed
    in each repository's siblings but not served (a 404 if asked for, so a test sees any such request)."""

    def __init__(self, repos: dict[str, Path], sha: str = SHA, tags: dict[str, tuple[str, ...]] | None = None,
                 extra_files: tuple[str, ...] = (), models: dict[str, Path] | None = None, list_sizes: bool = True):
        self.repos = {r: Path(f) for r, f in {**repos, **(models or {})}.items()}
        self.models = set(models or {})
        self.list_sizes = list_sizes
        self.sha, self.tags = sha, tags or {}
        self.extra_files = extra_files
        self.range_mode = "exact"
        self.drip_s, self.drip_whole, self.plain_404, self.broken_info = 1.0, False, False, 0
        self.requests: list[Request] = []
        self._faults: dict[str, list[tuple[int, str | None]]] = {k: [] for k in KINDS}
        self._lock = threading.Lock()
        self._blobs: dict[str, Path] = {}  # sha256 -> file, the "CDN"
        for folder in self.repos.values():
            for p in folder.rglob("*"):
                if p.is_file():
                    self._blobs[hashlib.sha256(p.read_bytes()).hexdigest()] = p
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # the "CDN" answers on another host, as the hub's does: huggingface_hub follows a redirect to the
        # same host for a HEAD, but reads file metadata from the 302 itself when it points elsewhere
        self._cdn = ThreadingHTTPServer(("127.0.0.2", 0), _handler(self))
        self._cdn.daemon_threads = True
        self.cdn_url = f"http://127.0.0.2:{self._cdn.server_address[1]}"

    def __enter__(self) -> HubServer:
        for server in (self._server, self._cdn):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._server, self._cdn):
            server.shutdown()
            server.server_close()

    def fail(self, kind: str, status: int, times: int, retry_after: str | None = None) -> None:
        """Answer the next `times` requests of `kind` with `status` (and a Retry-After header if given)."""
        assert kind in KINDS, kind
        with self._lock:
            self._faults[kind].extend([(status, retry_after)] * times)

    def seen(self, kind: str | None = None, status: int | None = None, repo: str | None = None) -> list[Request]:
        """The logged requests of a kind / answered with a status / for a repository."""
        with self._lock:
            return [r for r in self.requests if (kind is None or r.kind == kind)
                    and (status is None or r.status == status) and (repo is None or f"/{repo}/" in r.path + "/")]

    # --- used by the handler -------------------------------------------------------------------

    def _fault(self, kind: str) -> tuple[int, str | None] | None:
        with self._lock:
            return self._faults[kind].pop(0) if self._faults[kind] else None

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def revisions(self, repo: str) -> set[str]:
        return {self.sha, "main", *self.tags.get(repo, ())}

    def siblings(self, repo: str) -> list[dict]:
        folder = self.repos[repo]
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sized = [{"rfilename": f, "size": (folder / f).stat().st_size} if self.list_sizes else {"rfilename": f}
                 for f in files]
        return sized + [{"rfilename": f} for f in self.extra_files]


def _handler(hub: HubServer):
    info_path = re.compile(r"/api/(?:datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+))?")
    resolve_path = re.compile(r"(?:/datasets)?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the hub: every answer carries its Content-Length

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

        def _route(self) -> None:
            arrived = time.monotonic()
            path = unquote(urlsplit(self.path).path)
            rng = self.headers.get("Range")
            if m := info_path.fullmatch(path):
                kind = "info"
            elif m := resolve_path.fullmatch(path):
                kind = "head" if self.command == "HEAD" else ("range" if rng else "whole")
            elif path.startswith("/cdn/"):
                kind = "cdn"
            else:
                return self._answer("?", path, arrived, 404, {}, b"not found")
            fault = hub._fault(kind) if kind in KINDS else None
            if fault:
                status, retry_after = fault
                headers = {"Retry-After": retry_after} if retry_after is not None else {}
                return self._answer(kind, path, arrived, status, headers, f"fault {status}".encode())
            if kind == "info":
                return self._info(path, arrived, *m.groups())
            if kind == "cdn":
                return self._cdn(path, arrived, rng)
            return self._resolve(kind, path, arrived, *m.groups())

        def _not_found(self, kind, path, arrived, code: str) -> None:
            if hub.plain_404:
                return self._answer(kind, path, arrived, 404, {}, b"Not Found", "text/plain")
            self._answer(kind, path, arrived, 404, {"X-Error-Code": code},
                         json.dumps({"error": code}).encode(), "application/json")

        def _info(self, path, arrived, repo: str, revision: str | None) -> None:
            if repo not in hub.repos:
                return self._not_found("info", path, arrived, "RepoNotFound")
            if revision is not None and revision not in hub.revisions(repo):
                return self._not_found("info", path, arrived, "RevisionNotFound")
            body = {"_id": repo, "id": repo, "author": repo.split("/")[0], "sha": hub.sha, "private": False,
                    "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                    "lastModified": "2026-07-01T00:00:00.000Z", "siblings": hub.siblings(repo)}
            data = json.dumps(body).encode()
            with hub._lock:
                cut, hub.broken_info = hub.broken_info > 0, max(0, hub.broken_info - 1)
            self._answer("info", path, arrived, 200, {}, data[:len(data) // 2] if cut else data, "application/json")

        def _resolve(self, kind, path, arrived, repo: str, revision: str, file: str) -> None:
            if repo not in hub.repos:
                return self._not_found(kind, path, arrived, "RepoNotFound")
            if revision not in hub.revisions(repo):
                return self._not_found(kind, path, arrived, "RevisionNotFound")
            local = hub.repos[repo] / file
            if not local.is_file():
                return self._not_found(kind, path, arrived, "EntryNotFound")
            data = local.read_bytes()
            blob = hashlib.sha256(data).hexdigest()
            self._answer(kind, path, arrived, 302, {
                "Location": f"{hub.cdn_url}/cdn/{blob}", "X-Repo-Commit": hub.sha, "X-Linked-Etag": f'"{blob}"',
                "X-Linked-Size": str(len(data)), "ETag": f'"{blob[:40]}"'}, b"")

        def _cdn(self, path, arrived, rng: str | None) -> None:
            local = hub._blobs.get(path.removeprefix("/cdn/"))
            if local is None:
                return self._answer("cdn", path, arrived, 404, {}, b"no such blob")
            size, headers = local.stat().st_size, {"ETag": f'"{path.removeprefix("/cdn/")}"', "Accept-Ranges": "bytes"}
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
            if m is None or hub.range_mode == "ignore":
                return self._answer("cdn", path, arrived, 200, headers, local.read_bytes(), range_=rng,
                                    drip=hub.drip_whole)
            first, last = m.groups()
            start, end = (size - int(last), size) if not first else (int(first), min(size, int(last or size - 1) + 1))
            if start >= size or start >= end:
                return self._answer("cdn", path, arrived, 416, {"Content-Range": f"bytes */{size}"}, b"", range_=rng)
            if hub.range_mode == "shifted" and start > 0:
                start, end = start - 1, end - 1
            with open(local, "rb") as f:  # only the range: a bench reads large files range by range
                f.seek(start)
                body = f.read(end - start)
            if hub.range_mode == "short":
                body = body[:len(body) // 2]
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            self._answer("cdn", path, arrived, 206, headers, body, range_=rng, drip=hub.range_mode == "drip")

        def _answer(self, kind, path, arrived, status: int, headers: dict, body: bytes,
                    content_type: str = "application/octet-stream", range_: str | None = None, drip=False) -> None:
            hub._log(Request(kind, self.command, path, range_ or self.headers.get("Range"), status, arrived,
                             0 if self.command == "HEAD" else len(body), urlsplit(self.path).query))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                try:
                    for k in range(0, len(body), 1 if drip else max(1, len(body))):
                        time.sleep(hub.drip_s if drip else 0)
                        self.wfile.write(body[k:k + 1] if drip else body)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed early (e.g. on seeing a 200 to its range request)

    return Handler


# --- what the tests serve and how a script is pointed at it ----------------------------------------------

def lmms_features():
    """The `datasets` features of lmms-lab/VQAv2's parquet files."""
    from datasets import Features, Image, List, Value

    return Features({
        "question_type": Value("string"), "multiple_choice_answer": Value("string"),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
        "question": Value("string"), "image": Image()})


def hub_env(hub: HubServer, tmp_path: Path) -> dict:
    """A script's environment for the server: HF_ENDPOINT, its own hub cache, the hub's timeouts short."""
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(tmp_path / "hf_cache"),
            "HF_HUB_ETAG_TIMEOUT": "10", "HF_HUB_DOWNLOAD_TIMEOUT": "10", "HF_HUB_OFFLINE": "0"}
