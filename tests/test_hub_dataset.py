"""dataset=vqav2_hub: VQAv2 validation from parquet in the lmms-lab/VQAv2 schema gives the same rows as
the official JSON + image files, reads only the sample's images, and fails in one line when the schema
does not match or the hub cannot be reached. Over HTTP (tests/hub_server.py, a real server on 127.0.0.1
that answers like the hub or a misbehaving mirror): range reads only, 429/5xx waited out a bounded number
of times, wrong range answers replaced by whole files, and the moved default repository.

The parquet here is written by `datasets` with the exact lmms-lab/VQAv2 features from data/tiny.jsonl,
next to the same questions in the official JSON layout."""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, module_fixture, run_script
from hub_server import SHA, HubServer, hub_env, lmms_features

from src.data import load_samples, materialize_images, sample_question_ids, select
from src.errors import UserError
from src.files import read_jsonl
from src.hub_data import hub_source

TINY = [json.loads(line) for line in (REPO / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]


def lmms_row(t: dict) -> dict:
    return {"question_type": t["question_type"], "multiple_choice_answer": t["multiple_choice_answer"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(t["answers"])],
            "image_id": t["image_id"], "answer_type": t["answer_type"], "question_id": t["question_id"],
            "question": t["question"], "image": {"bytes": (REPO / t["image_path"]).read_bytes(), "path": None}}


def write_lmms_parquet(folder: Path, rows: list[dict], n_files: int = 2, row_group: int = 3, features=None,
                       split: str = "validation") -> Path:
    """rows (shuffled) as data/<split>-0000k-of-0000n.parquet, `row_group` rows per parquet row group."""
    from datasets import Dataset

    rows = list(rows)
    random.Random(0).shuffle(rows)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for k in range(n_files):
        part = rows[k::n_files]
        ds = Dataset.from_list(part, features=features or lmms_features())
        ds.to_parquet(folder / "data" / f"{split}-{k:05d}-of-{n_files:05d}.parquet", batch_size=row_group)
    return folder


def write_official_json(data_dir: Path, tiny: list[dict]) -> Path:
    """The same questions in the official VQAv2 val2014 layout: data/vqa/*.json + data/images/val2014/."""
    (data_dir / "vqa").mkdir(parents=True)
    (data_dir / "images" / "val2014").mkdir(parents=True)
    questions = [{"image_id": t["image_id"], "question": t["question"], "question_id": t["question_id"]} for t in tiny]
    annotations = [{k: v for k, v in lmms_row(t).items() if k != "image"} for t in tiny]
    (data_dir / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (data_dir / "vqa" / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    for t in tiny:
        shutil.copyfile(REPO / t["image_path"], data_dir / "images" / "val2014" / f"COCO_val2014_{t['image_id']:012d}.jpg")
    return data_dir


@module_fixture
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return write_official_json(root / "json", TINY), write_lmms_parquet(root / "parquet", [lmms_row(t) for t in TINY])


def without_image_path(rows):
    return [{k: v for k, v in r.items() if k != "image_path"} for r in rows]


def test_hub_samples_equal_json_samples_and_only_the_sample_images_are_cached(both, tmp_path):
    json_dir, parquet_dir = both
    from_json = load_samples("vqav2", "val", json_dir)
    from_hub = load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), cache_dir=tmp_path)
    assert without_image_path([asdict(s) for s in from_hub]) == without_image_path([asdict(s) for s in from_json])
    assert len(from_hub) == len(TINY) and all("#row=" in s.image_path for s in from_hub)
    ids = sample_question_ids(from_hub, 5, seed=3)
    assert ids == sample_question_ids(from_json, 5, seed=3)
    chosen = materialize_images(select(from_hub, ids, "test"), "vqav2_hub", tmp_path)
    images = tmp_path / "vqav2_hub" / "images"
    assert {Path(s.image_path).parent for s in chosen} == {images}
    for s, j in zip(chosen, select(from_json, ids, "test")):
        assert Path(s.image_path).read_bytes() == Path(j.image_path).read_bytes()  # stored bytes, not re-encoded
    # only the sample's pictures were written; sources.json says where each came from
    assert sorted(p.name for p in images.glob("*.jpg")) == sorted({f"{s.image_id:012d}.jpg" for s in chosen})
    sources = json.loads((images / "sources.json").read_text())
    assert all(v["source"].startswith(str(parquet_dir.resolve())) and "#row=" in v["source"] for v in sources.values())


def test_cached_questions_and_images_are_reused_without_the_source(both, tmp_path):
    json_dir, parquet_dir = both
    copy = tmp_path / "copy"
    shutil.copytree(parquet_dir, copy)
    first = load_samples("vqav2_hub", "val", hf_dataset=str(copy), cache_dir=tmp_path / "out")
    chosen = materialize_images(first[:4], "vqav2_hub", tmp_path / "out")
    shutil.rmtree(copy / "data")  # the source is gone (like being offline): the cache in the output folder serves
    again = load_samples("vqav2_hub", "val", hf_dataset=str(copy), cache_dir=tmp_path / "out")
    assert [asdict(s) for s in again] == [asdict(s) for s in first]
    assert materialize_images(again[:4], "vqav2_hub", tmp_path / "out") == chosen
    with pytest.raises(UserError, match="holds questions read from .* use the baseline's --hf_dataset"):
        load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), hf_revision="v2", cache_dir=tmp_path / "out")


def test_vqav2_hub_is_validation_only(both, tmp_path):
    with pytest.raises(UserError, match="evaluation splits only .* --dataset=vqav2"):
        load_samples("vqav2_hub", "train", hf_dataset=str(both[1]), cache_dir=tmp_path)


def _schema_case(name):
    from datasets import Features, Value

    rows = [lmms_row(t) for t in TINY[:4]]
    features = dict(lmms_features())
    if name == "missing answers":
        for r in rows:
            del r["answers"]
        del features["answers"]
    elif name == "answers as text":
        for r in rows:
            r["answers"] = r["multiple_choice_answer"]
        features["answers"] = Value("string")
    elif name == "question_id as text":
        for r in rows:
            r["question_id"] = str(r["question_id"])
        features["question_id"] = Value("string")
    elif name == "image as a path":
        for r in rows:
            r["image"] = "x.jpg"
        features["image"] = Value("string")
    return rows, Features(features)


@pytest.mark.parametrize("case, fragments", [
    ("missing answers", ["no column 'answers'", "lmms-lab/VQAv2 schema"]),
    ("answers as text", ["column 'answers' has type string", "list<struct<answer: string"]),
    ("question_id as text", ["column 'question_id' has type string", "integer"]),
    ("image as a path", ["column 'image' has type string", "datasets Image"]),
])
def test_schema_mismatch_is_one_line_naming_the_column(tmp_path, case, fragments):
    rows, features = _schema_case(case)
    folder = write_lmms_parquet(tmp_path / "pq", rows, n_files=1, features=features)
    with pytest.raises(UserError) as e:
        load_samples("vqav2_hub", "val", hf_dataset=str(folder), cache_dir=tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "validation-00000-of-00001.parquet" in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_bad_rows_in_parquet_are_checked_like_json(tmp_path):
    rows = [lmms_row(t) for t in TINY[:4]]
    rows[2]["question"] = None
    folder = write_lmms_parquet(tmp_path / "pq", rows, n_files=1)
    with pytest.raises(UserError, match=r"validation-00000-of-00001\.parquet: row \d+: question must be a non-empty string, got NoneType"):
        load_samples("vqav2_hub", "val", hf_dataset=str(folder), cache_dir=tmp_path / "out")


def test_truncated_parquet_is_one_line_naming_the_file(both, tmp_path):
    copy = shutil.copytree(both[1], tmp_path / "pq")
    part = sorted((copy / "data").iterdir())[1]
    part.write_bytes(part.read_bytes()[:5000])
    with pytest.raises(UserError, match=rf"cannot read .*{part.name}: .* download it again"):
        load_samples("vqav2_hub", "val", hf_dataset=str(copy), cache_dir=tmp_path / "out")


def test_local_folder_without_validation_files(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match=r"has no data/validation-\*\.parquet files"):
        load_samples("vqav2_hub", "val", hf_dataset=str(tmp_path), cache_dir=tmp_path / "out")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable endpoint"])
@pytest.mark.slow
def test_offline_without_cache_says_set_hf_endpoint_or_download(tmp_path, env):
    proc = run_script("create_vqav2_baseline.py", "--dataset=vqav2_hub", "--hf_dataset=lmms-lab/VQAv2",
                      "--model_id=no-such-model-is-loaded", "--quantization=none", f"--output_dir={tmp_path}",
                      env=env, timeout=300)
    assert_one_line_error(proc, "lmms-lab/VQAv2", "HF_ENDPOINT=https://hf-mirror.com", "hf download")


def test_baseline_through_hub_and_json_gives_identical_rows(both, tiny_model_dir, tmp_path):
    """The real script, end to end on the tiny model: same questions, same answers and scores; only
    image_path differs, and it points at the image cached in the output folder."""
    json_dir, parquet_dir = both
    common = ["create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none", "--max_samples=10",
              "--num_workers=0", "--eval_batch=4"]
    run_script(*common, "--dataset=vqav2", f"--data_dir={json_dir}", f"--output_dir={tmp_path / 'json'}", check=True)
    copy = shutil.copytree(parquet_dir, tmp_path / "parquet")
    hub = [*common, "--dataset=vqav2_hub", f"--hf_dataset={copy}", f"--output_dir={tmp_path / 'hub'}"]
    run_script(*hub, check=True)
    rows_json = read_jsonl(tmp_path / "json" / "vqav2_baseline.jsonl")
    rows_hub = read_jsonl(tmp_path / "hub" / "vqav2_baseline.jsonl")
    assert len(rows_hub) == 10 and all(r["error"] is None for r in rows_hub)
    # every row records its run's dataset (a resumed run checks it), so that field names the path too
    assert [r["dataset"] for r in rows_hub] == ["vqav2_hub"] * 10 and [r["dataset"] for r in rows_json] == ["vqav2"] * 10
    assert (without_image_path([{**r, "dataset": None} for r in rows_hub])
            == without_image_path([{**r, "dataset": None} for r in rows_json]))
    for r in rows_hub:
        assert Path(r["image_path"]).parent == tmp_path / "hub" / "vqav2_hub" / "images"
        assert Path(r["image_path"]).name == f"{r['image_id']:012d}.jpg"
    m_json = json.loads((tmp_path / "json" / "vqav2_baseline_metrics.json").read_text())
    m_hub = json.loads((tmp_path / "hub" / "vqav2_baseline_metrics.json").read_text())
    assert m_hub.pop("dataset") == "vqav2_hub" and m_json.pop("dataset") == "vqav2"
    assert m_hub == m_json
    assert (json.loads((tmp_path / "hub" / "vqav2_sample_ids.json").read_text())["question_ids"]
            == json.loads((tmp_path / "json" / "vqav2_sample_ids.json").read_text())["question_ids"])
    # a rerun with the source gone and the hub switched off resumes from the output folder's copy
    shutil.rmtree(copy / "data")
    proc = run_script(*hub, env={"HF_HUB_OFFLINE": "1"}, check=True)
    assert "10 already done, 0 to go" in proc.stdout
    assert read_jsonl(tmp_path / "hub" / "vqav2_baseline.jsonl") == rows_hub

    # README steps 4-6 on the same folder, still offline: train an adapter (tiny), evaluate it on the hub
    # sample, and build the report, whose thumbnails come from the cached images
    run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--train_steps=2",
               "--per_device_batch=4", "--grad_accum=1", "--warmup_steps=1", "--num_workers=0",
               f"--output_dir={tmp_path / 'ft'}", check=True)
    run_script("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--quantization=none",
               "--num_workers=0", "--dataset=vqav2_hub", f"--hf_dataset={copy}", f"--output_dir={tmp_path / 'hub'}",
               f"--adapter_dir={tmp_path / 'ft' / 'lora_adapter'}", env={"HF_HUB_OFFLINE": "1"}, check=True)
    tuned = read_jsonl(tmp_path / "hub" / "vqav2_finetuned.jsonl")
    assert [r["image_path"] for r in tuned] == [r["image_path"] for r in rows_hub]
    run_script("compare_baseline_finetuned.py", f"--output_dir={tmp_path / 'hub'}", check=True)
    report = (tmp_path / "hub" / "comparisons" / "report.html").read_text()
    assert 'class="ph"' not in report  # no picture fell back to a placeholder
    for path in {r["image_path"] for r in rows_hub}:
        assert f'role="img" aria-label="{path}"' in report


# --- the hub over real HTTP (tests/hub_server.py on 127.0.0.1) -----------------------------------

MOVED = "lmms-lab-encoder/VQAv2"
PINNED = f"hf://datasets/lmms-lab/VQAv2@{SHA}/data/validation-"


@contextlib.contextmanager
def serving(monkeypatch, repos: dict, **kw):
    """A HubServer serving `repos`, with huggingface_hub (already imported here) pointed at it as
    HF_ENDPOINT points a fresh process at it."""
    from huggingface_hub import constants

    with HubServer(repos, **kw) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        yield hub


def notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("note:")]


def json_image_bytes(json_dir: Path, image_id: int) -> bytes:
    return (json_dir / "images" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").read_bytes()


def image_chunks(folder: Path) -> dict[str, list[range]]:
    """file name -> the byte ranges of its image column chunks (pyarrow's metadata, read locally)."""
    import pyarrow.parquet as pq

    chunks = {}
    for p in sorted((folder / "data").iterdir()):
        meta = pq.ParquetFile(p).metadata
        cols = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
        starts = [(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset, c) for c in cols
                  if c.path_in_schema.startswith("image.")]  # image.bytes and image.path
        chunks[p.name] = [range(start, start + c.total_compressed_size) for start, c in starts]
        assert chunks[p.name]
    return chunks


def test_hub_id_reads_only_the_question_ranges_of_validation_files_at_the_pinned_commit(both, tmp_path, monkeypatch,
                                                                                       capsys):
    """What a user with internet gets: one dataset-info request for the tag asked, only validation files, at
    the commit it resolved to, by checked range requests that never touch an image column chunk before
    the sample is chosen; then only the sample's pictures."""
    json_dir, parquet_dir = both
    with serving(monkeypatch, {"lmms-lab/VQAv2": parquet_dir}, tags={"lmms-lab/VQAv2": ("v1.0",)},
                 extra_files=("data/test-00000-of-00001.parquet", "data/testdev-00000-of-00001.parquet")) as hub:
        samples = load_samples("vqav2_hub", "val", hf_dataset="lmms-lab/VQAv2", hf_revision="v1.0", cache_dir=tmp_path)
        assert [r.path for r in hub.seen("info")] == ["/api/datasets/lmms-lab/VQAv2/revision/v1.0"]
        files = sorted(p.name for p in (parquet_dir / "data").iterdir())
        file_requests = [r for r in hub.requests if r.kind in ("head", "range", "whole")]
        assert {r.path for r in file_requests} == {f"/datasets/lmms-lab/VQAv2/resolve/{SHA}/data/{f}" for f in files}
        assert sorted(r.path for r in hub.seen("head")) == sorted({r.path for r in file_requests})  # one HEAD a file
        assert not hub.seen("whole") and {r.status for r in hub.seen("cdn") if r.range} == {206}
        chunks, sizes = image_chunks(parquet_dir), {f: (parquet_dir / "data" / f).stat().st_size for f in files}
        for resolve, cdn in zip(hub.seen("range"), [r for r in hub.seen("cdn") if r.range]):
            name = resolve.path.rsplit("/", 1)[1]
            first, last = map(int, cdn.range.removeprefix("bytes=").split("-"))
            if last == sizes[name] - 1:
                continue  # pyarrow's read of the footer: the file's last 64 KiB, whatever they hold
            assert not any(first < c.stop and c.start <= last for c in chunks[name]), (name, cdn.range)
        assert without_image_path([asdict(s) for s in samples]) == without_image_path(
            [asdict(s) for s in load_samples("vqav2", "val", json_dir)])
        assert all(s.image_path.startswith(PINNED) for s in samples)
        source = hub_source(tmp_path)
        assert source == json.loads((tmp_path / "vqav2_hub" / "source.json").read_text())
        assert (source["revision"], source["requested_revision"], source["hf_dataset"], source["used_dataset"]) == (
            SHA, "v1.0", "lmms-lab/VQAv2", "lmms-lab/VQAv2")
        before = len(hub.requests)
        chosen = materialize_images(samples[:3], "vqav2_hub", tmp_path)
        assert {r.kind for r in hub.requests[before:]} <= {"head", "range", "cdn", "?"}
    for s in chosen:
        assert Path(s.image_path).read_bytes() == json_image_bytes(json_dir, s.image_id)
    sources = json.loads((tmp_path / "vqav2_hub" / "images" / "sources.json").read_text())
    assert all(v["source"].startswith(PINNED) for v in sources.values())
    assert not notes(capsys.readouterr().out) and not (tmp_path / "vqav2_hub" / "files").exists()


@pytest.mark.parametrize("kind, status, times, retry_after, waits", [
    ("info", 429, 2, "0", [0, 0]),
    ("head", 503, 2, None, [1, 2]),  # no Retry-After: 1 s, then twice that
    ("range", 429, 1, "2", [2]),  # Retry-After beats the first wait of 1 s
    ("range", 502, 3, "0", [0, 0, 0]),
])
def test_rate_limits_and_server_errors_are_waited_out_with_one_note(both, tmp_path, monkeypatch, capsys,
                                                                   kind, status, times, retry_after, waits):
    json_dir, parquet_dir = both
    with serving(monkeypatch, {"lmms-lab/VQAv2": parquet_dir}) as hub:
        hub.fail(kind, status, times, retry_after)
        samples = load_samples("vqav2_hub", "val", hf_dataset="lmms-lab/VQAv2", cache_dir=tmp_path)
        chosen = materialize_images(samples[:4], "vqav2_hub", tmp_path)
    local = load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), cache_dir=tmp_path / "local")
    assert [asdict(s) for s in samples] == [{**asdict(s), "image_path": h.image_path} for s, h in zip(local, samples)]
    for s in chosen:
        assert Path(s.image_path).read_bytes() == json_image_bytes(json_dir, s.image_id)
    tries = hub.seen(kind)
    assert [r.status for r in tries[:times + 1]] == [status] * times + [200 if kind == "info" else 302]
    assert len(hub.seen(status=status)) == times  # each failed answer was tried again once, no more
    assert len({r.path for r in tries[:times + 1]}) == 1  # the same request
    gaps = [b.time - a.time for a, b in zip(tries[:times], tries[1:times + 1])]
    for gap, wait in zip(gaps, waits):
        assert wait - 0.05 <= gap < wait + 1.5, (gaps, waits)
    lines = notes(capsys.readouterr().out)
    assert len(lines) == 1 and f"answered HTTP {status}" in lines[0] and "trying again" in lines[0], lines


@pytest.mark.parametrize("kind, status, retry_after, fragments", [
    ("range", 429, "0", ["still answered HTTP 429 (Too Many Requests) to a range read of data/validation-0000",
                         "after 5 tries", "wait a few minutes and rerun"]),
    ("info", 503, "0", ["still answered HTTP 503 (Service Unavailable) to the dataset info of lmms-lab/VQAv2",
                        "after 5 tries", "wait a few minutes and rerun"]),
    ("head", 429, "3600", ["answered HTTP 429 (Too Many Requests) to the size of data/validation-0000",
                           "asks to wait 3600 s", "wait 1 h as it asks and rerun"]),
    ("info", 429, "86400", ["answered HTTP 429 (Too Many Requests) to the dataset info of lmms-lab/VQAv2",
                            "asks to wait 86400 s", "wait 24 h as it asks and rerun"]),
])
def test_a_hub_that_keeps_failing_is_one_error_line_after_bounded_tries(both, tmp_path, monkeypatch, kind, status,
                                                                        retry_after, fragments):
    with serving(monkeypatch, {"lmms-lab/VQAv2": both[1]}) as hub:
        hub.fail(kind, status, 50, retry_after)
        with pytest.raises(UserError) as e:
            load_samples("vqav2_hub", "val", hf_dataset="lmms-lab/VQAv2", cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "hf download lmms-lab/VQAv2" in msg, msg
    assert ("a few minutes" in msg) == (retry_after == "0"), msg  # the advice is the wait the server asks for
    for f in fragments:
        assert f in msg, (f, msg)
    assert len(hub.seen(kind)) == (5 if retry_after == "0" else 1)  # a long Retry-After is not waited out


@pytest.mark.slow
def test_retries_running_out_stops_the_script_with_one_error_line(both, tmp_path):
    """The real script on a mirror that rate-limits every range read: five tries, one note, one error line
    naming the dataset used, and no model is loaded."""
    with HubServer({MOVED: both[1]}) as hub:
        hub.fail("range", 429, 50, "0")
        proc = run_script("create_vqav2_baseline.py", "--dataset=vqav2_hub", f"--hf_dataset={MOVED}",
                          "--model_id=no-such-model-is-loaded", "--quantization=none", f"--output_dir={tmp_path}",
                          env=hub_env(hub, tmp_path), timeout=300)
    assert_one_line_error(proc, f"the Hugging Face hub at {hub.url} still answered HTTP 429", "after 5 tries",
                          f"reading {MOVED}", "HF_ENDPOINT=https://hf-mirror.com", f"hf download {MOVED}")
    assert len(hub.seen("range")) == 5 and not hub.seen(repo="lmms-lab/VQAv2")
    assert len(notes(proc.stdout)) == 1 and "answered HTTP 429" in notes(proc.stdout)[0]


@pytest.mark.parametrize("mode", ["ignore", "short", "shifted"])
def test_range_answers_that_are_not_the_bytes_asked_for_mean_whole_files(both, tmp_path, monkeypatch, capsys, mode):
    """A server that ignores Range (200 + the whole file), sends fewer bytes, or another range: its range
    bytes are never used; each file is downloaded whole once, checked, and read locally."""
    json_dir, parquet_dir = both
    with serving(monkeypatch, {"lmms-lab/VQAv2": parquet_dir}) as hub:
        hub.range_mode = mode
        if mode == "ignore":
            hub.fail("whole", 502, 1, "0")  # the downloads are retried too
        samples = load_samples("vqav2_hub", "val", hf_dataset="lmms-lab/VQAv2", cache_dir=tmp_path)
        chosen = materialize_images(samples[:5], "vqav2_hub", tmp_path)
    local = load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), cache_dir=tmp_path / "local")
    assert without_image_path([asdict(s) for s in samples]) == without_image_path([asdict(s) for s in local])
    for s in chosen:
        assert Path(s.image_path).read_bytes() == json_image_bytes(json_dir, s.image_id)
    assert len(hub.seen("range")) == 1  # no range is asked again after the first wrong answer
    files = sorted(p.name for p in (parquet_dir / "data").iterdir())
    downloads = [r.path.rsplit("/", 1)[1] for r in hub.seen("whole") if r.status == 302]
    assert sorted(downloads) == files  # each once, for the questions; the images came from the copies
    whole = tmp_path / "vqav2_hub" / "files" / "lmms-lab--VQAv2" / SHA / "data"
    assert sorted(p.name for p in whole.iterdir()) == files
    for f in files:
        assert (whole / f).read_bytes() == (parquet_dir / "data" / f).read_bytes()
    lines = notes(capsys.readouterr().out)
    ranges = [line for line in lines if "downloaded whole once" in line]
    assert len(ranges) == 1 and {"ignore": "ignores Range", "short": "bytes for a range of",
                                 "shifted": "with Content-Range"}[mode] in ranges[0], lines
    assert len(lines) == (2 if mode == "ignore" else 1), lines  # + the note on the retried download


def _moved_case(case: str, parquet_dir: Path, tmp_path: Path) -> tuple[dict, dict, str, str]:
    """(repos, their tags, --hf_dataset_revision, the note expected) for the default repo gone missing."""
    if case == "repository":
        return {MOVED: parquet_dir}, {}, "", "note: lmms-lab/VQAv2 not found; using lmms-lab-encoder/VQAv2"
    if case == "revision":  # the tag asked for exists only in the moved repository
        return ({"lmms-lab/VQAv2": parquet_dir, MOVED: parquet_dir}, {MOVED: ("v2",)}, "v2",
                "note: lmms-lab/VQAv2 has no revision v2; using lmms-lab-encoder/VQAv2")
    emptied = tmp_path / "emptied"
    emptied.mkdir()
    (emptied / "README.md").write_text("moved to lmms-lab-encoder/VQAv2\n")
    return ({"lmms-lab/VQAv2": emptied, MOVED: parquet_dir}, {}, "",
            "note: lmms-lab/VQAv2 has no data/validation-*.parquet files; using lmms-lab-encoder/VQAv2")


@pytest.mark.parametrize("case", ["repository", "revision", "validation files"])
def test_default_dataset_missing_reads_the_moved_copy_and_records_it(both, tmp_path, monkeypatch, capsys, case):
    json_dir, parquet_dir = both
    repos, tags, revision, expected_note = _moved_case(case, parquet_dir, tmp_path)
    with serving(monkeypatch, repos, tags=tags) as hub:
        samples = load_samples("vqav2_hub", "val", hf_revision=revision, cache_dir=tmp_path)  # the default dataset
        chosen = materialize_images(samples[:4], "vqav2_hub", tmp_path)
        assert {r.kind for r in hub.seen(repo="lmms-lab/VQAv2")} == {"info"}  # no file of it is read
    assert notes(capsys.readouterr().out) == [expected_note]
    assert without_image_path([asdict(s) for s in samples]) == without_image_path(
        [asdict(s) for s in load_samples("vqav2", "val", json_dir)])
    assert all(s.image_path.startswith(f"hf://datasets/{MOVED}@{SHA}/data/validation-") for s in samples)
    source = hub_source(tmp_path)
    assert (source["hf_dataset"], source["used_dataset"], source["revision"]) == ("lmms-lab/VQAv2", MOVED, SHA)
    sources = json.loads((tmp_path / "vqav2_hub" / "images" / "sources.json").read_text())
    assert all(v["source"].startswith(f"hf://datasets/{MOVED}@{SHA}/") for v in sources.values())
    for s in chosen:
        assert Path(s.image_path).read_bytes() == json_image_bytes(json_dir, s.image_id)
    # the server is gone: the same request is served from the cache, which remembers the dataset used
    again = load_samples("vqav2_hub", "val", hf_revision=revision, cache_dir=tmp_path)
    assert [asdict(s) for s in again] == [asdict(s) for s in samples] and not notes(capsys.readouterr().out)


@pytest.mark.parametrize("hf_dataset, served, fragments", [
    ("someone/VQAv2", {MOVED: None}, ["dataset someone/VQAv2 not found on the hub", "check --hf_dataset"]),
    ("lmms-lab/VQAv2", {}, ["dataset lmms-lab/VQAv2 is not found on the hub", f"and {MOVED} (where lmms-eval moved "
                                                                              "it) is not found", "hf download"]),
])
def test_no_fallback_for_a_named_dataset_and_one_line_when_both_are_missing(both, tmp_path, monkeypatch, hf_dataset,
                                                                            served, fragments):
    with serving(monkeypatch, {r: both[1] for r in served}) as hub:
        with pytest.raises(UserError) as e:
            load_samples("vqav2_hub", "val", hf_dataset=hf_dataset, cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    asked = [r.path for r in hub.seen("info")]
    assert asked == [f"/api/datasets/{hf_dataset}"] + ([f"/api/datasets/{MOVED}"] if hf_dataset == "lmms-lab/VQAv2"
                                                      else [])


def test_baseline_from_a_rate_limiting_mirror_without_the_default_repo(both, tiny_model_dir, tmp_path):
    """The real script, end to end on the tiny model, with HF_ENDPOINT at a mirror that has only the moved
    repository and answers the first range reads with 429: the rows hold the local folder's questions and
    the JSON path's pictures, and the run says once which repository it read."""
    json_dir, parquet_dir = both
    with HubServer({MOVED: parquet_dir}) as hub:
        hub.fail("range", 429, 3, "0")
        proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                          "--max_samples=6", "--num_workers=0", "--eval_batch=3", "--dataset=vqav2_hub",
                          f"--output_dir={tmp_path / 'out'}", env=hub_env(hub, tmp_path), check=True)
    assert len(hub.seen("range", status=429)) == 3
    lines = notes(proc.stdout)
    assert lines.count("note: lmms-lab/VQAv2 not found; using lmms-lab-encoder/VQAv2") == 1
    assert len([line for line in lines if "answered HTTP 429" in line]) == 1, lines
    rows = read_jsonl(tmp_path / "out" / "vqav2_baseline.jsonl")
    by_id = {s.question_id: s for s in load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir),
                                                    cache_dir=tmp_path / "local")}
    assert len(rows) == 6 and all(r["error"] is None for r in rows)
    for r in rows:
        s = by_id[r["question_id"]]
        assert (r["question"], r["gt_answers"], r["image_id"]) == (s.question, s.answers, s.image_id)
        assert Path(r["image_path"]).read_bytes() == json_image_bytes(json_dir, r["image_id"])
    assert hub_source(tmp_path / "out")["used_dataset"] == MOVED
    config = json.loads((tmp_path / "out" / "vqav2_baseline_config.json").read_text())
    assert config["hub_source"] == {"dataset": MOVED, "revision": hub_source(tmp_path / "out")["revision"]}


@pytest.mark.slow
def test_a_mirror_that_drips_bytes_stops_at_the_stall_deadline_with_one_line(both, tmp_path):
    """A mirror sending one byte of each range answer a second (each read well inside the read timeout):
    the script stops after --hub_stall_s with one line naming the mirror, its bar counting bytes."""
    with HubServer({"lmms-lab/VQAv2": both[1]}) as hub:
        hub.range_mode = "drip"
        proc = run_script("create_vqav2_baseline.py", "--dataset=vqav2_hub", "--hub_stall_s=3.0",
                          "--model_id=no-such-model-is-loaded", "--quantization=none", f"--output_dir={tmp_path}",
                          env=hub_env(hub, tmp_path), timeout=120)
    line = assert_one_line_error(proc, f"the Hugging Face hub at {hub.url} sent ", "in over 3 s to a range read of "
                                 "data/validation-00000-of-00002.parquet (it stalls)", "rerun later",
                                 "HF_ENDPOINT=https://hf-mirror.com", "hf download lmms-lab/VQAv2")
    assert "huggingface-cli" not in line
    assert len(hub.seen("range")) == 1  # a stall is not retried
    assert re.search(r"question columns of 2 file\(s\): \d+(\.\d+)?B", proc.stderr), proc.stderr[-2000:]


def test_a_mirror_that_ignores_range_and_drips_the_whole_file_stops_at_the_stall_deadline(both, tmp_path, monkeypatch):
    """The whole-file download that replaces range reads keeps the stall deadline too: one line naming it."""
    with serving(monkeypatch, {"lmms-lab/VQAv2": both[1]}) as hub:
        hub.range_mode, hub.drip_whole, hub.drip_s = "ignore", True, 0.2
        with pytest.raises(UserError) as e:
            load_samples("vqav2_hub", "val", cache_dir=tmp_path, hub_stall_s=1.0)
    msg = str(e.value)
    assert "\n" not in msg and "rerun later" in msg, msg
    assert "in over 1 s to downloading data/validation-00000-of-00002.parquet (it stalls)" in msg, msg


def test_a_stall_deadline_of_zero_is_refused_before_any_work():
    from src.preflight import check_value

    with pytest.raises(UserError, match=r"--hub_stall_s=0\.0: must be a positive number \(seconds a hub read"):
        check_value("HUB_STALL_S", 0.0)


@pytest.mark.parametrize("case", ["info with cut-off JSON", "named dataset, plain 404", "info answers 403",
                                  "listed file answers EntryNotFound", "listed file answers plain 404"])
def test_what_a_mirror_answers_wrongly_is_one_true_line(both, tmp_path, monkeypatch, case):
    repo = "someone/VQAv2" if "named" in case else "lmms-lab/VQAv2"
    with serving(monkeypatch, {} if "named" in case else {repo: both[1]},
                 extra_files=("data/validation-00002-of-00003.parquet",) if "listed" in case else ()) as hub:
        hub.plain_404 = "plain 404" in case
        hub.broken_info = 1 if "JSON" in case else 0
        if "403" in case:
            hub.fail("info", 403, 1)
        with pytest.raises(UserError) as e:
            load_samples("vqav2_hub", "val", hf_dataset=repo, cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "cannot reach" not in msg and "huggingface-cli" not in msg, msg
    expected = {"info with cut-off JSON": "answered the dataset info request for lmms-lab/VQAv2 with broken JSON",
                "named dataset, plain 404": f"dataset someone/VQAv2 not found on the hub at {hub.url}",
                "info answers 403": f"the Hugging Face hub at {hub.url} answered HTTP 403 reading lmms-lab/VQAv2",
                "listed file answers EntryNotFound": "lists data/validation-00002-of-00003.parquet but answers HTTP 404",
                "listed file answers plain 404": "lists data/validation-00002-of-00003.parquet but answers HTTP 404"}
    assert expected[case] in msg, msg


def test_default_dataset_missing_behind_a_plain_404_reads_the_moved_copy(both, tmp_path, monkeypatch, capsys):
    """A mirror that answers a missing repository with a bare 404 (no X-Error-Code): the fallback still applies."""
    with serving(monkeypatch, {MOVED: both[1]}) as hub:
        hub.plain_404 = True
        samples = load_samples("vqav2_hub", "val", cache_dir=tmp_path)
    assert notes(capsys.readouterr().out) == ["note: lmms-lab/VQAv2 not found; using lmms-lab-encoder/VQAv2"]
    assert len(samples) == len(TINY) and hub_source(tmp_path)["used_dataset"] == MOVED


def test_local_folder_missing_a_listed_file_is_refused_in_one_line(both, tmp_path):
    copy = shutil.copytree(both[1], tmp_path / "pq")
    (copy / "data" / "validation-00001-of-00002.parquet").unlink()  # an interrupted hf download
    with pytest.raises(UserError) as e:
        load_samples("vqav2_hub", "val", hf_dataset=str(copy), cache_dir=tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "validation-00001-of-00002.parquet" in msg and "hf download" in msg, msg
    assert hub_source(tmp_path / "out") is None  # nothing cached from the incomplete folder


def test_hub_testdev_ids_missing_from_the_test_files_get_the_hub_fix(tmp_path):
    from src.data import submission_question_ids

    rows = [lmms_row(t) for t in TINY[:6]]
    folder = write_lmms_parquet(tmp_path / "pq", rows[:4], n_files=1, split="testdev")
    write_lmms_parquet(folder, rows[1:], n_files=1, split="test")  # the first test-dev question is not there
    testdev = load_samples("vqav2_hub", "testdev", hf_dataset=str(folder), cache_dir=tmp_path / "out")
    with pytest.raises(UserError) as e:
        submission_question_ids(testdev, "vqav2_hub", "testdev", hf_dataset=str(folder), cache_dir=tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "1 test-dev question ids" in msg, msg
    assert "data/testdev-*.parquet and data/test-*.parquet" in msg and "hf download" in msg, msg
    assert "visualqa.org" not in msg and ".zip" not in msg, msg


def test_a_silent_mirror_stops_at_the_stall_deadline_not_after_every_retry(both, tmp_path, monkeypatch):
    """Range answers that stop coming (read timeouts, retried) still end at the stall deadline, in one line."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    with serving(monkeypatch, {"lmms-lab/VQAv2": both[1]}) as hub:
        hub.range_mode, hub.drip_s = "drip", 5.0  # nothing within the 1 s read timeout
        began = time.monotonic()
        with pytest.raises(UserError) as e:
            load_samples("vqav2_hub", "val", cache_dir=tmp_path, hub_stall_s=3.0)
        took = time.monotonic() - began
    msg = str(e.value)
    assert "\n" not in msg and "sent nothing usable to a range read of" in msg and "ReadTimeout" in msg, msg
    assert "for over 3 s" in msg and "rerun later" in msg and took < 8, (took, msg)
    assert 2 <= len(hub.seen("range")) < 5  # retried, but not the five tries of a failing answer


@pytest.mark.parametrize("record", ["[1, 2]", '{"1": 3}'])
def test_a_cache_record_that_is_json_but_not_a_record_is_one_line(tmp_path, record):
    """source.json (the question cache) and images/sources.json (the image cache) that parse but hold no record."""
    from src.hub_data import CACHE_FOLDER, ROW_MARK, cache_hub_images
    from src.samples import VQASample

    images = tmp_path / CACHE_FOLDER / "images"
    images.mkdir(parents=True)
    (tmp_path / CACHE_FOLDER / "source.json").write_text("[1, 2]")
    (images / "sources.json").write_text(record)
    with pytest.raises(UserError, match=r"source\.json is damaged .*delete the folder"):
        hub_source(tmp_path)
    sample = VQASample(1, 1, f"data/validation-00000-of-00001.parquet{ROW_MARK}0", "q?", ["a"], "a", "other", "what")
    with pytest.raises(UserError, match=r"sources\.json is damaged .*delete the folder"):
        cache_hub_images([sample], tmp_path)
