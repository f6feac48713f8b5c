"""The one dataset wrapper: VQAv2 (official JSON + COCO images, or the validation parquet of a hub
dataset such as lmms-lab/VQAv2: "vqav2_hub"), easy-VQA (converted once into the same official layout)
and the course mini set data/tiny.jsonl, all read as `VQASample`s.

Splits are "train" (fine-tuning) and "val" (evaluation; easy-VQA's test set).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import UNSAFE_TEXT
from .errors import UserError

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
        from .hub_data import load_hub_samples

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
    from .hub_data import cache_hub_images

    return cache_hub_images(samples, cache_dir)


def _missing(path: Path, dataset: str) -> UserError:
    return UserError(f"{dataset} file not found: {path}; see {LAYOUTS[dataset]['how']} for how to get it")


def _read_json(path: Path, dataset: str):
    from .io import read_json

    if not path.exists():
        raise _missing(path, dataset)
    return read_json(path, f"{dataset} file", fix=f"download it again ({LAYOUTS[dataset]['how']})")


# --- strict checks of every entry: one line naming the file and the first bad entry ---------------

def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_id(value, where: str, key: str) -> int:
    """An integer id; a string of digits counts as that number (so "1001" and 1001 are the same id)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    raise UserError(f"{where}: {key} must be an integer, got {type(value).__name__} {_short(value)}")


def _text(value, where: str, key: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise UserError(f"{where}: {key} must be a non-empty string, got {type(value).__name__} {_short(value)}")
    bad = UNSAFE_TEXT.search(value)
    if bad:  # a lone surrogate is valid JSON but no tokenizer or font takes it: every rerun would die there
        raise UserError(f"{where}: {key} holds {'an unpaired surrogate' if bad.group() >= chr(0xd800) else 'a control character'} "
                        f"({bad.group()!r} at position {bad.start()}): {_short(value)}; fix or remove that text")
    return value


def _answers(value, where: str) -> list[str]:
    """The annotators' answers: a list of strings or of {"answer": ...} items (official format)."""
    if not isinstance(value, list):
        raise UserError(f"{where}: answers must be a list of the annotators' answers, got "
                        f"{type(value).__name__} {_short(value)}")
    if not value:
        raise UserError(f"{where}: answers is empty; each question needs its annotators' answers (VQAv2 has 10)")
    answers = [item.get("answer") if type(item) is dict else item for item in value]
    if all(isinstance(a, str) for a in answers):
        for k, a in enumerate(answers):
            _text(a, where, f"answers[{k}]", allow_empty=True)
        return answers
    k = next(k for k, a in enumerate(answers) if not isinstance(a, str))
    raise UserError(f"{where}: answers[{k}] must be a string or an object with an \"answer\" string, "
                    f"got {_short(value[k])}")


def _entry(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected an object, got {type(value).__name__} {_short(value)}")
    return value


def _entry_list(obj, key: str, path: Path, kind: str) -> list:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{path}: missing key {key!r} (is this an official VQA {kind} file?)")
    if not isinstance(obj[key], list):
        raise UserError(f"{path}: {key!r} must be a list, got {type(obj[key]).__name__}")
    if not obj[key]:
        raise UserError(f"{path}: {key!r} is empty; the file holds no {key}")
    return obj[key]


def _unique(ids: dict, qid: int, where: str, first: str) -> None:
    if qid in ids:
        raise UserError(f"{where}: duplicate question_id {qid} (also {ids[qid]}); question ids must be unique")
    ids[qid] = first


def _warn_answer_counts(counts: dict[int, int], source: str) -> None:
    odd = {qid: n for qid, n in counts.items() if n != 10}
    if odd:
        qid, n = next(iter(odd.items()))
        print(f"warning: {source}: {len(odd)} question(s) have other than 10 answers (first: question_id {qid} "
              f"with {n}); their VQA accuracy still averages over every leave-one-out subset of their answers",
              file=sys.stderr, flush=True)


def build_samples(questions: list, annotations: list, *, question_entry, annotation_entry, image_path,
                  questions_source: str, annotations_source: str) -> list[VQASample]:
    """VQASamples from official-format question and annotation entries, every entry checked.

    `question_entry(i)` / `annotation_entry(i)` name entry i in messages (file and position);
    `image_path(i, annotation)` gives annotation i's image path; the sources name the files. Used by the
    JSON and the hub path alike, so both give identical samples for identical entries."""
    by_id, seen = {}, {}
    for i, q in enumerate(questions):
        where = question_entry(i)
        q = _entry(q, where)
        for key in ("question_id", "image_id", "question"):
            if key not in q:
                raise UserError(f"{where}: no key {key!r}")
        qid = _int_id(q["question_id"], where, "question_id")
        _unique(seen, qid, where, where)
        by_id[qid] = (_int_id(q["image_id"], where, "image_id"), _text(q["question"], where, "question"))
    samples, annotated, counts = [], {}, {}
    for i, ann in enumerate(annotations):
        where = annotation_entry(i)
        ann = _entry(ann, where)
        for key in ("question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type"):
            if key not in ann:
                raise UserError(f"{where} (question_id {ann.get('question_id')}): no key {key!r}")
        qid = _int_id(ann["question_id"], where, "question_id")
        _unique(annotated, qid, f"{where} (question_id {qid})", where)
        where = f"{where} (question_id {qid})"
        if qid not in by_id:
            raise UserError(f"{where}: has no question in {questions_source}")
        image_id, question = by_id[qid]
        if _int_id(ann["image_id"], where, "image_id") != image_id:
            raise UserError(f"{where}: image_id {ann['image_id']} differs from its question's image_id {image_id}")
        answers = _answers(ann["answers"], where)
        counts[qid] = len(answers)
        samples.append(VQASample(
            question_id=qid, image_id=image_id, image_path=image_path(i, ann), question=question, answers=answers,
            multiple_choice_answer=_text(ann["multiple_choice_answer"], where, "multiple_choice_answer", True),
            answer_type=_text(ann["answer_type"], where, "answer_type"),
            question_type=_text(ann["question_type"], where, "question_type")))
    unanswered = [qid for qid in by_id if qid not in annotated]
    if unanswered:
        raise UserError(f"{questions_source}: question_id {unanswered[0]} has no annotation in {annotations_source} "
                        f"({len(unanswered)} such questions); use matching files")
    _warn_answer_counts(counts, annotations_source)
    samples.sort(key=lambda s: s.question_id)
    return samples


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
    from .io import read_jsonl

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


# --- easy-VQA ---------------------------------------------------------------------------------

def _easy_vqa_question_type(question: str) -> str:
    return " ".join(question.rstrip("?").split()[:3])


def _easy_vqa_complete(root: Path) -> bool:
    """True when CONVERTED exists and every file it lists is there: the image counts and the JSON sizes
    it recorded (written last, so an interrupted conversion is never trusted)."""
    try:
        expected = json.loads((root / "CONVERTED").read_text())
        for split, want in expected["splits"].items():
            if sum(1 for _ in (root / "images" / split).iterdir()) != want["images"]:
                return False
            for name, size in want["files"].items():
                if (root / name).stat().st_size != size:
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def prepare_easy_vqa(data_dir: str | Path = "data") -> Path:
    """Convert the dataset shipped by the `easy-vqa` package into the official VQA JSON layout
    under <data_dir>/easy_vqa/ (once; later calls find it done). easy-VQA has one answer per
    question: it becomes the ten annotator answers. Its test set is our "val" split.

    Safe when several runs start at once: one converts (into a temporary folder, renamed into place
    under an exclusive lock) while the others wait; an interrupted conversion is redone."""
    from .locks import exclusive_lock

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
        for leftover in [*data_dir.glob("easy_vqa.tmp*"), *data_dir.glob("easy_vqa.old*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # from killed runs; we hold the lock
        tmp = data_dir / f"easy_vqa.tmp-{os.getpid()}"
        _convert_easy_vqa(easy_vqa, tmp)
        if root.exists():
            old = data_dir / f"easy_vqa.old-{os.getpid()}"
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
    return root


def _convert_easy_vqa(easy_vqa, out: Path) -> None:
    marker = {"source": "easy-VQA (pip package easy-vqa), converted to the VQA v2 format", "splits": {}}
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
        (out / "images" / split).mkdir(parents=True)
        images = get_imgs()
        for image_id, src in images.items():
            shutil.copyfile(src, out / "images" / split / f"{image_id}.png")
        info = {"description": marker["source"], "split": split}
        files = {}
        for name, obj in ((f"{split}_questions.json", {"info": info, "task_type": "Open-Ended", "data_type": "easy_vqa",
                                                        "data_subtype": split, "questions": questions}),
                          (f"{split}_annotations.json", {"info": info, "data_type": "easy_vqa", "data_subtype": split,
                                                          "annotations": annotations})):
            with open(out / name, "w") as f:
                json.dump(obj, f)
                f.flush()
                os.fsync(f.fileno())
            files[name] = (out / name).stat().st_size
        marker["splits"][split] = {"questions": len(questions), "images": len(images), "files": files}
    (out / "CONVERTED").write_text(json.dumps(marker, indent=2) + "\n")  # last: it vouches for the rest


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
