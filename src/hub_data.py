"""VQAv2 evaluation splits from a parquet dataset on the Hugging Face hub (default lmms-lab/VQAv2) or a
local folder with its layout: question columns by range requests, then only the sample's images (docs/data.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import re
import tempfile
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import quote

from .config import looks_like_path
from .preflight import build_samples
from .samples import VQASample
from .errors import UserError
from .files import read_json, write_json
from .hub_http import STALL_S, HubReads, HubTrouble, RangedFile, RangesUnusable, download_whole, endpoint, retrying
from .locks import exclusive_lock

DEFAULT_DATASET = "lmms-lab/VQAv2"
MOVED_DATASET = "lmms-lab-encoder/VQAv2"  # where lmms-eval moved the data (July 2026); read when the default is missing
# split -> its files in the hub layout; "data/test-*" does not match data/testdev-* (fnmatch: "-" after "test")
SPLIT_FILES = {"val": "data/validation-*.parquet", "testdev": "data/testdev-*.parquet", "test": "data/test-*.parquet"}
SPLIT_NAMES = {"val": "validation", "testdev": "testdev", "test": "test"}  # as the hub names them, for messages
ANSWERED_SPLITS = ("val",)  # testdev / test: questions only (their answers are on the EvalAI server)
VALIDATION_FILES = SPLIT_FILES["val"]
CACHE_FOLDER = "vqav2_hub"
WHOLE_FILES = "files"  # <cache>/files/<repo>/<commit>/<path>: files downloaded whole (a server that ignores Range)
MIRROR = "https://hf-mirror.com"
# the lmms-lab/VQAv2 columns this reader needs (its `image` is a datasets Image: struct<bytes, path>)
QUESTION_COLUMNS = ("question_id", "image_id", "question", "answers", "multiple_choice_answer", "answer_type",
                    "question_type")
ANSWER_COLUMNS = QUESTION_COLUMNS[3:]  # neither read nor required for testdev / test
ROW_MARK = "#row="  # image_path of a not yet cached image: <parquet file>#row=<row in that file>
HUB_URL = re.compile(r"hf://datasets/([^/@]+/[^/@]+)@([^/]+)/(.+)")
SHARD = re.compile(r"(.*-)(\d{5})-of-(\d{5})\.parquet")  # the hub's file names: <split>-<k>-of-<n>.parquet


def _schema_checks():
    import pyarrow as pa

    t = pa.types

    def field(x, name, ok):
        return t.is_struct(x) and x.get_field_index(name) >= 0 and ok(x.field(name).type)

    ints = (t.is_integer, "an integer (int64)")
    text = (lambda x: t.is_string(x) or t.is_large_string(x), "string")
    answers = (lambda x: (t.is_list(x) or t.is_large_list(x)) and field(x.value_type, "answer", text[0]),
               "list<struct<answer: string, answer_confidence: string, answer_id: int64>>")
    image = (lambda x: field(x, "bytes", lambda b: t.is_binary(b) or t.is_large_binary(b)),
             "a datasets Image (struct<bytes: binary, path: string>)")
    return {"question_id": ints, "image_id": ints, "question": text, "answers": answers, "multiple_choice_answer": text,
            "answer_type": text, "question_type": text, "image": image}


def check_schema(schema, where: str, with_answers: bool = True) -> None:
    """One line naming the first missing or mistyped column of the lmms-lab/VQAv2 schema (the answer
    columns only `with_answers`: testdev / test files may lack them)."""
    checks = _schema_checks()
    for name, (ok, want) in checks.items():
        if not with_answers and name in ANSWER_COLUMNS:
            continue
        if name not in schema.names:
            raise UserError(f"{where}: no column {name!r} (the lmms-lab/VQAv2 schema has {', '.join(checks)}); "
                            "is --hf_dataset a VQAv2 parquet dataset?")
        if not ok(schema.field(name).type):
            raise UserError(f"{where}: column {name!r} has type {schema.field(name).type}, expected {want} "
                            "as in lmms-lab/VQAv2")


def _with_parquet(file: str, reads: HubReads, action):
    """action(pyarrow ParquetFile of `file`): a local path, a hub file by checked range requests (pre_buffer:
    one per row group), or its whole copy once ranges proved unusable."""
    import pyarrow.parquet as pq

    m = HUB_URL.fullmatch(file)
    if m is None:
        with _reading(file):
            return action(pq.ParquetFile(file, pre_buffer=True))
    repo, commit, path = m.groups()
    local = reads.whole_dir / repo.replace("/", "--") / commit / path
    if not local.exists():
        remote = RangedFile(f"{endpoint()}/datasets/{repo}/resolve/{commit}/{quote(path)}", path, reads)
        if reads.ranges_ok:
            try:
                with _reading(file):
                    return action(pq.ParquetFile(remote, pre_buffer=True))
            except RangesUnusable as e:
                reads.ranges_ok = False
                reads.note("ranges", f"note: {endpoint()} {e} for {path}; those bytes are not used: the files are "
                                     f"downloaded whole once to {reads.whole_dir} and read there")
        download_whole(remote.url, local, path, remote.size, reads)
    with _reading(local.as_posix()):
        return action(pq.ParquetFile(local, pre_buffer=True))


def download_advice(hf_dataset: str, include: str = VALIDATION_FILES) -> str:
    """How to get the files another way (the end of every can't-read-the-hub line)."""
    other = ("unset HF_ENDPOINT to try huggingface.co itself" if endpoint().rstrip("/") == MIRROR
             else f"set HF_ENDPOINT={MIRROR} (a mirror reachable from China)")
    return (f"{other}, or download first: hf download {hf_dataset} --repo-type dataset --include \"{include}\" "
            f"--local-dir data/vqav2_hub, then --hf_dataset=data/vqav2_hub")


def hub_test_files_advice(hf_dataset: str) -> str:
    """The fix for test-dev questions missing from the test files of a hub dataset or local folder."""
    hub_id = DEFAULT_DATASET if Path(hf_dataset).is_dir() else hf_dataset
    return ("read data/testdev-*.parquet and data/test-*.parquet from one revision of one dataset "
            f"(--hf_dataset_revision=<commit>, another --output_dir), or {download_advice(hub_id, 'data/test*.parquet')}")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]  # huggingface_hub's messages span several lines


@contextlib.contextmanager
def _hub_errors(hf_dataset: str, cache: Path | None):
    """Network and hub failures as one line saying what happened and how to get the data."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"what is in {cache} is kept" if cache is not None else "nothing was kept"
    try:
        yield
    except HubTrouble as e:
        raise UserError(f"the Hugging Face hub at {endpoint()} {e.reason}, reading {hf_dataset}; {e.retry} "
                        f"({kept}), or {download_advice(hf_dataset)}") from None
    except HfHubHTTPError as e:  # reached: it answered an error
        raise UserError(f"the Hugging Face hub at {endpoint()} answered HTTP {e.response.status_code} reading "
                        f"{hf_dataset} ({_one_line(e)}); {kept}; {download_advice(hf_dataset)}") from None
    except (httpx2.HTTPError, OSError) as e:
        where = f"{cache} holds no copy yet" if cache is not None else "there is no local copy"
        reason = ("HF_HUB_OFFLINE is set; unset it to download" if isinstance(e, OfflineModeIsEnabled)
                  else f"{endpoint()}: {type(e).__name__}: {_one_line(e)[:100]}")
        raise UserError(f"cannot reach the Hugging Face hub for {hf_dataset} ({reason}) and "
                        f"{where}; {download_advice(hf_dataset)}") from None


@contextlib.contextmanager
def _reading(file: str):
    """A damaged parquet file as one line naming it (network failures go on to _hub_errors)."""
    import pyarrow as pa

    try:
        yield
    except (OSError, pa.ArrowException) as e:
        if file.startswith("hf://") and not isinstance(e, pa.ArrowInvalid):
            raise
        raise UserError(f"cannot read {file}: {str(e)[:150]}; the file may be truncated or not parquet, "
                        "download it again") from None


def _hub_files(hf_dataset: str, revision: str, pattern: str, reads: HubReads) -> tuple[str | None, list[str], str]:
    """(why the hub dataset cannot be read, or None; hf:// URLs of its `pattern` files; commit) at `revision`
    ("" = newest); a plain 404 (a mirror without the hub's X-Error-Code) means not found too."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = retrying(f"the dataset info of {hf_dataset}", lambda: HfApi().dataset_info(
            hf_dataset, revision=revision or None, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT), reads)
    except RevisionNotFoundError:
        return f"has no revision {revision}", [], ""
    except HfHubHTTPError as e:
        if isinstance(e, RepositoryNotFoundError) or (e.response is not None and e.response.status_code == 404):
            return "is not found", [], ""
        raise
    except ValueError as e:  # JSONDecodeError: a cut-off answer
        raise HubTrouble(f"answered the dataset info request for {hf_dataset} with broken JSON ({str(e)[:60]})",
                         "rerun") from None
    files = sorted(s.rfilename for s in info.siblings or [] if fnmatch(s.rfilename, pattern))
    urls = [f"hf://datasets/{hf_dataset}@{info.sha}/{f}" for f in files]
    return (None if files else f"has no {pattern} files"), urls, info.sha


def _check_shards(files: list[str], where: str, pattern: str) -> None:
    """Every file of a set named <split>-<k>-of-<n>.parquet is there (a download may have stopped early)."""
    names = {f.rsplit("/", 1)[1] for f in files}
    missing = sorted({f"{m[1]}{k:05d}-of-{m[3]}.parquet" for m in map(SHARD.fullmatch, names) if m
                      for k in range(int(m[3]))} - names)
    if missing:
        raise UserError(f"{where} lacks {len(missing)} of the files of {pattern} ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}), a download that stopped early; rerun "
                        f"hf download {DEFAULT_DATASET} --repo-type dataset --include \"{pattern}\" "
                        f"--local-dir {where} (it fetches only what is missing)")


def _list_files(hf_dataset: str, revision: str, pattern: str, reads: HubReads) -> tuple[str, list[str], str]:
    """(dataset used, its files matching `pattern`, resolved revision) of a local folder or a hub dataset.
    The default dataset unusable on the hub means MOVED_DATASET, an explicitly named one never."""
    folder = Path(hf_dataset)
    if folder.is_dir():
        files = sorted(p.resolve().as_posix() for p in folder.glob(pattern))
        if not files:
            raise UserError(f"{folder} has no {pattern} files; a local --hf_dataset folder needs the hub "
                            "layout, e.g. data/validation-00000-of-00014.parquet")
        _check_shards(files, folder.as_posix(), pattern)
        return folder.resolve().as_posix(), files, ""
    why, files, sha = _hub_files(hf_dataset, revision, pattern, reads)
    if why is None:
        return hf_dataset, files, sha
    if hf_dataset != DEFAULT_DATASET:
        fix = ("check --hf_dataset (e.g. lmms-lab/VQAv2)" if why == "is not found"
               else "is it a VQAv2 parquet dataset like lmms-lab/VQAv2?" if why.startswith("has no data/")
               else "use a commit hash, branch or tag of that dataset, or \"\" for the newest")
        raise UserError(f"dataset {hf_dataset} {why.removeprefix('is ')} on the hub at {endpoint()} (nor a local "
                        f"folder of that name); {fix}")
    moved_why, files, sha = _hub_files(MOVED_DATASET, revision, pattern, reads)
    if moved_why is not None:
        check = "--hf_dataset and --hf_dataset_revision" if revision else "--hf_dataset"
        raise UserError(f"dataset {hf_dataset} {why} on the hub at {endpoint()}, and {MOVED_DATASET} (where "
                        f"lmms-eval moved it) {moved_why}; check {check}, or {download_advice(hf_dataset)}")
    reads.note("moved", f"note: {hf_dataset} {why.removeprefix('is ')}; using {MOVED_DATASET}")
    return MOVED_DATASET, files, sha


def read_question_table(files: list[str], reads: HubReads, with_answers: bool = True):
    """The question columns of every file (no image bytes, no answer columns unless `with_answers`),
    with each row's file index and row number; the bar counts the bytes received from the hub."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    columns = [c for c in QUESTION_COLUMNS if with_answers or c not in ANSWER_COLUMNS]

    def questions(pf, file: str):
        check_schema(pf.schema_arrow, file, with_answers)
        return pf.read(columns=columns)

    tables = []
    with tqdm(desc=f"question columns of {len(files)} file(s)", unit="B", unit_scale=True,
              disable=not files[0].startswith("hf://")) as reads.bar:
        for k, file in enumerate(files):
            reads.bar.set_postfix_str(f"file {k + 1}/{len(files)}", refresh=False)
            t = _with_parquet(file, reads, lambda pf: questions(pf, file))
            t = t.append_column("source_file", pa.array([k] * t.num_rows, pa.int32()))
            tables.append(t.append_column("source_row", pa.array(range(t.num_rows), pa.int64())))
    return pa.concat_tables(tables, promote_options="permissive")


def _source_key(hf_dataset: str, revision: str) -> dict:
    folder = Path(hf_dataset)
    return {"hf_dataset": folder.resolve().as_posix() if folder.is_dir() else hf_dataset, "requested_revision": revision}


def _read_cache(cache: Path, key: dict):
    import pyarrow.parquet as pq

    source_path = cache / "source.json"
    if not source_path.exists():
        return None
    fix = f"delete the folder {cache} and rerun: the questions are read again from the dataset"
    source = read_json(source_path, "hub question cache record", fix=fix)
    if not isinstance(source, dict):
        raise UserError(f"{source_path} is damaged (not a JSON object); {fix}")
    if {k: source.get(k) for k in key} != key:
        raise UserError(f"{cache} holds questions read from {source.get('hf_dataset')} revision "
                        f"{source.get('requested_revision') or 'newest'}, but this run asks for {key['hf_dataset']} "
                        f"revision {key['requested_revision'] or 'newest'}; use the baseline's --hf_dataset and "
                        "--hf_dataset_revision, or another --output_dir")
    try:
        return pq.read_table(cache / "questions.parquet"), source
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {cache / 'questions.parquet'} ({str(e)[:100]}); delete {cache / 'source.json'} "
                        "to read the questions again") from None


def _read_source(hf_dataset: str, revision: str, split: str, whole_dir: Path, cache: Path | None, stall_s: float):
    """(question table, source record) of `split` read from the dataset itself."""
    reads = HubReads(whole_dir, stall_s)
    with _hub_errors(hf_dataset, cache):
        used, files, sha = _list_files(hf_dataset, revision, SPLIT_FILES[split], reads)
    with _hub_errors(used, cache):
        print(f"reading the question columns of {len(files)} {SPLIT_NAMES[split]} file(s) of {used} (images later, "
              "only the sample's)", flush=True)
        table = read_question_table(files, reads, with_answers=split in ANSWERED_SPLITS)
    return table, {**_source_key(hf_dataset, revision), "used_dataset": used, "revision": sha, "files": files,
                   "rows": table.num_rows}


def _build_cache(cache: Path, hf_dataset: str, revision: str, split: str, stall_s: float):
    import pyarrow.parquet as pq

    table, source = _read_source(hf_dataset, revision, split, cache / WHOLE_FILES, cache, stall_s)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".questions.parquet.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, cache / "questions.parquet")
    write_json(cache / "source.json", source)  # last: it vouches for questions.parquet
    return table, source


def hub_source(cache_dir: str | Path) -> dict | None:
    """What <cache_dir>/vqav2_hub holds (None before the first read): `hf_dataset` and `requested_revision`
    as asked, `used_dataset` (MOVED_DATASET when the default was missing), `revision` read and `files`."""
    path = Path(cache_dir) / CACHE_FOLDER / "source.json"
    return read_json(path, "hub question cache record", fix=f"delete the folder {path.parent} and rerun") \
        if path.exists() else None


def _rows(table) -> list[dict]:
    """The question table as dicts, each `answers` a list of the answer strings (answer_confidence and
    answer_id are not used: leaving them in Arrow halves the time and memory of this step)."""
    import pyarrow.compute as pc

    if "answers" not in table.column_names:  # testdev / test: questions only
        return [dict(zip(table.column_names, values)) for values in zip(*(c.to_pylist() for c in table.columns))]
    lengths = pc.list_value_length(table.column("answers")).to_pylist()  # None for a null list
    flat = iter(pc.struct_field(pc.list_flatten(table.column("answers")), "answer").to_pylist())
    answers = [None if n is None else list(itertools.islice(flat, n)) for n in lengths]
    names = [n for n in table.column_names if n != "answers"]
    columns = [table.column(n).to_pylist() for n in names] + [answers]
    names.append("answers")
    return [dict(zip(names, values)) for values in zip(*columns)]


def load_hub_samples(hf_dataset: str, revision: str, split: str, cache_dir: str | Path | None,
                     stall_s: float = STALL_S) -> list[VQASample]:
    """Every question of `split` (val, testdev, test; the last two without answers) as checked VQASamples whose
    image_path names its parquet row; the question table is kept in <cache_dir>/vqav2_hub/ (one per split)."""
    if split not in SPLIT_FILES:
        raise UserError(f"dataset vqav2_hub holds VQAv2's evaluation splits only (val, testdev, test; not {split}); "
                        "fine-tuning with --dataset=vqav2_hub trains on val minus the evaluated images (docs/data.md)")
    if not hf_dataset:
        raise UserError("--hf_dataset is empty; use a hub dataset id (lmms-lab/VQAv2) or a local parquet folder")
    if looks_like_path(hf_dataset) and not Path(hf_dataset).expanduser().is_dir():
        raise UserError(f"--hf_dataset={hf_dataset}: no such folder (a hub id looks like lmms-lab/VQAv2; a local "
                        f"folder must hold the hub layout, {VALIDATION_FILES})")
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="vqav2_hub-") as whole_dir:  # files read whole, if any
            table, source = _read_source(hf_dataset, revision, split, Path(whole_dir), None, stall_s)
    else:
        cache, key = Path(cache_dir) / CACHE_FOLDER, _source_key(hf_dataset, revision)
        cached = _read_cache(cache, key)
        if cached is None:
            # several processes (accelerate) or runs: one reads, the others wait and use its copy
            with exclusive_lock(cache / ".lock", f"the hub question cache {cache}", wait=True):
                cached = _read_cache(cache, key) or _build_cache(cache, hf_dataset, revision, split, stall_s)
        table, source = cached
    rows = _rows(table)
    files, used = source["files"], source.get("used_dataset", hf_dataset)  # records before used_dataset: as asked
    questions = [{"question_id": r["question_id"], "image_id": r["image_id"], "question": r["question"]} for r in rows]

    def entry(i: int) -> str:
        return f"{files[rows[i]['source_file']]}: row {rows[i]['source_row']}"

    source_name = f"{used} {SPLIT_NAMES[split]}"
    answered = split in ANSWERED_SPLITS
    return build_samples(questions, rows if answered else None, question_entry=entry, annotation_entry=entry,
                         image_path=lambda i, _: f"{files[rows[i]['source_file']]}{ROW_MARK}{rows[i]['source_row']}",
                         questions_source=source_name, annotations_source=source_name if answered else None)


def _image_suffix(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return {"JPEG": ".jpg", "PNG": ".png"}.get(img.format, f".{(img.format or 'img').lower()}")
    except (UnidentifiedImageError, OSError, ValueError):
        return ".img"  # written anyway: opening it later gives the usual per-question image error row


def cache_hub_images(samples: list[VQASample], cache_dir: str | Path, stall_s: float = STALL_S) -> list[VQASample]:
    """The samples with image_path set to their pictures, written as stored to <cache_dir>/vqav2_hub/images/
    from only the row groups that hold them (images/sources.json: each file's parquet row)."""
    from tqdm.auto import tqdm

    images = Path(cache_dir) / CACHE_FOLDER / "images"
    pending = [s for s in samples if ROW_MARK in s.image_path]
    if not pending:
        return samples
    with exclusive_lock(images.parent / ".lock", f"the hub image cache {images}", wait=True):
        sources_path = images / "sources.json"
        sources = read_json(sources_path, "hub image cache record", fix=f"delete the folder {images} and rerun") \
            if sources_path.exists() else {}
        if not isinstance(sources, dict) or not all(isinstance(v, dict) and "file" in v for v in sources.values()):
            raise UserError(f"{sources_path} is damaged (not an object of image records); delete the folder "
                            f"{images} and rerun, the pictures are fetched again")
        # one file per image_id: VQAv2's questions on one picture share it
        have = {int(k): v["file"] for k, v in sources.items() if (images / v["file"]).exists()}
        todo = defaultdict(dict)  # parquet file -> {row: image_id}
        for image_id, (file, row) in {s.image_id: s.image_path.rsplit(ROW_MARK, 1) for s in pending
                                      if s.image_id not in have}.items():
            todo[file][int(row)] = image_id
        if todo:
            images.mkdir(parents=True, exist_ok=True)
            first = next(iter(todo))
            m = HUB_URL.fullmatch(first)
            try:
                with _hub_errors(m[1] if m else first, images.parent):
                    _write_images(todo, images, sources, have, HubReads(images.parent / WHOLE_FILES, stall_s), tqdm)
            finally:  # the pictures written so far are recorded, so a rerun after an error fetches only the rest
                write_json(sources_path, sources)
    return [dataclasses.replace(s, image_path=(images / have[s.image_id]).as_posix()) if ROW_MARK in s.image_path
            else s for s in samples]


def _write_images(todo: dict, images: Path, sources: dict, have: dict, reads: HubReads, tqdm) -> None:
    n = sum(len(rows) for rows in todo.values())
    bar = tqdm(total=n, desc="caching the sample's images", unit="img")

    def write_file_images(pf, file: str, rows: dict) -> None:
        start = 0
        for g in range(pf.metadata.num_row_groups):
            end = start + pf.metadata.row_group(g).num_rows
            wanted = [r for r in rows if start <= r < end and rows[r] not in have]  # a rerun on a whole copy: the rest
            if wanted:
                with _reading(file):
                    column = pf.read_row_group(g, columns=["image"]).column("image")
                for r in wanted:
                    cell = column[r - start].as_py() or {}
                    data = cell.get("bytes")
                    if not data:
                        raise UserError(f"{file} row {r}: the image column holds no bytes (path {cell.get('path')!r}); "
                                        "the dataset must embed its images like lmms-lab/VQAv2")
                    name = f"{rows[r]:012d}{_image_suffix(data)}"
                    tmp = images / f".{name}.{os.getpid()}.tmp"
                    tmp.write_bytes(data)
                    os.replace(tmp, images / name)
                    sources[str(rows[r])] = {"file": name, "source": f"{file}{ROW_MARK}{r}"}
                    have[rows[r]] = name
                    bar.update(1)
                write_json(images / "sources.json", sources)  # a killed run refetches at most this row group
            start = end

    for file, rows in todo.items():
        _with_parquet(file, reads, lambda pf: write_file_images(pf, file, rows))
    bar.close()
