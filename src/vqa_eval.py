"""VQA accuracy exactly as the official VQAv2 evaluation computes it: the one scorer of this project.

Every number matches GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (2021 master,
commit a013f00 'Fixed processing answers bug'), quirks included, so results compare with papers and
EvalAI. As a drop-in for the official tool on the official files:

    python -m src.vqa_eval --questions Q.json --annotations A.json --results R.json [--out M.json]

Q and A are the official VQAv2 question and annotation files, R the official results format
`[{"question_id": int, "answer": str}, ...]`. It prints overall, per-answer-type and per-question-type
accuracy and writes M.json: {"overall", "perAnswerType", "perQuestionType", "perQuestion"} in percent.

For scripts: `vqa_accuracy(prediction, gt_answers)`, `exact_match(prediction, gt_answers)`,
`score_batch(predictions, gt_answer_lists)`, `score_rows(rows)` and `evaluate(questions, annotations,
results)`.

The official rules, per question:
 1. The prediction and every ground-truth answer: '\\n' and '\\t' become spaces, then strip.
 2. Only if the ground-truth strings are not all identical are the prediction and the ground truths
    normalised, by (3) then (4); a unanimous question compares raw strings ("Yes" scores 0 against
    ten "yes").
 3. Punctuation: each mark p (table order) is deleted everywhere if "p " or " p" occurs in the
    original string or the string has a digit-comma-digit, else replaced by a space; then periods
    not followed by a digit are deleted, at most 32 of them (the official code passes re.UNICODE,
    which is 32, as re.sub's count).
 4. Lower-case, split on white space, map number words to digits, drop articles, expand
    contractions, join with single spaces.
 5. Leave-one-out: for each ground-truth answer, k = how many of the others equal the prediction;
    score min(1, k/3); the question's accuracy is the mean of these scores.
 6. Overall / per type = 100 * mean over the questions, rounded to 2 decimals.

Exact match (not an official number): the processed prediction (rules 1-4, applied exactly when
the VQA metric applies them) equals the majority processed ground-truth answer, the most frequent
one with ties going to the one that occurs first; 1.0 or 0.0 per question.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import operator
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import UserError, run_main
from .io import read_json, write_json

NORMALIZATION_TABLES = Path(__file__).with_name("vqa_normalization.json")
PRECISION = 2  # decimals of every reported percentage, as the official VQAEval(n=2)


def _load_tables(path: Path) -> tuple[tuple[str, ...], dict[str, str], frozenset[str], dict[str, str]]:
    tables = read_json(path, "VQA normalisation tables")
    return (tuple(tables["punctuation"]), dict(tables["number_words"]), frozenset(tables["articles"]),
            dict(tables["contractions"]))


_PUNCTUATION, _NUMBER_WORDS, _ARTICLES, _CONTRACTIONS = _load_tables(NORMALIZATION_TABLES)
# The official patterns, verbatim. In periodStrip '(?!<=\d)' is a (vacuous) negative lookahead, not a
# lookbehind, so it only means "a period not followed by a digit".
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # official: periodStrip.sub("", outText, re.UNICODE) -> count=32
_ANY_PUNCTUATION = re.compile("[" + re.escape("".join(_PUNCTUATION) + ".") + "]")
# Number words map to digits that are neither articles nor contractions, and no article is a number
# word, so "map number, drop article, map contraction" is one lookup in the merged table per word.
if (set(_NUMBER_WORDS) & (set(_CONTRACTIONS) | _ARTICLES)
        or set(_NUMBER_WORDS.values()) & (set(_CONTRACTIONS) | _ARTICLES)):
    raise RuntimeError(f"{NORMALIZATION_TABLES}: number words overlap articles or contractions")
_WORD_MAP = {**_CONTRACTIONS, **_NUMBER_WORDS}


# --- normalisation (rules 1, 3, 4) -------------------------------------------------------------------

def clean_answer(text: str) -> str:
    """Rule 1: newlines and tabs to spaces, surrounding white space stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """Rule 3 (official processPunctuation); the checks look at the original text, the edits at the copy."""
    if _ANY_PUNCTUATION.search(text) is None:
        return text  # nothing to replace, no period to strip
    out = text
    digit_comma_digit = _COMMA_STRIP.search(text) is not None
    for p in _PUNCTUATION:
        if p not in text:
            continue  # earlier edits never add or remove another mark
        if digit_comma_digit or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """Rule 4 (official processDigitArticle, the only step that lower-cases): number word -> digit,
    drop articles, expand contractions. One lookup per word does all three (see _WORD_MAP)."""
    return " ".join([_WORD_MAP.get(word, word) for word in text.lower().split() if word not in _ARTICLES])


def normalize_answer(text: str) -> str:
    """Rules 1, 3 and 4: the form the official metric compares when the ground truths disagree."""
    return _process_digit_article(_process_punctuation(clean_answer(text)))


# --- one question ------------------------------------------------------------------------------------

def _official_mean(matches: Sequence[bool]) -> float:
    """Rule 5 from which ground truths equal the prediction, with the official float operations in the
    official order (min(1, float(k)/3) per answer, float(sum(...))/len(...)), so results agree to the bit."""
    total = sum(matches)
    scores = [min(1, float(total - m) / 3) for m in matches]
    return float(sum(scores)) / len(scores)


def _processed(prediction: str, gt_answers: Sequence[str]) -> tuple[str, list[str]]:
    """Prediction and ground truths as the official metric compares them (rules 1, 2, 3, 4)."""
    if isinstance(gt_answers, str) or len(gt_answers) == 0 or not all(isinstance(a, str) for a in gt_answers):
        raise UserError(f"gt_answers must be a non-empty list of strings, got {gt_answers!r}")
    if not isinstance(prediction, str):
        raise UserError(f"the prediction must be a string, got {prediction!r}")
    prediction = clean_answer(prediction)
    gts = [clean_answer(a) for a in gt_answers]
    if len(set(gts)) > 1:
        prediction = normalize_answer(prediction)
        gts = [normalize_answer(a) for a in gts]
    return prediction, gts


def _majority(answers: Sequence[str]) -> str:
    """Most frequent answer; a tie goes to the one that occurs first."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.__getitem__)  # max keeps the first of equal keys; dicts keep order


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its ground-truth answers, in [0, 1]."""
    prediction, gts = _processed(prediction, gt_answers)
    return _official_mean([g == prediction for g in gts])


def exact_match(prediction: str, gt_answers: Sequence[str]) -> float:
    """1.0 if the processed prediction equals the majority processed ground-truth answer, else 0.0.

    Processing is the VQA metric's (rules 1-4, with the unanimous-answer exception); the majority is
    the most frequent processed answer, ties going to the first to occur."""
    prediction, gts = _processed(prediction, gt_answers)
    return float(_majority(gts) == prediction)


# --- many questions at once --------------------------------------------------------------------------

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


def _score_flat(gt_flat: list, counts: np.ndarray, predictions: list, what: str,
                with_exact: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Rules 1-5 and exact match for a batch: (accuracy, exact match or None, how many ground truths
    equal the prediction) per question. `gt_flat` holds every question's ground truths back to back,
    `counts[i]` of them for question i. Each distinct string is cleaned and normalised once; the
    comparisons run in numpy on string ids."""
    n_gt = len(gt_flat)
    # Intern: equal strings share an id (ids are sparse: positions of first occurrence).
    index: dict = {}
    try:
        gt_ids = np.fromiter(map(index.setdefault, gt_flat, itertools.count()), np.int64, n_gt)
        pred_ids = np.fromiter(map(index.setdefault, predictions, itertools.count(n_gt)), np.int64, len(predictions))
        well_typed = all(type(text) is str for text in index)
    except TypeError:  # an unhashable answer: a list or an object
        well_typed = False
    if not well_typed:
        bad = next(a for a in itertools.chain(gt_flat, predictions) if type(a) is not str)
        raise UserError(f"{what}: every answer must be a string, found {bad!r}")

    # Rule 1 per distinct raw string, then rules 3-4 per distinct cleaned string.
    size = n_gt + len(predictions)
    raw_to_clean = np.empty(size, np.int64)
    clean_ids: dict[str, int] = {}
    for text, i in index.items():
        raw_to_clean[i] = clean_ids.setdefault(clean_answer(text), len(clean_ids))
    offset = len(clean_ids)  # processed ids live above the cleaned ids, so the two never collide
    clean_to_norm = np.empty(offset, np.int64)
    norm_ids: dict[str, int] = {}
    for text, i in clean_ids.items():
        clean_to_norm[i] = norm_ids.setdefault(_process_digit_article(_process_punctuation(text)),
                                               offset + len(norm_ids))

    n_q = len(counts)
    width = int(counts.max()) if n_q else 0
    gt_clean = raw_to_clean[gt_ids]
    if n_q and (counts == width).all():
        clean = gt_clean.reshape(n_q, width)
        valid = np.ones((n_q, width), bool)
    else:
        valid = np.arange(width)[None, :] < counts[:, None]
        clean = np.full((n_q, width), -1, np.int64)
        clean[valid] = gt_clean
    pred_clean = raw_to_clean[pred_ids]

    # Rule 2: unanimous questions keep the cleaned strings, the others compare processed ones.
    unanimous = ((clean == clean[:, :1]) | ~valid).all(axis=1)
    processed = np.where(unanimous[:, None], clean, clean_to_norm[np.maximum(clean, 0)])
    processed[~valid] = -1
    pred_processed = np.where(unanimous, pred_clean, clean_to_norm[pred_clean])
    matches = (processed == pred_processed[:, None]) & valid

    # Rule 5 by distinct match pattern, with the official float operations (exact to the bit).
    if width <= 57:
        pattern = (matches.astype(np.int64) << np.arange(width, dtype=np.int64)).sum(axis=1)
        keys, inverse = np.unique((pattern << 6) | counts.astype(np.int64), return_inverse=True)
        values = [_official_mean([bool((int(k) >> (6 + j)) & 1) for j in range(int(k) & 63)]) for k in keys]
        accuracy = np.asarray(values, np.float64)[inverse.reshape(-1)]
    else:
        accuracy = np.asarray([_official_mean(row[:c].tolist()) for row, c in zip(matches, counts)], np.float64)

    n_matching = matches.sum(axis=1)
    if not with_exact:
        return accuracy, None, n_matching
    # Exact match against the majority processed answer (first of equal counts: argmax keeps the first).
    frequency = (processed[:, :, None] == processed[:, None, :]).sum(axis=2)
    frequency[~valid] = -1
    majority = processed[np.arange(n_q), frequency.argmax(axis=1)] if n_q else np.empty(0, np.int64)
    exact = (majority == pred_processed).astype(np.float64)
    return accuracy, exact, n_matching


def score_batch(predictions: Sequence[str], gt_answer_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(VQA accuracy, exact match) of many questions at once, each an array in [0, 1]; the same
    numbers as `vqa_accuracy` / `exact_match` per question, fast on VQAv2-sized inputs."""
    if len(predictions) != len(gt_answer_lists):
        raise UserError(f"{len(predictions)} predictions but {len(gt_answer_lists)} ground-truth lists")
    for i, gts in enumerate(gt_answer_lists):
        if isinstance(gts, str) or not isinstance(gts, (list, tuple)) or len(gts) == 0:
            raise UserError(f"question {i}: gt_answers must be a non-empty list of strings, got {gts!r}")
    counts = np.fromiter(map(len, gt_answer_lists), np.int64, len(gt_answer_lists))
    flat = list(itertools.chain.from_iterable(gt_answer_lists))
    accuracy, exact, _ = _score_flat(flat, counts, list(predictions), "answers")
    return accuracy, exact


def _percent(values: list[float]) -> float:
    """The official aggregate: round(100*float(sum(acc))/len(acc), n) over questions in file order."""
    return round(100 * float(sum(values)) / len(values), PRECISION)


def _grouped_percent(keys: list, values: np.ndarray) -> dict:
    """`_percent` per key, groups in order of first appearance, values in file order within a group."""
    first: dict = {}
    codes = np.fromiter(map(first.setdefault, keys, itertools.count()), np.int64, len(keys))
    order = np.argsort(codes, kind="stable")  # a group's code is its first position: groups stay in order
    groups = np.split(values[order], np.flatnonzero(np.diff(codes[order])) + 1)
    return {key: _percent(group.tolist()) for key, group in zip(first, groups)}


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
        return {"vqa_accuracy": _percent([accuracy[i] for i in indices]),
                "exact_match": _percent([exact[i] for i in indices]), "n": len(indices)}

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

def _entry_problem(entry, required: dict[str, type]) -> str | None:
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    for key, kind in required.items():
        if key not in entry:
            return f"has no '{key}'"
        value = entry[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"'{key}' must be {'an integer' if kind is int else 'a ' + kind.__name__}, got {value!r}"
    return None


def _check_entries(entries: list, required: dict[str, type], what: str) -> None:
    """Name the first malformed entry; called only once the fast path has tripped or to confirm types."""
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry, required)
        if problem:
            qid = f" (question_id {entry['question_id']})" if isinstance(entry, dict) and "question_id" in entry else ""
            raise UserError(f"{what}: entry {i}{qid} {problem}")


def _some(ids: Iterable, k: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:k])) + (", ..." if len(ids) > k else "")


def _redo_official(answers: list[dict], prediction: str) -> float:
    """One question exactly as the official loop does it when answer objects may repeat: its
    leave-one-out drops every object equal to the current one (`item != gtAnsDatum`), not just one."""
    pred, gts = _processed(prediction, [a["answer"] for a in answers])
    objects = [dict(a, answer=g) for a, g in zip(answers, gts)]
    scores = []
    for current in objects:
        k = sum(1 for other in objects if other != current and other["answer"] == pred)
        scores.append(min(1, float(k) / 3))
    return float(sum(scores)) / len(scores)


def evaluate(questions: dict, annotations: dict, results: list,
             labels: tuple[str, str, str] = ("questions", "annotations", "results")) -> dict:
    """The official evaluation of loaded VQAv2 files: {"overall": %, "perAnswerType": {type: %},
    "perQuestionType": {type: %}, "perQuestion": {"<question_id>": %}}.

    Questions are taken in annotation-file order; a results file must answer exactly the annotated
    question ids (the official loadRes asserts the same); for a repeated id the last answer counts,
    as in the official index. `labels` name the three inputs in error messages (the CLI passes paths)."""
    q_label, a_label, r_label = labels
    with _gc_paused():
        if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
            raise UserError(f"{q_label}: not a VQA questions file (expected an object with a 'questions' list)")
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise UserError(f"{a_label}: not a VQA annotations file (expected an object with an 'annotations' list)")
        if not isinstance(results, list):
            raise UserError(f"{r_label}: not a results file (expected a JSON array of "
                            '{"question_id": int, "answer": str})')
        anns = annotations["annotations"]
        if not anns:
            raise UserError(f"{a_label}: no annotations")
        qids, question_types, answer_types, answer_lists, counts, gt_flat, answer_ids = _columns(anns, a_label)
        predictions = _predictions(results, qids, r_label, a_label)
        if questions.get("task_type") == "Multiple Choice":  # VQAv1 MC: the official loadRes asserts this
            choices = {q.get("question_id"): q.get("multiple_choices") or () for q in questions["questions"]
                       if isinstance(q, dict)}
            for q, p in zip(qids, predictions):
                if p not in choices.get(q, ()):
                    raise UserError(f"{r_label}: question_id {q}: answer {p!r} is not one of its multiple choices")

        accuracy, _, n_matching = _score_flat(gt_flat, counts, predictions, a_label, with_exact=False)
        # Leave-one-out by position equals the official `item != gtAnsDatum` unless two equal answer
        # objects both equal the prediction: distinct answer_ids (VQAv2 numbers them 1..10) rule that out.
        for i in _questions_with_possibly_equal_answers(answer_ids, counts):
            if n_matching[i] >= 2:
                accuracy[i] = _redo_official(answer_lists[i], predictions[i])

        values = accuracy.tolist()
        # official setEvalQA: round(100*acc, n) per question; its aggregates average the unrounded acc
        rounded = {value: round(100 * value, PRECISION) for value in set(values)}
        return {
            "overall": _percent(values),
            "perAnswerType": _grouped_percent(answer_types, accuracy),
            "perQuestionType": _grouped_percent(question_types, accuracy),
            "perQuestion": dict(zip(map(str, qids), map(rounded.__getitem__, values))),
        }


def _columns(anns: list, label: str) -> tuple:
    """question ids, question types, answer types, answer lists, answer counts, all ground-truth
    strings back to back, and their answer_ids (None where absent). Fast path first; on any surprise
    the checker names the first malformed entry."""
    required = {"question_id": int, "answers": list, "question_type": str, "answer_type": str}
    try:
        qids = [ann["question_id"] for ann in anns]
        question_types = [ann["question_type"] for ann in anns]
        answer_types = [ann["answer_type"] for ann in anns]
        answer_lists = [ann["answers"] for ann in anns]
        counts = np.fromiter(map(len, answer_lists), np.int64, len(anns))
        flat = list(itertools.chain.from_iterable(answer_lists))
        gt_flat = list(map(operator.itemgetter("answer"), flat))
    except (KeyError, TypeError):
        _check_entries(anns, required, label)
        for i, ann in enumerate(anns):
            for answer in ann["answers"]:
                if not isinstance(answer, dict) or "answer" not in answer:
                    raise UserError(f"{label}: entry {i} (question_id {ann['question_id']}): every answer must be "
                                    f"an object with an 'answer', got {answer!r}")
        raise
    try:
        answer_ids = list(map(operator.itemgetter("answer_id"), flat))
    except KeyError:
        answer_ids = [a.get("answer_id") for a in flat]
    if {type(q) for q in qids} != {int} or {type(t) for t in itertools.chain(question_types, answer_types)} != {str}:
        _check_entries(anns, required, label)
    if not counts.all():
        i = int(np.flatnonzero(counts == 0)[0])
        raise UserError(f"{label}: entry {i} (question_id {qids[i]}) has no answers")
    if len(set(qids)) != len(qids):
        seen, repeated = set(), set()
        for q in qids:
            (repeated if q in seen else seen).add(q)
        raise UserError(f"{label}: {len(repeated)} question ids occur more than once (e.g. {_some(repeated)})")
    return qids, question_types, answer_types, answer_lists, counts, gt_flat, answer_ids


def _predictions(results: list, qids: list, label: str, annotations_label: str) -> list[str]:
    """The answer to each annotated question, in annotation order."""
    required = {"question_id": int, "answer": str}
    try:
        answer_of = {entry["question_id"]: entry["answer"] for entry in results}
    except (KeyError, TypeError):
        _check_entries(results, required, label)
        raise
    if len(answer_of) < len(results):
        print(f"warning: {label}: {len(results) - len(answer_of)} repeated question ids; the last answer of each "
              "counts, as in the official tool", file=sys.stderr)
    missing = set(qids).difference(answer_of)
    unknown = set(answer_of).difference(qids)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} annotated question ids have no answer (e.g. {_some(missing)})")
        if unknown:
            parts.append(f"{len(unknown)} question ids are not in the annotations (e.g. {_some(unknown)})")
        raise UserError(f"{label}: results do not match {annotations_label}: " + "; ".join(parts)
                        + "; the official evaluation refuses such a file too")
    predictions = list(map(answer_of.__getitem__, qids))
    if {type(p) for p in predictions} != {str}:
        _check_entries(results, required, label)
    return predictions


def _questions_with_possibly_equal_answers(answer_ids: list, counts: np.ndarray) -> list[int]:
    """Questions whose answer objects are not shown distinct by their answer_ids."""
    try:
        ids = np.asarray(answer_ids, dtype=np.int64)  # a function of the id: distinct here => distinct there
    except (TypeError, ValueError, OverflowError):
        return list(range(len(counts)))  # missing or odd answer_ids: check each question the official way
    width = int(counts.max())
    if (counts == width).all():
        matrix = ids.reshape(len(counts), width)
    else:
        valid = np.arange(width)[None, :] < counts[:, None]
        matrix = np.broadcast_to(np.iinfo(np.int64).min + np.arange(width), valid.shape).copy()
        matrix[valid] = ids
    ordered = np.sort(matrix, axis=1)
    return np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)).tolist()


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
