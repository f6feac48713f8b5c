"""VQAv2 validation from a parquet dataset on the Hugging Face hub (default lmms-lab/VQAv2), or from a
local folder with the same layout (data/validation-*.parquet): no COCO or JSON download needed.

What is read, and when:
1. the question columns of every validation file (parquet column projection: over the hub only these
   column chunks are fetched by HTTP range requests, not the images) -> kept in <cache_dir>/vqav2_hub/
   so the seeded sample is drawn and frozen by question_id exactly as on the JSON path, and later runs
   (resume, the fine-tuned evaluation) work offline;
2. after the sample is frozen, only the parquet row groups that hold the sample's images, whose bytes are
   written unchanged to <cache_dir>/vqav2_hub/images/ (the model, the report and the demo open them there).

The hub is reached through huggingface_hub, so HF_ENDPOINT (e.g. https://hf-mirror.com), HF_TOKEN and
HF_HUB_OFFLINE apply as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

from .config import looks_like_path
from .samples import VQASample, build_samples
from .errors import UserError
from .files import read_json, write_json
from .locks import exclusive_lock

VALIDATION_FILES = "data/validation-*.parquet"
CACHE_FOLDER = "vqav2_hub"
# the lmms-lab/VQAv2 columns this reader needs (its `image` is a datasets Image: struct<bytes, path>)
QUESTION_COLUMNS = ("question_id", "image_id", "question", "answers", "multiple_choice_answer", "answer_type",
                    "question_type")
ROW_MARK = "#row="  # image_path of a not yet cached image: <parquet file>#row=<row in that file>


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_answers(t) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    fields = {f.name: f.type for f in t.value_type}
    return "answer" in fields and _is_text(fields["answer"])


def _is_image(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_struct(t) and "bytes" in [f.name for f in t]
            and (pa.types.is_binary(t.field("bytes").type) or pa.types.is_large_binary(t.field("bytes").type)))


def _schema_checks():
    import pyarrow as pa

    ints = (pa.types.is_integer, "an integer (int64)")
    text = (_is_text, "string")
    return {"question_id": ints, "image_id": ints, "question": text,
            "answers": (_is_answers, "list<struct<answer: string, answer_confidence: string, answer_id: int64>>"),
            "multiple_choice_answer": text, "answer_type": text, "question_type": text,
            "image": (_is_image, "a datasets Image (struct<bytes: binary, path: string>)")}


def check_schema(schema, where: str) -> None:
    """One line naming the first missing or mistyped column of the lmms-lab/VQAv2 schema."""
    for name, (ok, want) in _schema_checks().items():
        if name not in schema.names:
            raise UserError(f"{where}: no column {name!r} (the lmms-lab/VQAv2 schema has {', '.join(_schema_checks())}); "
                            "is --hf_dataset a VQAv2 parquet dataset?")
        if not ok(schema.field(name).type):
            raise UserError(f"{where}: column {name!r} has type {schema.field(name).type}, expected {want} "
                            "as in lmms-lab/VQAv2")


@contextlib.contextmanager
def _hub_errors(hf_dataset: str, cache: Path | None):
    """Network and hub failures as one line saying how to get the data."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise UserError(f"dataset {hf_dataset} not found on the hub (nor a local folder of that name); "
                        "check --hf_dataset (e.g. lmms-lab/VQAv2)") from None
    except RevisionNotFoundError:
        raise UserError(f"dataset {hf_dataset} has no revision as given by --hf_dataset_revision; "
                        "use a commit hash, branch or tag of that dataset, or \"\" for the newest") from None
    except (HTTPError, OSError) as e:
        where = f"{cache} holds no copy yet" if cache is not None else "there is no local copy"
        reason = ("HF_HUB_OFFLINE is set; unset it to download" if isinstance(e, OfflineModeIsEnabled)
                  else f"{constants.ENDPOINT}: {type(e).__name__}: {str(e)[:100]}")
        raise UserError(f"cannot reach the Hugging Face hub for {hf_dataset} ({reason}) and "
                        f"{where}; set HF_ENDPOINT=https://hf-mirror.com (a mirror reachable from China), or download "
                        f"first: hf download {hf_dataset} --repo-type dataset --include \"{VALIDATION_FILES}\" "
                        f"--local-dir data/vqav2_hub, then --hf_dataset=data/vqav2_hub") from None


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


def _list_files(hf_dataset: str, revision: str) -> tuple[list[str], str]:
    """(validation parquet files, resolved revision) of a local folder or a hub dataset."""
    folder = Path(hf_dataset)
    if folder.is_dir():
        files = sorted(p.resolve().as_posix() for p in folder.glob(VALIDATION_FILES))
        if not files:
            raise UserError(f"{folder} has no {VALIDATION_FILES} files; a local --hf_dataset folder needs the hub "
                            "layout, e.g. data/validation-00000-of-00014.parquet")
        return files, ""
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(hf_dataset, revision=revision or None)
    files = sorted(s.rfilename for s in info.siblings or [] if fnmatch(s.rfilename, VALIDATION_FILES))
    if not files:
        raise UserError(f"dataset {hf_dataset} has no {VALIDATION_FILES} files; is it a VQAv2 parquet dataset "
                        "like lmms-lab/VQAv2?")
    return [f"hf://datasets/{hf_dataset}@{info.sha}/{f}" for f in files], info.sha


def open_parquet(file: str):
    """A pyarrow ParquetFile for a local path or an hf:// URL, read lazily: only the byte ranges asked for.

    Over HTTP, cache_type="none" makes each read one range request of exactly the bytes pyarrow needs (a
    read-ahead buffer would pull in the image bytes next to the question columns), and pre_buffer merges
    the question columns of a row group into one request."""
    import pyarrow.parquet as pq

    if file.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        return pq.ParquetFile(HfFileSystem().open(file, "rb", cache_type="none"), pre_buffer=True)
    return pq.ParquetFile(file, pre_buffer=True)


def read_question_table(files: list[str]):
    """The question columns of every file (no image bytes), with each row's file index and row number."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    tables = []
    for k, file in enumerate(tqdm(files, desc="question columns", unit="file", disable=len(files) < 2)):
        with _reading(file):
            pf = open_parquet(file)
            check_schema(pf.schema_arrow, file)
            t = pf.read(columns=list(QUESTION_COLUMNS))
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


def _build_cache(cache: Path, hf_dataset: str, revision: str, key: dict):
    import pyarrow.parquet as pq

    with _hub_errors(hf_dataset, cache):
        files, sha = _list_files(hf_dataset, revision)
        print(f"reading the question columns of {len(files)} validation file(s) of {hf_dataset} (images later, "
              "only the sample's)", flush=True)
        table = read_question_table(files)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".questions.parquet.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, cache / "questions.parquet")
    source = {**key, "revision": sha, "files": files, "rows": table.num_rows}
    write_json(cache / "source.json", source)  # last: it vouches for questions.parquet
    return table, source


def _rows(table) -> list[dict]:
    """The question table as dicts, each `answers` a list of the answer strings (answer_confidence and
    answer_id are not used: leaving them in Arrow halves the time and memory of this step)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table.column("answers")).to_pylist()  # None for a null list
    flat = iter(pc.struct_field(pc.list_flatten(table.column("answers")), "answer").to_pylist())
    answers = [None if n is None else list(itertools.islice(flat, n)) for n in lengths]
    names = [n for n in table.column_names if n != "answers"]
    columns = [table.column(n).to_pylist() for n in names] + [answers]
    names.append("answers")
    return [dict(zip(names, values)) for values in zip(*columns)]


def load_hub_samples(hf_dataset: str, revision: str, split: str, cache_dir: str | Path | None) -> list[VQASample]:
    """Every validation question of `hf_dataset` as VQASamples, checked like the JSON path's entries.

    With a `cache_dir`, the question table is read once into <cache_dir>/vqav2_hub/ and reused (offline too)."""
    if split != "val":
        raise UserError(f"dataset vqav2_hub holds VQAv2 validation only (split val, not {split}); fine-tuning needs "
                        "COCO train2014 + the official JSON: --dataset=vqav2 (README 数据集准备, option B)")
    if not hf_dataset:
        raise UserError("--hf_dataset is empty; use a hub dataset id (lmms-lab/VQAv2) or a local parquet folder")
    if looks_like_path(hf_dataset) and not Path(hf_dataset).expanduser().is_dir():
        raise UserError(f"--hf_dataset={hf_dataset}: no such folder (a hub id looks like lmms-lab/VQAv2; a local "
                        f"folder must hold the hub layout, {VALIDATION_FILES})")
    key = _source_key(hf_dataset, revision)
    if cache_dir is None:
        with _hub_errors(hf_dataset, None):
            files, sha = _list_files(hf_dataset, revision)
            table, source = read_question_table(files), {**key, "revision": sha, "files": files}
    else:
        cache = Path(cache_dir) / CACHE_FOLDER
        cached = _read_cache(cache, key)
        if cached is None:
            # several processes (accelerate) or runs: one reads, the others wait and use its copy
            with exclusive_lock(cache / ".lock", f"the hub question cache {cache}", wait=True):
                cached = _read_cache(cache, key) or _build_cache(cache, hf_dataset, revision, key)
        table, source = cached
    rows = _rows(table)
    files = source["files"]
    questions = [{"question_id": r["question_id"], "image_id": r["image_id"], "question": r["question"]} for r in rows]

    def entry(i: int) -> str:
        return f"{files[rows[i]['source_file']]}: row {rows[i]['source_row']}"

    return build_samples(questions, rows, question_entry=entry, annotation_entry=entry,
                         image_path=lambda i, r: f"{files[r['source_file']]}{ROW_MARK}{r['source_row']}",
                         questions_source=f"{hf_dataset} validation", annotations_source=f"{hf_dataset} validation")


def _image_suffix(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return {"JPEG": ".jpg", "PNG": ".png"}.get(img.format, f".{(img.format or 'img').lower()}")
    except (UnidentifiedImageError, OSError, ValueError):
        return ".img"  # written anyway: opening it later gives the usual per-question image error row


def cache_hub_images(samples: list[VQASample], cache_dir: str | Path) -> list[VQASample]:
    """Write the images of `samples` (image_path "<parquet>#row=<n>") to <cache_dir>/vqav2_hub/images/ as
    they are stored (no re-encoding), reading only the row groups that hold them; return the samples with
    image_path set to those files. images/sources.json records each file's parquet row."""
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
        todo, queued = defaultdict(dict), set()  # parquet file -> {row: image_id}
        for s in pending:
            if s.image_id not in have and s.image_id not in queued:
                file, row = s.image_path.rsplit(ROW_MARK, 1)
                todo[file][int(row)] = s.image_id
                queued.add(s.image_id)
        if todo:
            images.mkdir(parents=True, exist_ok=True)
            first = next(iter(todo))
            with _hub_errors(first.split("@")[0].removeprefix("hf://datasets/"), images):
                _write_images(todo, images, sources, have, tqdm)
            write_json(sources_path, sources)
    return [dataclasses.replace(s, image_path=(images / have[s.image_id]).as_posix()) if ROW_MARK in s.image_path
            else s for s in samples]


def _write_images(todo: dict, images: Path, sources: dict, have: dict, tqdm) -> None:
    n = sum(len(rows) for rows in todo.values())
    bar = tqdm(total=n, desc="caching the sample's images", unit="img")
    for file, rows in todo.items():
        with _reading(file):
            pf = open_parquet(file)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            end = start + pf.metadata.row_group(g).num_rows
            wanted = [r for r in rows if start <= r < end]
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
            start = end
    bar.close()
