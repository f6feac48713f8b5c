"""The one dataset wrapper: VQAv2 (official JSON + COCO images), easy-VQA (converted once into the
same official layout) and the course mini set data/tiny.jsonl, all read as `VQASample`s.

Splits are "train" (fine-tuning) and "val" (evaluation; easy-VQA's test set).
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

DATASETS = ("vqav2", "easy_vqa", "tiny")
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


@dataclass
class VQASample:
    question_id: int
    image_id: int
    image_path: str
    question: str
    answers: list[str]  # the ten human answers
    multiple_choice_answer: str
    answer_type: str
    question_type: str

    def to_dict(self) -> dict:
        return asdict(self)


def training_answer(sample: VQASample) -> str:
    """The most frequent of the ten answers; ties go to multiple_choice_answer, then to the first seen."""
    counts = Counter(a.strip() for a in sample.answers)
    best = max(counts.values())
    tied = [a for a in counts if counts[a] == best]
    mca = sample.multiple_choice_answer.strip()
    return mca if mca in tied else tied[0]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def load_samples(dataset: str, split: str, data_dir: str | Path = "data") -> list[VQASample]:
    """All samples of a split, ordered by question_id."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)} (e.g. --dataset=easy_vqa)")
    _check_split(split)
    data_dir = Path(data_dir)
    if dataset == "tiny":
        return _load_tiny(data_dir / TINY_FILE)
    if dataset == "easy_vqa":
        prepare_easy_vqa(data_dir)
    return _load_official(dataset, split, data_dir)


def _missing(path: Path, dataset: str) -> UserError:
    return UserError(f"{dataset} file not found: {path}; see {LAYOUTS[dataset]['how']} for how to get it")


def _read_json(path: Path, dataset: str):
    if not path.exists():
        raise _missing(path, dataset)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the file may be truncated, download it again") from None


def _load_official(dataset: str, split: str, data_dir: Path) -> list[VQASample]:
    layout = LAYOUTS[dataset]
    q_path = data_dir / layout["questions"].format(split=split)
    a_path = data_dir / layout["annotations"].format(split=split)
    questions = _read_json(q_path, dataset)
    annotations = _read_json(a_path, dataset)
    if not isinstance(questions, dict) or "questions" not in questions:
        raise UserError(f"{q_path}: missing key 'questions' (is this an official VQA questions file?)")
    if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise UserError(f"{a_path}: missing key 'annotations' (is this an official VQA annotations file?)")
    by_id = {}
    for i, q in enumerate(questions["questions"]):
        for key in ("question_id", "image_id", "question"):
            if key not in q:
                raise UserError(f"{q_path}: question #{i} has no key {key!r}")
        by_id[q["question_id"]] = q
    samples = []
    for i, ann in enumerate(annotations["annotations"]):
        for key in ("question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type"):
            if key not in ann:
                raise UserError(f"{a_path}: annotation #{i} (question_id {ann.get('question_id')}) has no key {key!r}")
        q = by_id.get(ann["question_id"])
        if q is None:
            raise UserError(f"{a_path}: question_id {ann['question_id']} has no question in {q_path}")
        answers = [a["answer"] if isinstance(a, dict) else a for a in ann["answers"]]
        image_path = data_dir / layout["image"].format(split=split, image_id=ann["image_id"])
        samples.append(VQASample(
            question_id=int(ann["question_id"]), image_id=int(ann["image_id"]), image_path=image_path.as_posix(),
            question=q["question"], answers=answers, multiple_choice_answer=ann["multiple_choice_answer"],
            answer_type=ann["answer_type"], question_type=ann["question_type"]))
    samples.sort(key=lambda s: s.question_id)
    return samples


def _load_tiny(path: Path) -> list[VQASample]:
    from .io import read_jsonl

    if not path.exists():
        raise UserError(f"tiny dataset not found: {path}; it ships with the repository (git checkout data/{TINY_FILE})")
    samples, seen = [], set()
    for i, row in enumerate(read_jsonl(path), 1):
        for key in ("question_id", "image_path", "question", "answers"):
            if key not in row:
                raise UserError(f"{path}: row {i} has no key {key!r}")
        if row["question_id"] in seen:
            raise UserError(f"{path}: duplicate question_id {row['question_id']} (row {i}); question ids must be unique")
        seen.add(row["question_id"])
        answers = list(row["answers"])
        samples.append(VQASample(
            question_id=int(row["question_id"]), image_id=int(row.get("image_id", i)), image_path=row["image_path"],
            question=row["question"], answers=answers,
            multiple_choice_answer=row.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0],
            answer_type=row.get("answer_type", "other"), question_type=row.get("question_type", "none of the above")))
    samples.sort(key=lambda s: s.question_id)
    return samples


# --- easy-VQA ---------------------------------------------------------------------------------

def _easy_vqa_question_type(question: str) -> str:
    return " ".join(question.rstrip("?").split()[:3])


def prepare_easy_vqa(data_dir: str | Path = "data") -> Path:
    """Convert the dataset shipped by the `easy-vqa` package into the official VQA JSON layout
    under <data_dir>/easy_vqa/ (once; later calls find it done). easy-VQA has one answer per
    question: it becomes the ten annotator answers. Its test set is our "val" split."""
    root = Path(data_dir) / "easy_vqa"
    done = root / "CONVERTED"
    if done.exists():
        return root
    try:
        import easy_vqa
    except ImportError:
        raise UserError("dataset easy_vqa needs the easy-vqa package: pip install easy-vqa") from None
    tmp = root.with_name("easy_vqa.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, (get_q, get_imgs) in {
        "train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        "val": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    }.items():
        texts, answers, image_ids = get_q()
        questions, annotations = [], []
        for qid, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
            questions.append({"image_id": image_id, "question": text, "question_id": qid})
            annotations.append({
                "question_type": _easy_vqa_question_type(text),
                "multiple_choice_answer": answer,
                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                "image_id": image_id,
                "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                "question_id": qid,
            })
        (tmp / "images" / split).mkdir(parents=True)
        for image_id, src in get_imgs().items():
            shutil.copyfile(src, tmp / "images" / split / f"{image_id}.png")
        info = {"description": "easy-VQA (pip package easy-vqa), converted to the VQA v2 format", "split": split}
        with open(tmp / f"{split}_questions.json", "w") as f:
            json.dump({"info": info, "task_type": "Open-Ended", "data_type": "easy_vqa", "data_subtype": split,
                       "questions": questions}, f)
        with open(tmp / f"{split}_annotations.json", "w") as f:
            json.dump({"info": info, "data_type": "easy_vqa", "data_subtype": split, "annotations": annotations}, f)
    (tmp / "CONVERTED").write_text("converted from the easy-vqa package\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


# --- the frozen evaluation sample -------------------------------------------------------------

def sample_question_ids(samples: list[VQASample], n: int, seed: int) -> list[int]:
    """n question ids drawn without replacement with `seed` (all of them when n <= 0 or n >= len)."""
    ids = [s.question_id for s in samples]
    if n <= 0 or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))


def freeze_sample(path: Path, dataset: str, split: str, samples: list[VQASample], n: int, seed: int) -> list[int]:
    """Draw the evaluation sample once and keep it in `path`; later runs reuse it, never redraw."""
    from .io import write_json

    if path.exists():
        return read_sample_ids(path, dataset, split, expected_n=n)
    ids = sample_question_ids(samples, n, seed)
    write_json(path, {"dataset": dataset, "split": split, "seed": seed, "max_samples": n, "n": len(ids),
                      "question_ids": ids})
    return ids


def read_sample_ids(path: Path, dataset: str, split: str, expected_n: int | None = None) -> list[int]:
    from .io import read_json

    if not path.exists():
        raise UserError(f"frozen sample not found: {path}; run `python create_vqav2_baseline.py` first "
                        "(with the same --output_dir and --dataset)")
    frozen = read_json(path, "sample-ids file")
    if not isinstance(frozen, dict) or "question_ids" not in frozen:
        raise UserError(f"{path}: not a sample-ids file (no 'question_ids'); delete it and rerun create_vqav2_baseline.py")
    if (frozen.get("dataset"), frozen.get("split")) != (dataset, split):
        raise UserError(f"{path} was drawn from dataset={frozen.get('dataset')} split={frozen.get('split')}, "
                        f"but this run uses dataset={dataset} split={split}; use the same --dataset, "
                        "or another --output_dir for a new sample")
    if expected_n is not None and frozen.get("max_samples") != expected_n:
        raise UserError(f"{path} holds a sample drawn with max_samples={frozen.get('max_samples')}, but this run asks "
                        f"for --max_samples={expected_n}; the sample is frozen: delete {path} (and the baseline files) "
                        "to draw a new one, or use another --output_dir")
    return [int(i) for i in frozen["question_ids"]]


def select(samples: list[VQASample], question_ids: list[int], source: str) -> list[VQASample]:
    by_id = {s.question_id: s for s in samples}
    missing = [q for q in question_ids if q not in by_id]
    if missing:
        raise UserError(f"{len(missing)} question ids in {source} are not in the dataset (e.g. {missing[:5]}); "
                        "was the sample drawn from other data?")
    return [by_id[q] for q in question_ids]
