"""dataset=vqav2_hub: VQAv2 validation from parquet in the lmms-lab/VQAv2 schema gives the same rows as
the official JSON + image files, reads only the sample's images, and fails in one line when the schema
does not match or the hub cannot be reached.

The parquet here is written by `datasets` with the exact lmms-lab/VQAv2 features from data/tiny.jsonl,
next to the same questions in the official JSON layout."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, run_script

from src.data import load_samples, materialize_images, sample_question_ids, select
from src.errors import UserError
from src.files import read_jsonl

TINY = [json.loads(line) for line in (REPO / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]


def lmms_features():
    from datasets import Features, Image, List, Value

    return Features({
        "question_type": Value("string"), "multiple_choice_answer": Value("string"),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
        "question": Value("string"), "image": Image()})


def lmms_row(t: dict) -> dict:
    return {"question_type": t["question_type"], "multiple_choice_answer": t["multiple_choice_answer"],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(t["answers"])],
            "image_id": t["image_id"], "answer_type": t["answer_type"], "question_id": t["question_id"],
            "question": t["question"], "image": {"bytes": (REPO / t["image_path"]).read_bytes(), "path": None}}


def write_lmms_parquet(folder: Path, rows: list[dict], n_files: int = 2, row_group: int = 3, features=None) -> Path:
    """rows (shuffled) as data/validation-0000k-of-0000n.parquet, `row_group` rows per parquet row group."""
    from datasets import Dataset

    rows = list(rows)
    random.Random(0).shuffle(rows)
    (folder / "data").mkdir(parents=True)
    for k in range(n_files):
        part = rows[k::n_files]
        ds = Dataset.from_list(part, features=features or lmms_features())
        ds.to_parquet(folder / "data" / f"validation-{k:05d}-of-{n_files:05d}.parquet", batch_size=row_group)
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


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return write_official_json(root / "json", TINY), write_lmms_parquet(root / "parquet", [lmms_row(t) for t in TINY])


def without_image_path(rows):
    return [{k: v for k, v in r.items() if k != "image_path"} for r in rows]


def test_hub_samples_equal_json_samples_and_only_the_sample_images_are_cached(both, tmp_path):
    json_dir, parquet_dir = both
    from_json = load_samples("vqav2", "val", json_dir)
    from_hub = load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), cache_dir=tmp_path)
    assert without_image_path([s.to_dict() for s in from_hub]) == without_image_path([s.to_dict() for s in from_json])
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
    assert [s.to_dict() for s in again] == [s.to_dict() for s in first]
    assert materialize_images(again[:4], "vqav2_hub", tmp_path / "out") == chosen
    with pytest.raises(UserError, match="holds questions read from .* use the baseline's --hf_dataset"):
        load_samples("vqav2_hub", "val", hf_dataset=str(parquet_dir), hf_revision="v2", cache_dir=tmp_path / "out")


def test_hub_id_reads_only_validation_files_at_the_pinned_commit(both, tmp_path, monkeypatch):
    """The hub branch with the hub replaced by the local files: listing, commit pinning, the hf:// URLs and
    exact-range opening (no read-ahead) are what a user with internet gets."""
    import huggingface_hub
    from types import SimpleNamespace

    json_dir, parquet_dir = both
    names = sorted(p.name for p in (parquet_dir / "data").iterdir())
    siblings = [SimpleNamespace(rfilename=f"data/{n}") for n in [*names, "test-00000-of-00001.parquet",
                                                                  "testdev-00000-of-00001.parquet"]]
    asked, opened = [], []

    def dataset_info(self, repo_id, revision=None, **kw):
        asked.append((repo_id, revision))
        return SimpleNamespace(sha="0123abc", siblings=siblings)

    class LocalHub:
        def open(self, url, mode="rb", cache_type=None):
            opened.append((url, cache_type))
            prefix = "hf://datasets/lmms-lab/VQAv2@0123abc/"
            assert url.startswith(prefix + "data/validation-"), url
            return open(parquet_dir / url[len(prefix):], mode)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", LocalHub)
    samples = load_samples("vqav2_hub", "val", hf_dataset="lmms-lab/VQAv2", hf_revision="v1.0", cache_dir=tmp_path)
    assert asked == [("lmms-lab/VQAv2", "v1.0")]
    assert {c for _, c in opened} == {"none"} and len(opened) == len(names)
    assert without_image_path([s.to_dict() for s in samples]) == without_image_path(
        [s.to_dict() for s in load_samples("vqav2", "val", json_dir)])
    assert all(s.image_path.startswith("hf://datasets/lmms-lab/VQAv2@0123abc/data/validation-") for s in samples)
    source = json.loads((tmp_path / "vqav2_hub" / "source.json").read_text())
    assert source["revision"] == "0123abc" and source["requested_revision"] == "v1.0"
    chosen = materialize_images(samples[:3], "vqav2_hub", tmp_path)
    assert all(Path(s.image_path).is_file() for s in chosen)
    sources = json.loads((tmp_path / "vqav2_hub" / "images" / "sources.json").read_text())
    assert all(v["source"].startswith("hf://datasets/lmms-lab/VQAv2@0123abc/") for v in sources.values())


def test_vqav2_hub_is_validation_only(both, tmp_path):
    with pytest.raises(UserError, match="validation only .* --dataset=vqav2"):
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
