"""VQA accuracy exactly as the official VQAv2 evaluation computes it: the one scorer of this project.

Every number matches GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (2021 master,
commit a013f00 'Fixed processing answers bug'), quirks included, so results compare with papers and
EvalAI (tests/vqa_official.py transcribes that tool; the tests and bench/bench_vqa_eval.py check every
number against it). As a drop-in for the official tool on the official files:

    python -m src.vqa_eval --questions Q.json --annotations A.json --results R.json [--out M.json]

Q and A are the official VQAv2 question and annotation files, R the official results format
`[{"question_id": int, "answer": str}, ...]`. It prints overall, per-answer-type and per-question-type
accuracy and writes M.json: {"overall", "perAnswerType", "perQuestionType", "perQuestion"} in percent.

For scripts: `vqa_accuracy(prediction, gt_answers)`, `exact_match(prediction, gt_answers)`,
`score_batch(predictions, gt_answer_lists)`, `score_rows(rows)` and `evaluate(questions, annotations,
results)`.

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

On files, `evaluate` also follows the official loop's order: questions are taken in results-file
order, and a question id repeated in the results is scored once per occurrence (with its last answer)
on ground truths the earlier pass already processed, since the official tool edits them in place.

Exact match (not an official number): the processed prediction (rules 1-4, applied exactly when
the VQA metric applies them) equals the majority processed ground-truth answer, the most frequent
one with ties going to the one that occurs first; 1.0 or 0.0 per question.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .errors import UserError, run_main
from .files import read_json, write_json

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


# --- whole files -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _gc_paused():
    """Collections triggered by millions of small allocations rescan every live object; loading a VQAv2
    annotation file takes 2.5x longer with them."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _entry_problem(entry, required: dict[str, type]) -> str | None:
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    for key, kind in required.items():
        if key not in entry:
            return f"has no '{key}'"
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"'{key}' must be {'an integer' if kind is int else 'a ' + kind.__name__}, got {value!r}"
    if "answers" in required:
        if not entry["answers"]:
            return "has no answers"
        for answer in entry["answers"]:
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                return f"every answer must be an object with a string 'answer', got {answer!r}"
    return None


def _some(ids: Iterable, k: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:k])) + (", ..." if len(ids) > k else "")


def _checked(entries: list, required: dict[str, type], label: str) -> list:
    """`entries`, once each is an object with the required keys and types; else the first bad one named."""
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry, required)
        if problem:
            qid = f" (question_id {entry['question_id']})" if isinstance(entry, dict) and "question_id" in entry else ""
            raise UserError(f"{label}: entry {i}{qid} {problem}")
    return entries


def _annotation_index(anns: list, label: str) -> dict:
    """question_id -> annotation."""
    _checked(anns, {"question_id": int, "answers": list, "question_type": str, "answer_type": str}, label)
    ann_of = {ann["question_id"]: ann for ann in anns}
    if len(ann_of) != len(anns):
        seen, repeated = set(), set()
        for ann in anns:
            (repeated if ann["question_id"] in seen else seen).add(ann["question_id"])
        raise UserError(f"{label}: {len(repeated)} question ids occur more than once (e.g. {_some(repeated)})")
    return ann_of


def _answer_index(results: list, ann_of: dict, label: str, annotations_label: str) -> dict:
    """question_id -> the last answer given to it, which the official index keeps."""
    answer_of = {entry["question_id"]: entry["answer"]
                 for entry in _checked(results, {"question_id": int, "answer": str}, label)}
    if len(answer_of) < len(results):
        print(f"warning: {label}: {len(results) - len(answer_of)} repeated question ids; as in the official tool, "
              "each occurrence is scored (with the last answer to that id) and counted", file=sys.stderr)
    missing = ann_of.keys() - answer_of.keys()
    unknown = answer_of.keys() - ann_of.keys()
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} annotated question ids have no answer (e.g. {_some(missing)})")
        if unknown:
            parts.append(f"{len(unknown)} question ids are not in the annotations (e.g. {_some(unknown)})")
        raise UserError(f"{label}: results do not match {annotations_label}: " + "; ".join(parts)
                        + "; the official evaluation refuses such a file too")
    return answer_of


def _copies(answers: list[dict], matches: Sequence[bool]) -> tuple[int, ...] | None:
    """For rule 5: how many answer objects (with their compared answer) equal each one. Only matching
    ones matter, and objects with distinct answer_ids (VQAv2 numbers them 1..n) are distinct: None."""
    ids = [a.get("answer_id") for a, m in zip(answers, matches) if m]
    try:
        if len(ids) < 2 or (None not in ids and len(set(ids)) == len(ids)):
            return None
    except TypeError:  # an unhashable answer_id: compare the objects below
        pass
    rest = [dict(a, answer=None) for a in answers]  # matching answers compare equal anyway
    return tuple(sum(1 for other, m in zip(rest, matches) if m and other == mine) for mine in rest)


def _official_loop(order: list, ann_of: dict, answer_of: dict) -> dict:
    """Rules 1-6 over the questions in `order`, as the official loop runs them."""
    clean, process = _memoised_rules()
    rule_5 = functools.lru_cache(maxsize=None)(leave_one_out)  # few distinct match patterns
    compared_gts: dict = {}  # the official tool edits the ground truths in place; a repeated id meets them
    values, by_answer_type, by_question_type, per_question = [], {}, {}, {}
    for qid in order:
        ann = ann_of[qid]
        gts = compared_gts[qid] if qid in compared_gts else [a["answer"] for a in ann["answers"]]
        prediction, gts = compared_answers(answer_of[qid], gts, clean, process)
        compared_gts[qid] = gts
        matches = tuple([g == prediction for g in gts])
        accuracy = rule_5(matches, _copies(ann["answers"], matches))
        values.append(accuracy)
        by_answer_type.setdefault(ann["answer_type"], []).append(accuracy)
        by_question_type.setdefault(ann["question_type"], []).append(accuracy)
        per_question[qid] = accuracy  # a repeated id keeps its last pass, as the official evalQA
    # official setEvalQA: round(100*acc, n) per question; its aggregates average the unrounded acc
    return {"overall": percent(values),
            "perAnswerType": {key: percent(group) for key, group in by_answer_type.items()},
            "perQuestionType": {key: percent(group) for key, group in by_question_type.items()},
            "perQuestion": {str(qid): round(100 * acc, PRECISION) for qid, acc in per_question.items()}}


def evaluate(questions: dict, annotations: dict, results: list,
             labels: tuple[str, str, str] = ("questions", "annotations", "results")) -> dict:
    """The official evaluation of loaded VQAv2 files: {"overall": %, "perAnswerType": {type: %},
    "perQuestionType": {type: %}, "perQuestion": {"<question_id>": %}}.

    A results file must answer exactly the annotated question ids (the official loadRes asserts the
    same). `labels` name the three inputs in error messages (the CLI passes paths)."""
    q_label, a_label, r_label = labels
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise UserError(f"{q_label}: not a VQA questions file (expected an object with a 'questions' list)")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise UserError(f"{a_label}: not a VQA annotations file (expected an object with an 'annotations' list)")
    if not isinstance(results, list):
        raise UserError(f"{r_label}: not a results file (expected a JSON array of "
                        '{"question_id": int, "answer": str})')
    if not annotations["annotations"]:
        raise UserError(f"{a_label}: no annotations")
    with _gc_paused():
        ann_of = _annotation_index(annotations["annotations"], a_label)
        answer_of = _answer_index(results, ann_of, r_label, a_label)
        if questions.get("task_type") == "Multiple Choice":  # VQAv1 MC: the official loadRes asserts this
            choices = {q.get("question_id"): q.get("multiple_choices") or () for q in questions["questions"]
                       if isinstance(q, dict)}
            for qid, options in choices.items():
                if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
                    raise UserError(f"{q_label}: question_id {qid}: multiple_choices must be a list of strings, "
                                    f"not {type(options).__name__}")
            for entry in results:
                if entry["answer"] not in choices.get(entry["question_id"], ()):
                    raise UserError(f"{r_label}: question_id {entry['question_id']}: answer {entry['answer']!r} "
                                    "is not one of its multiple choices")
        return _official_loop([entry["question_id"] for entry in results], ann_of, answer_of)

# --- command line ------------------------------------------------------------------------------------

def _read(path: str, what: str):
    try:
        return read_json(path, what)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 JSON file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror})") from None


def _print_report(metrics: dict, n_by_answer_type: dict, n_by_question_type: dict, n: int) -> None:
    width = max([len(t) for t in list(metrics["perAnswerType"]) + list(metrics["perQuestionType"])] + [20])
    print(f"VQA accuracy (official VQAv2 rules) on {n} questions")
    print(f"{'overall':<{width + 2}} {metrics['overall']:6.2f}")
    for title, table, sizes in (("per answer type", metrics["perAnswerType"], n_by_answer_type),
                                ("per question type", metrics["perQuestionType"], n_by_question_type)):
        print(f"\n{title}:")
        for key in sorted(table):
            print(f"  {key:<{width}} {table[key]:6.2f}   (n={sizes[key]})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m src.vqa_eval",
        description="Official VQAv2 accuracy (GT-Vision-Lab/VQA vqaEval.py rules) of a results file.")
    parser.add_argument("--questions", required=True, help="official VQA questions JSON")
    parser.add_argument("--annotations", required=True, help="official VQA annotations JSON")
    parser.add_argument("--results", required=True, help='results JSON: [{"question_id": int, "answer": str}, ...]')
    parser.add_argument("--out", help="write the metrics (percent) here as JSON")
    parser.add_argument("--debug", default="False", metavar="True|False", help="full tracebacks on errors")
    args = parser.parse_args(argv)
    if args.out:  # checked before the (long) scoring
        out = Path(args.out).expanduser()
        if out.is_dir():
            raise UserError(f"--out={args.out} is a folder; name a file, e.g. --out={out / 'metrics.json'}")
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise UserError(f"--out={args.out}: {blocking} is a file, not a folder; choose another --out")
        args.out = str(out)

    with _gc_paused():  # a short-lived process: no collector passes over the loaded files at all
        questions = _read(args.questions, "questions file")
        annotations = _read(args.annotations, "annotations file")
        results = _read(args.results, "results file")
        metrics = evaluate(questions, annotations, results, labels=(args.questions, args.annotations, args.results))
        anns = annotations["annotations"]
        _print_report(metrics, Counter(a["answer_type"] for a in anns), Counter(a["question_type"] for a in anns),
                      len(anns))
        if args.out:
            write_json(args.out, metrics)
            print(f"\nwrote {args.out}")
    return metrics


if __name__ == "__main__":
    run_main(main)
