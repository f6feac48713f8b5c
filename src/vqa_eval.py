"""VQA accuracy exactly as the official VQAv2 evaluation computes it: the one scorer of this project.

Every number matches GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (2021 master,
commit a013f00 'Fixed processing answers bug'), quirks included, so results compare with papers and
EvalAI (tests/vqa_official.py transcribes that tool; the tests and bench/bench_vqa_eval.py check every
number against it). The drop-in for the official tool on the official files, built on these rules,
is `python -m bench.vqa_eval`.

For scripts: `vqa_accuracy(prediction, gt_answers)`, `exact_match(prediction, gt_answers)`,
`score_batch(predictions, gt_answer_lists)` and `score_rows(rows)`.

The official rules, per question, one function each below:
 1. `clean_whitespace`: in the prediction and every ground-truth answer '\\n' and '\\t' become spaces,
    then strip.
 2. `compared_answers`: only if the ground-truth strings are not all identical are the prediction and
    the ground truths normalised, by (3) then (4); a unanimous question compares raw strings ("Yes"
    scores 0 against ten "yes").
 3. `process_punctuation`: each mark p (table order) is deleted everywhere if "p " or " p" occurs in
    the original string or the string has a digit-comma-digit, else replaced by a space; then periods
    not followed by a digit are deleted, at most 32 of them (the official code passes re.UNICODE,
    which is 32, as re.sub's count).
 4. `process_digit_article`: lower-case, split on white space, map number words to digits, drop
    articles, expand contractions, join with single spaces.
 5. `leave_one_out`: for each ground-truth answer, k = how many of the others equal the prediction;
    score min(1, k/3); the question's accuracy is the mean of these scores. The official loop leaves
    out every answer object equal to the current one, which matters only for repeated objects.
 6. `percent`: overall / per type = 100 * mean over the questions, rounded to 2 decimals.

Exact match (not an official number): the processed prediction (rules 1-4, applied exactly when
the VQA metric applies them) equals the majority processed ground-truth answer, the most frequent
one with ties going to the one that occurs first; 1.0 or 0.0 per question.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .files import read_json

NORMALIZATION_TABLES = Path(__file__).with_name("vqa_normalization.json")
PRECISION = 2  # decimals of every reported percentage, as the official VQAEval(n=2)

_TABLES = read_json(NORMALIZATION_TABLES, "VQA normalisation tables")
_PUNCTUATION = tuple(_TABLES["punctuation"])
_NUMBER_WORDS = dict(_TABLES["number_words"])
_ARTICLES = frozenset(_TABLES["articles"])
_CONTRACTIONS = dict(_TABLES["contractions"])
# The official patterns, verbatim. In periodStrip '(?!<=\d)' is a (vacuous) negative lookahead, not a
# lookbehind, so it only means "a period not followed by a digit".
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # official: periodStrip.sub("", outText, re.UNICODE) -> count=32


# --- the rules -----------------------------------------------------------------------------------

def clean_whitespace(text: str) -> str:
    """Rule 1: newlines and tabs to spaces, surrounding white space stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Rule 3 (official processPunctuation); the checks look at the original text, the edits at the copy."""
    out = text
    digit_comma_digit = _COMMA_STRIP.search(text) is not None
    for p in _PUNCTUATION:
        if digit_comma_digit or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Rule 4 (official processDigitArticle, the only step that lower-cases)."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join([_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES])


def _process(cleaned: str) -> str:
    return process_digit_article(process_punctuation(cleaned))


def normalize_answer(text: str) -> str:
    """Rules 1, 3 and 4: the form the official metric compares when the ground truths disagree."""
    return _process(clean_whitespace(text))


def compared_answers(prediction: str, gt_answers: Sequence[str], clean: Callable[[str], str] = clean_whitespace,
                     process: Callable[[str], str] = _process) -> tuple[str, list[str]]:
    """Rules 1 and 2: the prediction and ground truths as the official metric compares them. `clean` and
    `process` are rule 1 and rules 3-4 (callers scoring many questions pass memoised ones)."""
    prediction, gts = clean(prediction), list(map(clean, gt_answers))
    if len(set(gts)) > 1:
        return process(prediction), list(map(process, gts))
    return prediction, gts


def leave_one_out(matches: Sequence[bool], copies: Sequence[int] | None = None) -> float:
    """Rule 5 from which ground truths equal the prediction, with the official float operations in the
    official order (min(1, float(k)/3) per answer, float(sum(...))/len(...)), so results agree to the bit.
    `copies[i]`: how many answer objects equal the i-th, itself included (one each when omitted)."""
    total = sum(matches)
    scores = [min(1, float(total - m * c) / 3) for m, c in zip(matches, copies or [1] * len(matches))]
    return float(sum(scores)) / len(scores)


def percent(values: Sequence[float]) -> float:
    """Rule 6, the official aggregate: round(100*float(sum(acc))/len(acc), 2) in the given order."""
    return round(100 * float(sum(values)) / len(values), PRECISION)


# --- questions given as strings --------------------------------------------------------------------

class _Memo(dict):
    """`function` of each distinct text, computed once: VQAv2 repeats most answer strings many times."""

    def __init__(self, function: Callable[[str], str]):
        super().__init__()
        self.function = function

    def __missing__(self, text: str) -> str:
        value = self[text] = self.function(text)
        return value


def _memoised_rules() -> tuple[Callable[[str], str], Callable[[str], str]]:
    return _Memo(clean_whitespace).__getitem__, _Memo(_process).__getitem__


def _majority(answers: Sequence[str]) -> str:
    """Most frequent answer; a tie goes to the one that occurs first."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.__getitem__)  # max keeps the first of equal keys; dicts keep order


def score_batch(predictions: Sequence[str], gt_answer_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(VQA accuracy, exact match) of each question, two arrays of values in [0, 1]."""
    if len(predictions) != len(gt_answer_lists):
        raise UserError(f"{len(predictions)} predictions but {len(gt_answer_lists)} ground-truth lists")
    clean, process = _memoised_rules()
    accuracy, exact = [], []
    for i, (prediction, gts) in enumerate(zip(predictions, gt_answer_lists)):
        if not isinstance(gts, (list, tuple)) or not gts or not all(isinstance(a, str) for a in gts):
            raise UserError(f"question {i}: gt_answers must be a non-empty list of strings, got {gts!r}")
        if not isinstance(prediction, str):
            raise UserError(f"question {i}: the prediction must be a string, got {prediction!r}")
        prediction, gts = compared_answers(prediction, gts, clean, process)
        accuracy.append(leave_one_out([g == prediction for g in gts]))
        exact.append(float(_majority(gts) == prediction))
    return np.asarray(accuracy, np.float64), np.asarray(exact, np.float64)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its ground-truth answers, in [0, 1]."""
    return float(score_batch([prediction], [gt_answers])[0][0])


def exact_match(prediction: str, gt_answers: Sequence[str]) -> float:
    """1.0 if the processed prediction equals the majority processed ground-truth answer, else 0.0.

    Processing is the VQA metric's (rules 1-4, with the unanimous-answer exception); the majority is
    the most frequent processed answer, ties going to the first to occur."""
    return float(score_batch([prediction], [gt_answers])[1][0])


def score_rows(rows: Sequence[dict]) -> dict:
    """Metrics of prediction rows (each with `answer`, `gt_answers`, and `answer_type` /
    `question_type` where known), aggregated the way the official tool aggregates its overall number.

    Returns {"vqa_accuracy": %, "exact_match": %, "n": int, "per_answer_type": {type: {...}},
    "per_question_type": {type: {...}}}; rows without a type are left out of that breakdown."""
    rows = list(rows)
    if not rows:
        raise UserError("no prediction rows to score")
    predictions, gt_lists = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"row {i}: expected an object, got {type(row).__name__}")
        where = f"row {i}" + (f" (question_id {row['question_id']})" if "question_id" in row else "")
        for key in ("answer", "gt_answers"):
            if key not in row:
                raise UserError(f"{where}: missing '{key}'")
        if not isinstance(row["answer"], str):
            raise UserError(f"{where}: 'answer' must be a string, got {row['answer']!r}")
        gts = row["gt_answers"]
        if not isinstance(gts, list) or not gts or not all(isinstance(a, str) for a in gts):
            raise UserError(f"{where}: 'gt_answers' must be a non-empty list of strings, got {gts!r}")
        predictions.append(row["answer"])
        gt_lists.append(gts)
    accuracy, exact = score_batch(predictions, gt_lists)
    accuracy, exact = accuracy.tolist(), exact.tolist()

    def summary(indices: list[int]) -> dict:
        return {"vqa_accuracy": percent([accuracy[i] for i in indices]),
                "exact_match": percent([exact[i] for i in indices]), "n": len(indices)}

    def breakdown(key: str) -> dict:
        groups: dict = {}
        for i, row in enumerate(rows):
            if row.get(key) is not None:
                groups.setdefault(row[key], []).append(i)
        return {group: summary(indices) for group, indices in groups.items()}

    out = summary(list(range(len(rows))))
    out["per_answer_type"] = breakdown("answer_type")
    out["per_question_type"] = breakdown("question_type")
    return out
