"""What one VQA question is (`VQASample`) and how official-format entries become samples: every entry
checked, one line naming the file and the first bad entry. Shared by the JSON, easy-VQA, tiny and hub
readers, so identical entries give identical samples whichever way they were read."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import UNSAFE_TEXT
from .errors import UserError


@dataclass
class VQASample:
    """One question. A question of VQAv2 test-dev / test has no public answers: answers is [] and
    multiple_choice_answer, answer_type and question_type are None (`has_answers` is False)."""
    question_id: int
    image_id: int
    image_path: str
    question: str
    answers: list[str]  # the ten human answers; [] where the split has none
    multiple_choice_answer: str | None
    answer_type: str | None
    question_type: str | None

    @property
    def has_answers(self) -> bool:
        return bool(self.answers)

    def to_dict(self) -> dict:
        return asdict(self)


def training_answer(sample: VQASample) -> str:
    """The most frequent of the ten answers; ties go to multiple_choice_answer, then to the first seen."""
    counts = Counter(a.strip() for a in sample.answers)
    best = max(counts.values())
    tied = [a for a in counts if counts[a] == best]
    mca = sample.multiple_choice_answer.strip()
    return mca if mca in tied else tied[0]


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


def _questions_by_id(questions: list, question_entry) -> dict[int, tuple[int, str, int]]:
    """{question_id: (image_id, question, position in `questions`)}, every entry checked."""
    by_id, seen = {}, {}
    for i, q in enumerate(questions):
        where = question_entry(i)
        q = _entry(q, where)
        for key in ("question_id", "image_id", "question"):
            if key not in q:
                raise UserError(f"{where}: no key {key!r}")
        qid = _int_id(q["question_id"], where, "question_id")
        _unique(seen, qid, where, where)
        by_id[qid] = (_int_id(q["image_id"], where, "image_id"), _text(q["question"], where, "question"), i)
    return by_id


def _unanswered_samples(questions: list, by_id: dict, image_path) -> list[VQASample]:
    """The samples of a split without public answers (VQAv2 test-dev / test): answers [] and no types."""
    samples = [VQASample(question_id=qid, image_id=image_id, image_path=image_path(i, questions[i]), question=question,
                         answers=[], multiple_choice_answer=None, answer_type=None, question_type=None)
               for qid, (image_id, question, i) in by_id.items()]
    samples.sort(key=lambda s: s.question_id)
    return samples


def build_samples(questions: list, annotations: list | None, *, question_entry, annotation_entry, image_path,
                  questions_source: str, annotations_source: str | None) -> list[VQASample]:
    """VQASamples from official-format entries, every entry checked; `question_entry(i)` / `annotation_entry(i)`
    name entry i in messages. annotations=None (test-dev / test): samples without answers, image_path per question."""
    by_id = _questions_by_id(questions, question_entry)
    if annotations is None:
        return _unanswered_samples(questions, by_id, image_path)
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
        image_id, question, _ = by_id[qid]
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
