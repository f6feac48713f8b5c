"""VQAv2 splits from a parquet dataset on the hub (default lmms-lab/VQAv2) or a local copy: question columns by range
requests, then only the sample's images, through huggingface_hub's client plus what it lacks (docs/data.md)."""

import contextlib
import dataclasses
import os
import re
import time
from io import BytesIO
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import constants  # light; ENDPOINT read at call time: as the process started, or a test points it

from .config import looks_like_path
from .errors import UserError
from .files import read_json, write_json
from .locks import exclusive_lock
from .preflight import build_samples
from .samples import VQASample

DEFAULT_DATASET = "lmms-lab/VQAv2"
MOVED_DATASET = "lmms-lab-encoder/VQAv2"  # where lmms-eval moved the data (July 2026); read when the default is missing
SPLIT_NAMES = {"val": "validation", "testdev": "testdev", "test": "test"}  # as the hub names them
# split -> its files in the hub layout; "data/test-*" does not match data/testdev-* (fnmatch: "-" after "test")
SPLIT_FILES = {split: f"data/{name}-*.parquet" for split, name in SPLIT_NAMES.items()}
CACHE_FOLDER = "vqav2_hub"
MIRROR = "https://hf-mirror.com"
ROW_MARK = "#row="  # image_path of a not yet cached image: <parquet file>#row=<row in that file>
HUB_URL = re.compile(r"hf://datasets/([^/@]+/[^/@]+)@([^/]+)/(.+)")
SHARD = re.compile(r"(.*-)(\d{5})-of-(\d{5})\.parquet")  # the hub's file names: <split>-<k>-of-<n>.parquet
RETRY_STATUSES = (429, 500, 502, 503, 504)  # rate limited, or the server failing for now
TRIES = 5  # tries per request, the first included
FIRST_WAIT_S = 1.0  # wait before the second try without Retry-After; doubled for each further try
LONGEST_WAIT_S = 60.0  # a longer Retry-After is not waited out: the run stops with the error line
STALL_S = 120.0  # a read that brings less than PROGRESS_BYTES (and does not end) for this long stops the run
PROGRESS_BYTES = 64 << 10
IMAGE_SUFFIXES = {b"\x89PNG": ".png", b"GIF8": ".gif", b"RIFF": ".webp"}  # by an image's first bytes; else JPEG (COCO)
INT, TEXT = (r"u?int\d+", "an integer (int64)"), (r"(large_)?string", "string")
COLUMNS = {  # the lmms-lab/VQAv2 columns used: (their pyarrow type as printed, what lmms-lab/VQAv2 has)
    "question_id": INT, "image_id": INT, "question": TEXT,
    "answers": (r"(large_)?list<.*struct<(.*, )?answer: (large_)?string.*",
                "list<struct<answer: string, answer_confidence: string, answer_id: int64>>"),
    "multiple_choice_answer": TEXT, "answer_type": TEXT, "question_type": TEXT,
    "image": (r"struct<(.*, )?bytes: (large_)?binary.*", "a datasets Image (struct<bytes: binary, path: string>)")}
QUESTION_COLUMNS = tuple(COLUMNS)[:-1]
ANSWER_COLUMNS = QUESTION_COLUMNS[3:]  # neither read nor required for testdev / test


class HubTrouble(Exception):
    """The hub failed a request for good: args = (what completes "the hub at <endpoint> ...", when to rerun)."""


class RangesUnusable(Exception):
    """The server did not answer a range request with exactly the bytes asked for."""


@dataclasses.dataclass
class HubReads:
    """One reading pass: where whole files go, the stall deadline, whether ranges work, notes said, a bytes bar."""
    whole_dir: Path
    stall_s: float = STALL_S
    ranges_ok: bool = True
    said: set = dataclasses.field(default_factory=set)
    bar: object = None

    def note(self, key: str, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            print(f"note: {text}", flush=True)


def retrying(what: str, call, reads: HubReads):
    """call() tried again after a 429/5xx answer or a broken-off connection, TRIES times in all, with one note.
    Not http_backoff: it sleeps out any Retry-After (a day too), only logs, and has no stall deadline."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    began = time.monotonic()
    for tries in range(1, TRIES + 1):
        wait = FIRST_WAIT_S * 2 ** (tries - 1)
        try:
            return call()
        except HfHubHTTPError as e:
            if e.response.status_code not in RETRY_STATUSES:
                raise
            failure = f"HTTP {e.response.status_code} ({e.response.reason_phrase})"
            after = (e.response.headers.get("Retry-After") or "").strip()  # a date: absent, as huggingface_hub reads it
            wait = float(after) if after.isdecimal() else wait
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout) as e:
            failure = f"{type(e).__name__} ({str(e)[:60]})"
            if time.monotonic() + wait - began > reads.stall_s:  # silent, not refusing: the stall deadline
                raise HubTrouble(f"sent nothing usable to {what} for over {reads.stall_s:g} s ({failure}; it stalls)",
                                 "rerun later") from None
        if wait > LONGEST_WAIT_S:
            raise HubTrouble(f"answered {failure} to {what} and asks to wait {wait:.0f} s (Retry-After)",
                             f"wait {f'{wait / 3600:.0f} h' if wait >= 3600 else f'{wait / 60:.0f} min'} as it asks "
                             "and rerun") from None
        if tries == TRIES:
            raise HubTrouble(f"still answered {failure} to {what} after {TRIES} tries") from None
        reads.note("retry", f"{constants.ENDPOINT} answered {failure} to {what}; waiting {wait:g} s and trying again "
                            f"(up to {TRIES} tries per request)")
        time.sleep(wait)


def _fetch(url: str, what: str, reads: HubReads, size: int, start: int = 0, end: int | None = None, into=None):
    """GET url into a file at `into`, or bytes [start, end) checked to come as asked, returned; counted on reads.bar.
    HubTrouble once PROGRESS_BYTES take over reads.stall_s (a mirror dripping bytes, each within the read timeout)."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    asked = {} if end is None else {"Range": f"bytes={start}-{end - 1}"}
    headers = {**build_hf_headers(), "Accept-Encoding": "identity", **asked}  # a compressed size is not the file's
    with (get_session().stream("GET", url, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, headers=headers) as r,
          open(into, "wb") if into else BytesIO() as f):
        hf_raise_for_status(r)  # it reads an error's body itself
        answer = r.headers.get("Content-Range", "").strip()
        if asked and r.status_code == 206 and answer not in (f"bytes {start}-{end - 1}/{n}" for n in (size, "*")):
            raise RangesUnusable(f"answered a request for bytes {start}-{end - 1} with Content-Range {answer!r}")
        if asked and r.status_code != 206 and (start, end) != (0, size):
            raise RangesUnusable(f"answered a range request with HTTP {r.status_code} (it ignores Range)")
        got, mark, since = 0, 0, time.monotonic()
        for chunk in r.iter_bytes():  # only now: a whole file sent instead of a range is never read
            f.write(chunk)
            got += len(chunk)
            if reads.bar is not None:
                reads.bar.update(len(chunk))
            if got - mark >= PROGRESS_BYTES:
                since, mark = time.monotonic(), got
            elif time.monotonic() - since > reads.stall_s:
                raise HubTrouble(f"sent {got - mark} bytes in over {reads.stall_s:g} s to {what} (it stalls)",
                                 "rerun later")
        if got != (size if end is None else end - start):
            raise RangesUnusable(f"sent {got} bytes for a range of {end - start}") if asked else HubTrouble(
                f"sent {got} of the {size} bytes to {what}")
        return None if into else f.getvalue()


def check_schema(schema, where: str, names: list[str]) -> None:
    """One line naming the first missing or mistyped column of the lmms-lab/VQAv2 schema among `names`."""
    for name in names:
        pattern, want = COLUMNS[name]
        if name not in schema.names:
            raise UserError(f"{where}: no column {name!r} (the lmms-lab/VQAv2 schema has {', '.join(COLUMNS)}); "
                            "is --hf_dataset a VQAv2 parquet dataset?")
        if not re.fullmatch(pattern, str(schema.field(name).type)):
            raise UserError(f"{where}: column {name!r} has type {schema.field(name).type}, expected {want} "
                            "as in lmms-lab/VQAv2")


def _read(name: str, source, action):
    """action(pyarrow ParquetFile of `source`); a damaged file as one line naming it, network failures raised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return action(pq.ParquetFile(source, pre_buffer=True))
    except (OSError, pa.ArrowException) as e:
        if name.startswith("hf://") and not isinstance(e, pa.ArrowInvalid):
            raise
        raise UserError(f"cannot read {name}: {str(e)[:150]}; the file may be truncated or not parquet, "
                        "download it again") from None


def _with_parquet(file: str, reads: HubReads, action):
    """action(pyarrow ParquetFile of `file`): a local path, a hub file read by checked range requests of exactly the
    bytes asked for (size from a HEAD), or its whole copy once ranges fail (why not HfFileSystem: docs/data.md)."""
    from fsspec.spec import AbstractBufferedFile
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    m = HUB_URL.fullmatch(file)
    local = Path(file) if m is None else reads.whole_dir / m[1].replace("/", "--") / m[2] / m[3]
    if m is None or local.exists():
        return _read(local.as_posix(), local, action)
    url, name = f"{constants.ENDPOINT}/datasets/{m[1]}/resolve/{m[2]}/{quote(m[3])}", m[3]
    try:
        size = retrying(f"the size of {name} (HEAD)", lambda: get_hf_file_metadata(
            url, timeout=constants.HF_HUB_ETAG_TIMEOUT), reads).size
    except HfHubHTTPError as e:
        if e.response.status_code != 404:
            raise
        raise HubTrouble(f"lists {name} but answers HTTP 404 for it (a mirror not in step with the hub)",
                         "rerun later") from None
    if size is None:
        raise HubTrouble(f"gave no size for {name}")

    class RangedFile(AbstractBufferedFile):
        def _fetch_range(self, start: int, end: int) -> bytes:
            what = f"a range read of {name}"
            return retrying(what, lambda: _fetch(url, what, reads, size, start, min(end, size)), reads)

    if reads.ranges_ok:
        try:
            return _read(file, RangedFile(None, url, size=size, cache_type="none"), action)
        except RangesUnusable as e:
            reads.ranges_ok = False
            reads.note("ranges", f"{constants.ENDPOINT} {e} for {name}; those bytes are not used: the files are "
                                 f"downloaded whole once to {reads.whole_dir} and read there")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp, what = local.with_name(f".{local.name}.{os.getpid()}.tmp"), f"downloading {name}"
    try:
        retrying(what, lambda: _fetch(url, what, reads, size, into=tmp), reads)
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return _read(local.as_posix(), local, action)


def download_advice(hf_dataset: str, include: str = SPLIT_FILES["val"]) -> str:
    """How to get the files another way (the end of every can't-read-the-hub line; a local folder: from the hub)."""
    hf_dataset = DEFAULT_DATASET if Path(hf_dataset).is_dir() else hf_dataset
    other = ("unset HF_ENDPOINT to try huggingface.co itself" if constants.ENDPOINT.rstrip("/") == MIRROR
             else f"set HF_ENDPOINT={MIRROR} (a mirror reachable from China)")
    return (f"{other}, or download first: hf download {hf_dataset} --repo-type dataset --include \"{include}\" "
            f"--local-dir data/vqav2_hub, then --hf_dataset=data/vqav2_hub")


@contextlib.contextmanager
def _hub_errors(hf_dataset: str, cache: Path):
    """Network and hub failures as one line saying what happened and how to get the data."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except HubTrouble as e:
        reason, retry = (*e.args, "wait a few minutes and rerun")[:2]
        raise UserError(f"the Hugging Face hub at {constants.ENDPOINT} {reason}, reading {hf_dataset}; {retry} (what "
                        f"is in {cache} is kept), or {download_advice(hf_dataset)}") from None
    except HfHubHTTPError as e:  # reached: it answered an error (huggingface_hub's message spans several lines)
        raise UserError(f"the Hugging Face hub at {constants.ENDPOINT} answered HTTP {e.response.status_code} reading "
                        f"{hf_dataset} ({' '.join(str(e).split())[:200]}); what is in {cache} is kept; "
                        f"{download_advice(hf_dataset)}") from None
    except (httpx2.HTTPError, OSError) as e:
        reason = ("HF_HUB_OFFLINE is set; unset it to download" if isinstance(e, OfflineModeIsEnabled)
                  else f"{constants.ENDPOINT}: {type(e).__name__}: {' '.join(str(e).split())[:100]}")
        raise UserError(f"cannot reach the Hugging Face hub for {hf_dataset} ({reason}) and "
                        f"{cache} holds no copy yet; {download_advice(hf_dataset)}") from None


def _hub_files(hf_dataset: str, revision: str, pattern: str, reads: HubReads) -> tuple[str | None, list[str], str]:
    """(why the hub dataset cannot be read, or None; hf:// URLs of its `pattern` files; commit) at `revision`
    ("" = newest); a plain 404 (a mirror without the hub's X-Error-Code) means not found too."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = retrying(f"the dataset info of {hf_dataset}", lambda: HfApi(endpoint=constants.ENDPOINT).dataset_info(
            hf_dataset, revision=revision or None, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT), reads)
    except RevisionNotFoundError:
        return f"has no revision {revision}", [], ""
    except HfHubHTTPError as e:
        if isinstance(e, RepositoryNotFoundError) or e.response.status_code == 404:
            return "is not found", [], ""
        raise
    except ValueError as e:  # JSONDecodeError: a cut-off answer
        raise HubTrouble(f"answered the dataset info request for {hf_dataset} with broken JSON ({str(e)[:60]})",
                         "rerun") from None
    files = [f"hf://datasets/{hf_dataset}@{info.sha}/{f}" for f in sorted(s.rfilename for s in info.siblings or [])
             if fnmatch(f, pattern)]
    return (None if files else f"has no {pattern} files"), files, info.sha


def _list_files(hf_dataset: str, revision: str, pattern: str, reads: HubReads) -> tuple[str, list[str], str]:
    """(dataset used, its files matching `pattern`, resolved revision) of a local folder or a hub dataset. The
    default dataset unusable on the hub means MOVED_DATASET, an explicitly named one never."""
    folder = Path(hf_dataset)
    if folder.is_dir():
        files = sorted(p.resolve().as_posix() for p in folder.glob(pattern))
        names = {f.rsplit("/", 1)[1] for f in files}  # a set <split>-<k>-of-<n>.parquet: a download may have stopped
        missing = sorted({f"{m[1]}{k:05d}-of-{m[3]}.parquet" for m in map(SHARD.fullmatch, names) if m
                          for k in range(int(m[3]))} - names)
        if not files:
            raise UserError(f"{folder} has no {pattern} files; a local --hf_dataset folder needs the hub "
                            "layout, e.g. data/validation-00000-of-00014.parquet")
        if missing:
            raise UserError(f"{folder} lacks {len(missing)} of the files of {pattern} ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''}), a download that stopped early; rerun hf download "
                            f"{DEFAULT_DATASET} --repo-type dataset --include \"{pattern}\" --local-dir {folder} (it "
                            "fetches only what is missing)")
        return folder.resolve().as_posix(), files, ""
    why, files, sha = _hub_files(hf_dataset, revision, pattern, reads)
    if why is None:
        return hf_dataset, files, sha
    if hf_dataset != DEFAULT_DATASET:
        fix = ("check --hf_dataset (e.g. lmms-lab/VQAv2)" if why == "is not found"
               else "is it a VQAv2 parquet dataset like lmms-lab/VQAv2?" if why.startswith("has no data/")
               else "use a commit hash, branch or tag of that dataset, or \"\" for the newest")
        raise UserError(f"dataset {hf_dataset} {why.removeprefix('is ')} on the hub at {constants.ENDPOINT} (nor a "
                        f"local folder of that name); {fix}")
    moved_why, files, sha = _hub_files(MOVED_DATASET, revision, pattern, reads)
    if moved_why is not None:
        raise UserError(f"dataset {hf_dataset} {why} on the hub at {constants.ENDPOINT}, and {MOVED_DATASET} (where "
                        f"lmms-eval moved it) {moved_why}; check --hf_dataset{' and --hf_dataset_revision' * bool(revision)}"
                        f", or {download_advice(hf_dataset)}")
    reads.note("moved", f"{hf_dataset} {why.removeprefix('is ')}; using {MOVED_DATASET}")
    return MOVED_DATASET, files, sha


def hub_source(cache_dir: str | Path) -> dict | None:
    """What <cache_dir>/vqav2_hub holds (None before the first read): `hf_dataset` and `requested_revision` as
    asked, `used_dataset` (MOVED_DATASET when the default was missing), `revision` read and `files`."""
    path = Path(cache_dir) / CACHE_FOLDER / "source.json"
    fix = f"delete the folder {path.parent} and rerun: the questions are read again from the dataset"
    source = read_json(path, "hub question cache record", fix=fix) if path.exists() else None
    if source is not None and not isinstance(source, dict):
        raise UserError(f"{path} is damaged (not a JSON object); {fix}")
    return source


def _cached_table(cache: Path, hf_dataset: str, revision: str, split: str, stall_s: float):
    """(question table, source record) from <cache>, written there first from the dataset itself: the question
    columns of every file (no image bytes; answers for val only), each row with its file index and row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    asked = Path(hf_dataset).resolve().as_posix() if Path(hf_dataset).is_dir() else hf_dataset
    source = hub_source(cache.parent)
    if source is not None:
        if (source.get("hf_dataset"), source.get("requested_revision")) != (asked, revision):
            raise UserError(f"{cache} holds questions read from {source.get('hf_dataset')} revision "
                            f"{source.get('requested_revision') or 'newest'}, but this run asks for {asked} revision "
                            f"{revision or 'newest'}; use the baseline's --hf_dataset and --hf_dataset_revision, or "
                            "another --output_dir")
        try:
            return pq.read_table(cache / "questions.parquet"), source
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {cache / 'questions.parquet'} ({str(e)[:100]}); delete "
                            f"{cache / 'source.json'} to read the questions again") from None
    reads = HubReads(cache / "files", stall_s)
    with _hub_errors(hf_dataset, cache):
        used, files, sha = _list_files(hf_dataset, revision, SPLIT_FILES[split], reads)
    columns = [c for c in QUESTION_COLUMNS if split == "val" or c not in ANSWER_COLUMNS]

    def questions(pf, k: int):
        check_schema(pf.schema_arrow, files[k], [*columns, "image"])
        t = pf.read(columns=columns)
        return t.append_column("source_file", pa.array([k] * t.num_rows, pa.int32())).append_column(
            "source_row", pa.array(range(t.num_rows), pa.int64()))

    print(f"reading the question columns of {len(files)} {SPLIT_NAMES[split]} file(s) of {used} (images later, "
          "only the sample's)", flush=True)
    tables = []
    with _hub_errors(used, cache), tqdm(desc=f"question columns of {len(files)} file(s)", unit="B", unit_scale=True,
                                        disable=not files[0].startswith("hf://")) as reads.bar:
        for k, file in enumerate(files):
            reads.bar.set_postfix_str(f"file {k + 1}/{len(files)}", refresh=False)
            tables.append(_with_parquet(file, reads, lambda pf: questions(pf, k)))
    table = pa.concat_tables(tables, promote_options="permissive")
    source = {"hf_dataset": asked, "requested_revision": revision, "used_dataset": used, "revision": sha,
              "files": files, "rows": table.num_rows}
    cache.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, cache / "questions.parquet")  # read only once source.json vouches for it
    write_json(cache / "source.json", source)
    return table, source


def load_hub_samples(hf_dataset: str, revision: str, split: str, cache_dir: str | Path,
                     stall_s: float) -> list[VQASample]:
    """Every question of `split` (val, testdev, test; the last two without answers) as checked VQASamples whose
    image_path names its parquet row; the question table is kept in <cache_dir>/vqav2_hub/ (one per split)."""
    import pyarrow.compute as pc

    if split not in SPLIT_FILES:
        raise UserError(f"dataset vqav2_hub holds VQAv2's evaluation splits only (val, testdev, test; not {split}); "
                        "fine-tuning with --dataset=vqav2_hub trains on val minus the evaluated images (docs/data.md)")
    if looks_like_path(hf_dataset) and not Path(hf_dataset).expanduser().is_dir():
        raise UserError(f"--hf_dataset={hf_dataset}: no such folder (a hub id looks like lmms-lab/VQAv2; a local "
                        f"folder must hold the hub layout, {SPLIT_FILES['val']})")
    cache = Path(cache_dir) / CACHE_FOLDER
    # several processes (accelerate) or runs: one reads, the others wait and use its copy
    with contextlib.nullcontext() if (cache / "source.json").exists() else exclusive_lock(
            cache / ".lock", f"the hub question cache {cache}", wait=True):
        table, source = _cached_table(cache, hf_dataset, revision, split, stall_s)
    if split == "val":  # `answers` as lists of their strings, made in Arrow (the other fields unused): half the time
        a = table.column("answers").combine_chunks()
        table = table.set_column(table.column_names.index("answers"), "answers", type(a).from_arrays(
            a.offsets, pc.struct_field(a.values, "answer"), mask=a.is_null()))
    rows = table.to_pylist()
    files, name = source["files"], f"{source.get('used_dataset', hf_dataset)} {SPLIT_NAMES[split]}"

    def entry(i: int) -> str:  # records before used_dataset: the dataset as asked
        return f"{files[rows[i]['source_file']]}: row {rows[i]['source_row']}"

    return build_samples(rows, rows if split == "val" else None, question_entry=entry, annotation_entry=entry,
                         image_path=lambda i, _: f"{files[rows[i]['source_file']]}{ROW_MARK}{rows[i]['source_row']}",
                         questions_source=name, annotations_source=name if split == "val" else None)


def cache_hub_images(samples: list[VQASample], cache_dir: str | Path, stall_s: float = STALL_S) -> list[VQASample]:
    """The samples with image_path set to their pictures, written as stored to <cache_dir>/vqav2_hub/images/ from
    only the row groups that hold them (images/sources.json: each file's parquet row, recorded per row group)."""
    from tqdm.auto import tqdm

    images = Path(cache_dir) / CACHE_FOLDER / "images"
    if not any(ROW_MARK in s.image_path for s in samples):
        return samples
    with exclusive_lock(images.parent / ".lock", f"the hub image cache {images}", wait=True):
        path = images / "sources.json"
        fix = f"delete the folder {images} and rerun, the pictures are fetched again"
        sources = read_json(path, "hub image cache record", fix=fix) if path.exists() else {}
        if not isinstance(sources, dict) or not all(isinstance(v, dict) and "file" in v for v in sources.values()):
            raise UserError(f"{path} is damaged (not an object of image records); {fix}")
        # only what sources.json records (a picture cut off by a kill is not): one file per image_id
        have = {int(k): v["file"] for k, v in sources.items() if (images / v["file"]).exists()}
        todo = {}  # parquet file -> {row: image_id}
        for image_id, (file, row) in {s.image_id: s.image_path.rsplit(ROW_MARK, 1) for s in samples
                                      if ROW_MARK in s.image_path and s.image_id not in have}.items():
            todo.setdefault(file, {})[int(row)] = image_id

        def write_images(pf, file: str, rows: dict) -> None:
            end = 0
            for g in range(pf.metadata.num_row_groups):
                start, end = end, end + pf.metadata.row_group(g).num_rows
                wanted = [r for r in rows if start <= r < end and rows[r] not in have]  # a whole copy's rerun: the rest
                if not wanted:
                    continue
                column = pf.read_row_group(g, columns=["image"]).column("image")
                for r in wanted:
                    data = (column[r - start].as_py() or {}).get("bytes")
                    if not data:
                        raise UserError(f"{file} row {r}: the image column holds no bytes; the dataset must embed its "
                                        "images like lmms-lab/VQAv2")
                    name = f"{rows[r]:012d}{IMAGE_SUFFIXES.get(data[:4], '.jpg')}"
                    (images / name).write_bytes(data)  # stored bytes, not re-encoded
                    sources[str(rows[r])], have[rows[r]] = {"file": name, "source": f"{file}{ROW_MARK}{r}"}, name
                    bar.update(1)
                write_json(path, sources)  # a killed run refetches at most this row group

        if todo:
            images.mkdir(parents=True, exist_ok=True)
            reads, first = HubReads(images.parent / "files", stall_s), next(iter(todo))
            try:
                with _hub_errors(m[1] if (m := HUB_URL.fullmatch(first)) else first, images.parent), tqdm(
                        total=sum(map(len, todo.values())), desc="caching the sample's images", unit="img") as bar:
                    for file, rows in todo.items():
                        _with_parquet(file, reads, lambda pf: write_images(pf, file, rows))
            finally:  # the pictures written so far are recorded, so a rerun after an error fetches only the rest
                write_json(path, sources)
    return [dataclasses.replace(s, image_path=(images / have[s.image_id]).as_posix()) if ROW_MARK in s.image_path
            else s for s in samples]
