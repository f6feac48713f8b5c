"""The one dataset wrapper: VQAv2 (official JSON + COCO images, or the validation parquet of a hub
dataset such as lmms-lab/VQAv2: "vqav2_hub"), easy-VQA (converted once into the same official layout)
and the course mini set data/tiny.jsonl, all read as `VQASample`s.

Splits are "train" (fine-tuning) and "val" (evaluation; easy-VQA's test set).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from .easy_vqa_data import prepare_easy_vqa
from .errors import UserError
from .files import read_json, read_jsonl, write_json
from .hub_data import cache_hub_images, load_hub_samples
from .samples import (VQASample, _answers, _entry, _entry_list, _int_id, _short, _text, _unique,
                      _warn_answer_counts, build_samples)

DATASETS = ("vqav2", "vqav2_hub", "easy_vqa", "tiny")
SPLITS = ("train", "val")

# where each dataset's files live, relative to the data folder (see data/vqa/README.md, data/images/README.md)
LAYOUTS = {
    "vqav2": {
        "questions": "vqa/v2_OpenEnded_mscoco_{split}2014_questions.json",
        "annotations": "vqa/v2_mscoco_{split}2014_annotations.json",
        "image": "images/{split}2014/COCO_{split}2014_{image_id:012d}.jpg",
        "how": "data/vqa/README.md and data/images/README.md (README section 数据集准备)",
    },
    "easy_vqa": {
        "questions": "easy_vqa/{split}_questions.json",
        "annotations": "easy_vqa/{split}_annotations.json",
        "image": "easy_vqa/images/{split}/{image_id}.png",
        "how": "`pip install easy-vqa` (it ships the data; it is converted into data/easy_vqa/ on first use)",
    },
}
TINY_FILE = "tiny.jsonl"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def load_samples(dataset: str, split: str, data_dir: str | Path = "data", *, hf_dataset: str = "lmms-lab/VQAv2",
                 hf_revision: str = "", cache_dir: str | Path | None = None) -> list[VQASample]:
    """All samples of a split, ordered by question_id. Every entry is checked before any model loads.

    dataset="vqav2_hub" reads VQAv2 validation from the hub dataset (or local parquet folder)
    `hf_dataset` at `hf_revision`, keeping its question table in `cache_dir` (see src/hub_data.py);
    its image_path fields name the parquet row until `materialize_images` caches the pictures."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)} (e.g. --dataset=easy_vqa)")
    _check_split(split)
    data_dir = Path(data_dir)
    if dataset == "tiny":
        return _load_tiny(data_dir / TINY_FILE)
    if dataset == "vqav2_hub":
        return load_hub_samples(hf_dataset, hf_revision, split, cache_dir)
    if dataset == "easy_vqa":
        prepare_easy_vqa(data_dir)
    return _load_official(dataset, split, data_dir)


def materialize_images(samples: list[VQASample], dataset: str, cache_dir: str | Path) -> list[VQASample]:
    """The samples with image files a model can open: for vqav2_hub, decode the sample's pictures from
    the parquet files once into <cache_dir>/vqav2_hub/images/ (the report and the demo show them from
    there); other datasets already point at image files."""
    if dataset != "vqav2_hub":
        return samples
    return cache_hub_images(samples, cache_dir)


def _missing(path: Path, dataset: str) -> UserError:
    return UserError(f"{dataset} file not found: {path}; see {LAYOUTS[dataset]['how']} for how to get it")


def _read_json(path: Path, dataset: str):
    if not path.exists():
        raise _missing(path, dataset)
    return read_json(path, f"{dataset} file", fix=f"download it again ({LAYOUTS[dataset]['how']})")


def _load_official(dataset: str, split: str, data_dir: Path) -> list[VQASample]:
    layout = LAYOUTS[dataset]
    q_path = data_dir / layout["questions"].format(split=split)
    a_path = data_dir / layout["annotations"].format(split=split)
    questions = _entry_list(_read_json(q_path, dataset), "questions", q_path, "questions")
    annotations = _entry_list(_read_json(a_path, dataset), "annotations", a_path, "annotations")
    return build_samples(
        questions, annotations, question_entry=lambda i: f"{q_path}: questions[{i}]",
        annotation_entry=lambda i: f"{a_path}: annotations[{i}]",
        image_path=lambda i, ann: (data_dir / layout["image"].format(split=split, image_id=int(ann["image_id"]))).as_posix(),
        questions_source=str(q_path), annotations_source=str(a_path))


def _load_tiny(path: Path) -> list[VQASample]:
    if not path.exists():
        raise UserError(f"tiny dataset not found: {path}; it ships with the repository (git checkout data/{TINY_FILE})")
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path} holds no rows (empty file); restore it with git checkout data/{TINY_FILE}")
    samples, seen, counts = [], {}, {}
    for i, row in enumerate(rows, 1):
        where = f"{path}: row {i}"
        row = _entry(row, where)
        for key in ("question_id", "image_path", "question", "answers"):
            if key not in row:
                raise UserError(f"{where}: no key {key!r}")
        qid = _int_id(row["question_id"], where, "question_id")
        _unique(seen, qid, f"{where} (question_id {qid})", f"row {i}")
        answers = _answers(row["answers"], where)
        counts[qid] = len(answers)
        image_path = _text(row["image_path"], where, "image_path")
        beside = path.resolve().parent.parent / image_path  # "data/x.jpg" is written from the repository root
        if not os.path.isabs(image_path) and not os.path.exists(image_path) and beside.exists():
            image_path = str(beside)  # a script started from another folder
        mca = row.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0]
        samples.append(VQASample(
            question_id=qid, image_id=_int_id(row.get("image_id", i), where, "image_id"),
            image_path=image_path, question=_text(row["question"], where, "question"),
            answers=answers, multiple_choice_answer=_text(mca, where, "multiple_choice_answer"),
            answer_type=_text(row.get("answer_type", "other"), where, "answer_type"),
            question_type=_text(row.get("question_type", "none of the above"), where, "question_type")))
    _warn_answer_counts(counts, str(path))
    samples.sort(key=lambda s: s.question_id)
    return samples


# --- the frozen evaluation sample -------------------------------------------------------------

def sample_question_ids(samples: list[VQASample], n: int, seed: int) -> list[int]:
    """n question ids drawn without replacement with `seed` (all of them when n <= 0 or n >= len)."""
    ids = [s.question_id for s in samples]
    if n <= 0 or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))


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
                        f"but this run uses dataset={dataset} split={split}; use the same --dataset, "
                        "or another --output_dir for a new sample")
    if expected_n is not None and frozen.get("max_samples") != expected_n:
        raise UserError(f"{path} holds a sample drawn with max_samples={frozen.get('max_samples')}, but this run asks "
                        f"for --max_samples={expected_n}; the sample is frozen: delete {path} (and the baseline files) "
                        "to draw a new one, or use another --output_dir")
    return ids


def read_frozen_sample(path: Path, samples: list[VQASample], dataset: str, split: str,
                       cache_dir: str | Path) -> list[VQASample]:
    """The questions of the frozen sample in `path`, in its order, with image files a model can open
    (vqav2_hub: only the sample's pictures, cached in `cache_dir`)."""
    chosen = select(samples, read_sample_ids(path, dataset, split), str(path))
    return materialize_images(chosen, dataset, cache_dir)


def select(samples: list[VQASample], question_ids: list[int], source: str) -> list[VQASample]:
    by_id = {s.question_id: s for s in samples}
    missing = [q for q in question_ids if q not in by_id]
    if missing:
        raise UserError(f"{len(missing)} question ids in {source} are not in the dataset (e.g. {missing[:5]}); "
                        "was the sample drawn from other data?")
    return [by_id[q] for q in question_ids]
