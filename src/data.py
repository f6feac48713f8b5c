"""The data sources, all read as `VQASample`s: VQAv2 (official JSON + COCO images, or a hub dataset's
parquet: "vqav2_hub"), easy-VQA and data/tiny.jsonl; splits train, val, testdev and test (no answers)."""

import json
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

from .errors import UserError
from .evaluation import EVALAI_SUBTYPES
from .files import atomic_write_text, read_json, read_jsonl, replace_folder, write_json
from .hub_data import DEFAULT_DATASET, STALL_S, cache_hub_images, download_advice, hub_source, load_hub_samples
from .locks import exclusive_lock
from .preflight import _answers, _entry_list, _short, _text, build_samples
from .samples import VQASample

DATASETS = ("vqav2", "vqav2_hub", "easy_vqa", "tiny")
TEST_SPLITS = ("testdev", "test")  # no public answers: nothing is scored, an EvalAI file is written instead
# the official names of each split: the file subtype and the COCO image folder (visualqa.org/download.html)
SUBTYPES = {"train": ("train2014", "train2014"), "val": ("val2014", "val2014"),
            **{split: (subtype, "test2015") for split, subtype in EVALAI_SUBTYPES.items()}}

# where each dataset's files live, relative to the data folder (see data/vqa/README.md, data/images/README.md)
LAYOUTS = {
    "vqav2": {
        "questions": "vqa/v2_OpenEnded_mscoco_{subtype}_questions.json",
        "annotations": "vqa/v2_mscoco_{subtype}_annotations.json",
        "image": "images/{images}/COCO_{images}_{image_id:012d}.jpg",
        "how": "data/vqa/README.md and data/images/README.md (README section 数据集准备)",
        "test_how": "v2_Questions_Test_mscoco.zip (both test question files) and test2015.zip from "
                    "visualqa.org/download.html, unpacked into data/vqa/ and data/images/",
    },
    "easy_vqa": {
        "questions": "easy_vqa/{split}_questions.json",
        "annotations": "easy_vqa/{split}_annotations.json",
        "image": "easy_vqa/images/{split}/{image_id}.png",
        "how": "`pip install easy-vqa` (it ships the data; it is converted into data/easy_vqa/ on first use)",
    },
}
TINY_FILE = "tiny.jsonl"
_HUB_SPLIT_FILE = re.compile(r"/data/(validation|testdev|test)-[^/]*\.parquet#row=")  # a hub image cache's source


def image_set(dataset: str, split: str) -> str:
    """The pictures a split asks about: VQAv2 read from the JSON files or from the hub shares COCO's
    (train2014, val2014; test2015 for testdev and test); easy-VQA and tiny have their own."""
    return f"COCO {SUBTYPES[split][1]}" if dataset in ("vqav2", "vqav2_hub") else f"{dataset} {split}"


def picture_ids(paths) -> list[tuple[str, int]]:
    """(picture set, image id) of the picture files recognised by name: COCO_<set>_<id>.jpg, easy-VQA's
    images/<split>/<id>.png and the hub image cache (its sources.json names each file's parquet row)."""
    found, caches = [], {}
    for p in map(Path, paths):
        if m := re.fullmatch(r"COCO_([a-z]+\d{4})_(\d+)\.\w+", p.name):
            found.append((f"COCO {m[1]}", int(m[2])))
        elif p.parent.parent.name == "images" and p.parents[2].name == "easy_vqa" and p.stem.isdigit():
            found.append((image_set("easy_vqa", p.parent.name), int(p.stem)))
        elif (p.parent / "sources.json").is_file() and p.stem.isdigit():
            if p.parent not in caches:
                sources = read_json(p.parent / "sources.json", "hub image cache record")
                caches[p.parent] = {v.get("file"): v.get("source", "") for v in sources.values()} \
                    if isinstance(sources, dict) else {}
            if m := _HUB_SPLIT_FILE.search(caches[p.parent].get(p.name, "")):
                found.append((image_set("vqav2_hub", {"validation": "val"}.get(m[1], m[1])), int(p.stem)))
    return found


def hub_cache_dir(cache_dir: str | Path | None, split: str) -> Path | None:
    """Where the hub reader keeps a split's question table and images: the output folder itself for val
    (as always), <output folder>/<split>/ for the others, so the splits' caches never mix."""
    return None if cache_dir is None else Path(cache_dir) / ("" if split == "val" else split)


def hub_record(cache_dir: str | Path, split: str) -> dict | None:
    """For a run config: the hub dataset and commit a vqav2_hub split was read from (the default
    lmms-lab/VQAv2 may have been read from where it moved), or None before the first read."""
    source = hub_source(hub_cache_dir(cache_dir, split))
    return None if source is None else {"dataset": source.get("used_dataset", source.get("hf_dataset")),
                                        "revision": source.get("revision")}


def load_samples(dataset: str, split: str, data_dir: str | Path = "data", *, hf_dataset: str = DEFAULT_DATASET,
                 hf_revision: str = "", cache_dir: str | Path | None = None,
                 hub_stall_s: float = STALL_S) -> list[VQASample]:
    """All samples of a split by question_id, every entry checked before any model loads (testdev / test: no
    answers). vqav2_hub reads `hf_dataset` at `hf_revision`, caching in `cache_dir` (src/hub_data.py)."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)} (e.g. --dataset=easy_vqa)")
    if split in TEST_SPLITS and dataset in ("easy_vqa", "tiny"):
        raise UserError(f"--split={split} is VQAv2's test-dev / test (answers on the EvalAI server), which dataset "
                        f"{dataset} does not have; use --dataset=vqav2 or --dataset=vqav2_hub, or --split=val")
    data_dir = Path(data_dir)
    if dataset == "tiny":
        return _load_tiny(data_dir / TINY_FILE)
    if dataset == "vqav2_hub":
        return load_hub_samples(hf_dataset, hf_revision, split, hub_cache_dir(cache_dir, split), hub_stall_s)
    if dataset == "easy_vqa":
        prepare_easy_vqa(data_dir)
    return _load_official(dataset, split, data_dir)


def submission_question_ids(samples: list[VQASample], dataset: str, split: str, data_dir: str | Path = "data",
                            **source) -> list[int]:
    """Every question id an EvalAI results file of `split` (testdev or test) must answer: all of test2015, in the
    test-dev phase too (docs/notes.md); testdev reads the test questions too, with load_samples' `source` settings."""
    if split == "test":
        return [s.question_id for s in samples]
    everything = [s.question_id for s in load_samples(dataset, "test", data_dir, **source)]
    stray = sorted({s.question_id for s in samples} - set(everything))
    if stray:
        fix = (f"use both question files of one download ({LAYOUTS['vqav2']['test_how']})" if dataset == "vqav2"
               else "read data/testdev-*.parquet and data/test-*.parquet from one revision of one dataset "
               "(--hf_dataset_revision=<commit>, another --output_dir), or "
               f"{download_advice(source.get('hf_dataset', DEFAULT_DATASET), 'data/test*.parquet')}")
        raise UserError(f"{len(stray)} test-dev question ids are not among the test2015 questions (e.g. {stray[:5]}); "
                        f"test-dev is a subset of test2015: {fix}")
    return everything


def materialize_images(samples: list[VQASample], dataset: str, cache_dir: str | Path,
                       split: str = "val", hub_stall_s: float = STALL_S) -> list[VQASample]:
    """The samples with image files a model can open: vqav2_hub's pictures are decoded once from the parquet
    into the split's cache (hub_cache_dir); other datasets already point at files."""
    hub = dataset == "vqav2_hub"
    return cache_hub_images(samples, hub_cache_dir(cache_dir, split), hub_stall_s) if hub else samples


def _read_json(path: Path, dataset: str, split: str):
    how = LAYOUTS[dataset]["test_how" if split in TEST_SPLITS else "how"]
    if not path.exists():
        raise UserError(f"{dataset} file not found: {path}; see {how} for how to get it")
    return read_json(path, f"{dataset} file", fix=f"download it again ({how})")


def _load_official(dataset: str, split: str, data_dir: Path) -> list[VQASample]:
    layout = LAYOUTS[dataset]
    subtype, images = SUBTYPES[split]
    names = {"split": split, "subtype": subtype, "images": images}
    q_path = data_dir / layout["questions"].format(**names)
    q_file = _read_json(q_path, dataset, split)
    named = q_file.get("data_subtype") if isinstance(q_file, dict) and dataset == "vqav2" else None
    if named is not None and named != subtype:  # a test2015 file saved under the test-dev name would be submitted
        raise UserError(f"{q_path} holds the questions of {named} (its data_subtype), not {subtype}; "
                        "put each official file under its own name")
    questions = _entry_list(q_file, "questions", q_path, "questions")
    if split in TEST_SPLITS:  # no annotation file exists: the answers are on the EvalAI server
        a_path, annotations = None, None
    else:
        a_path = data_dir / layout["annotations"].format(**names)
        annotations = _entry_list(_read_json(a_path, dataset, split), "annotations", a_path, "annotations")
    return build_samples(
        questions, annotations, question_entry=lambda i: f"{q_path}: questions[{i}]",
        annotation_entry=lambda i: f"{a_path}: annotations[{i}]",
        image_path=lambda i, entry: (data_dir / layout["image"].format(**names, image_id=int(entry["image_id"]))).as_posix(),
        questions_source=str(q_path), annotations_source=None if a_path is None else str(a_path))


def _load_tiny(path: Path) -> list[VQASample]:
    """data/tiny.jsonl: rows of the official question and annotation fields together (image_id, answer_type,
    question_type and multiple_choice_answer may be left out) plus image_path, checked like the official files."""
    if not path.exists():
        raise UserError(f"tiny dataset not found: {path}; it ships with the repository (git checkout data/{TINY_FILE})")
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path} holds no rows (empty file); restore it with git checkout data/{TINY_FILE}")

    def where(i: int) -> str:
        return f"{path}: row {i + 1}"

    def image_path(i: int, row: dict) -> str:
        image_path = _text(row["image_path"], where(i), "image_path")
        beside = path.resolve().parent.parent / image_path  # "data/x.jpg" is written from the repository root
        return str(beside) if not os.path.exists(image_path) and beside.exists() else image_path  # run from elsewhere

    for i, row in enumerate(rows):
        for key in ("question_id", "image_path", "question", "answers"):
            if key not in row:
                raise UserError(f"{where(i)}: no key {key!r}")
        mca = row.get("multiple_choice_answer") or Counter(_answers(row["answers"], where(i))).most_common(1)[0][0]
        rows[i] = {"image_id": i + 1, "answer_type": "other", "question_type": "none of the above", **row,
                   "multiple_choice_answer": _text(mca, where(i), "multiple_choice_answer")}
    return build_samples(rows, rows, question_entry=where, annotation_entry=where, image_path=image_path,
                         questions_source=str(path), annotations_source=str(path))


def _easy_vqa_complete(root: Path) -> bool:
    """True when CONVERTED exists and every file it lists is there: the image counts and the JSON sizes
    it recorded (written last, so an interrupted conversion is never trusted)."""
    try:
        expected = json.loads((root / "CONVERTED").read_text())
        return all(sum(1 for _ in (root / "images" / split).iterdir()) == want["images"]
                   and all((root / name).stat().st_size == size for name, size in want["files"].items())
                   for split, want in expected["splits"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def prepare_easy_vqa(data_dir: str | Path = "data") -> Path:
    """The `easy-vqa` package's data converted once into the official layout in <data_dir>/easy_vqa/ (its one answer
    becomes ten annotators', its test set our "val"); concurrent runs wait on a lock, an interrupted one is redone."""
    data_dir = Path(data_dir)
    root = data_dir / "easy_vqa"
    if _easy_vqa_complete(root):
        return root
    try:
        import easy_vqa
    except ImportError:
        raise UserError("dataset easy_vqa needs the easy-vqa package: pip install easy-vqa") from None
    with exclusive_lock(data_dir / "easy_vqa.lock", f"the easy-VQA conversion in {data_dir}", wait=True):
        if _easy_vqa_complete(root):  # another run finished it while we waited
            return root
        if root.exists():
            print(f"note: {root} is incomplete (an interrupted conversion?); converting it again", flush=True)
        tmp = data_dir / ".tmp-easy_vqa"
        shutil.rmtree(tmp, ignore_errors=True)  # from a killed run; we hold the lock
        marker = {"source": "easy-VQA (pip package easy-vqa), converted to the VQA v2 format", "splits": {}}
        for split, (texts, answers, image_ids), images in (
                ("train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
                ("val", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())):
            entries = list(enumerate(zip(texts, answers, image_ids)))
            questions = [{"image_id": image_id, "question": text, "question_id": qid}
                         for qid, (text, _, image_id) in entries]
            annotations = [{
                "question_type": " ".join(text.rstrip("?").split()[:3]),  # VQAv2-style: the first three words
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                "image_id": image_id, "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                "question_id": qid} for qid, (text, answer, image_id) in entries]
            (tmp / "images" / split).mkdir(parents=True)
            for image_id, src in images.items():
                shutil.copyfile(src, tmp / "images" / split / f"{image_id}.png")
            header = {"info": {"description": marker["source"], "split": split}, "data_type": "easy_vqa",
                      "data_subtype": split}
            files = {f"{split}_questions.json": {**header, "task_type": "Open-Ended", "questions": questions},
                     f"{split}_annotations.json": {**header, "annotations": annotations}}
            for name, obj in files.items():
                atomic_write_text(tmp / name, json.dumps(obj))
            marker["splits"][split] = {"questions": len(questions), "images": len(images),
                                       "files": {name: (tmp / name).stat().st_size for name in files}}
        (tmp / "CONVERTED").write_text(json.dumps(marker, indent=2) + "\n")  # last: it vouches for the rest
        replace_folder(tmp, root)
    return root


# --- the frozen evaluation sample -------------------------------------------------------------

def sample_question_ids(samples: list[VQASample], n: int, seed: int) -> list[int]:
    """n question ids drawn without replacement with `seed` (all of them when n <= 0 or n >= len)."""
    ids = [s.question_id for s in samples]
    return ids if n <= 0 or n >= len(ids) else sorted(random.Random(seed).sample(ids, n))


def freeze_sample(path: Path, dataset: str, split: str, samples: list[VQASample], n: int, seed: int) -> list[int]:
    """Draw the evaluation sample once and keep it in `path`; later runs reuse it, never redraw."""
    if path.exists():
        return read_sample_ids(path, dataset, split, expected_n=n)
    ids = sample_question_ids(samples, n, seed)
    write_json(path, {"dataset": dataset, "split": split, "seed": seed, "max_samples": n, "n": len(ids),
                      "question_ids": ids})
    return ids


def read_sample_ids(path: Path, dataset: str, split: str, expected_n: int | None = None) -> list[int]:
    if not path.exists():
        raise UserError(f"frozen sample not found: {path}; run `python create_vqav2_baseline.py` first "
                        "(with the same --output_dir and --dataset)")
    redraw = "delete it (and the baseline files beside it) and rerun create_vqav2_baseline.py to draw the sample again"
    frozen = read_json(path, "sample-ids file", fix=redraw)
    if not isinstance(frozen, dict) or "question_ids" not in frozen:
        raise UserError(f"{path}: not a sample-ids file (no 'question_ids'); {redraw}")
    ids = frozen["question_ids"]
    if not isinstance(ids, list) or not ids:
        raise UserError(f"{path}: 'question_ids' must be a non-empty list of integers, not {_short(ids)}; {redraw}")
    seen = set()
    for i, q in enumerate(ids):
        if type(q) is not int:  # bool, float (1000.0), str, null: a hand edit or another tool's file
            raise UserError(f"{path}: question_ids[{i}] is {_short(q)}, not an integer question id; {redraw}")
        if q in seen:
            raise UserError(f"{path}: question_ids[{i}] repeats question id {q} (it would be answered and counted "
                            f"twice); {redraw}")
        seen.add(q)
    if (frozen.get("dataset"), frozen.get("split")) != (dataset, split):
        raise UserError(f"{path} was drawn from dataset={frozen.get('dataset')} split={frozen.get('split')}, "
                        f"but this run uses dataset={dataset} split={split}; use the same --dataset and --split, "
                        "or another --output_dir for a new sample (one folder holds the runs of one split)")
    if expected_n is not None and frozen.get("max_samples") != expected_n:
        flag = "--max_test_samples" if split in TEST_SPLITS else "--max_samples"
        raise UserError(f"{path} holds a sample drawn with max_samples={frozen.get('max_samples')}, but this run asks "
                        f"for {flag}={expected_n}; the sample is frozen: delete {path} (and the baseline files) "
                        "to draw a new one, or use another --output_dir")
    return ids


def read_frozen_sample(path: Path, samples: list[VQASample], dataset: str, split: str,
                       cache_dir: str | Path, hub_stall_s: float = STALL_S) -> list[VQASample]:
    """The questions of the frozen sample in `path`, in its order, with image files a model can open
    (vqav2_hub: only the sample's pictures, cached in `cache_dir`)."""
    chosen = select(samples, read_sample_ids(path, dataset, split), str(path))
    return materialize_images(chosen, dataset, cache_dir, split, hub_stall_s)


def select(samples: list[VQASample], question_ids: list[int], source: str) -> list[VQASample]:
    by_id = {s.question_id: s for s in samples}
    missing = [q for q in question_ids if q not in by_id]
    if missing:
        raise UserError(f"{len(missing)} question ids in {source} are not in the dataset (e.g. {missing[:5]}); "
                        "was the sample drawn from other data?")
    return [by_id[q] for q in question_ids]
