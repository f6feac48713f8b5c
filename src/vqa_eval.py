"""VQA accuracy exactly as the official VQAv2 evaluation computes it (the project's one scorer; rules 1-6 below:
docs/notes.md), and the bootstrap intervals of an accuracy and of a paired change."""

import functools
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .files import read_json

PRECISION = 2  # decimals of every reported percentage, as the official VQAEval(n=2)

_TABLES = read_json(Path(__file__).with_name("vqa_normalization.json"), "VQA normalisation tables")
_PUNCTUATION, _NUMBER_WORDS, _CONTRACTIONS = _TABLES["punctuation"], _TABLES["number_words"], _TABLES["contractions"]
_ARTICLES = frozenset(_TABLES["articles"])
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
        out = out.replace(p, "" if digit_comma_digit or p + " " in text or " " + p in text else " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_answer(cleaned: str) -> str:
    """Rule 3, then rule 4 (official processDigitArticle, the only step that lower-cases)."""
    words = [_NUMBER_WORDS.get(word, word) for word in process_punctuation(cleaned).lower().split()]
    return " ".join([_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES])


def normalize_answer(text: str) -> str:
    """Rules 1, 3 and 4: the form the official metric compares when the ground truths disagree."""
    return process_answer(clean_whitespace(text))


def compared_answers(prediction: str, gt_answers: Sequence[str], clean: Callable, process: Callable) -> tuple:
    """Rules 1 and 2: the prediction and ground truths as the official metric compares them, through `clean`
    and `process`, rule 1 and rules 3-4 memoised (functools.cache of clean_whitespace and process_answer)."""
    prediction, gts = clean(prediction), list(map(clean, gt_answers))
    if len(set(gts)) > 1:
        return process(prediction), list(map(process, gts))
    return prediction, gts


def leave_one_out(matches: Sequence[bool], copies: Sequence[int] | None = None) -> float:
    """Rule 5 with the official float operations in the official order, so results agree to the bit;
    `copies[i]`: how many answer objects equal the i-th, itself included (one each when omitted)."""
    total = sum(matches)
    scores = [min(1, float(total - m * c) / 3) for m, c in zip(matches, copies or [1] * len(matches))]
    return float(sum(scores)) / len(scores)


def percent(values: Sequence[float]) -> float:
    """Rule 6, the official aggregate: round(100*float(sum(acc))/len(acc), 2) in the given order."""
    return round(100 * float(sum(values)) / len(values), PRECISION)


# --- questions given as strings --------------------------------------------------------------------

def score_batch(predictions: Sequence[str], gt_answer_lists: Sequence[Sequence[str]],
                where: Callable[[int], str] = "question {}".format) -> tuple[np.ndarray, np.ndarray]:
    """(VQA accuracy, exact match) of each question, two arrays of values in [0, 1]; exact match is against the
    most frequent compared ground truth (the first on a tie). `where(i)` names question i in errors."""
    if len(predictions) != len(gt_answer_lists):
        raise UserError(f"{len(predictions)} predictions but {len(gt_answer_lists)} ground-truth lists")
    # each distinct text processed once: VQAv2 repeats most answer strings
    clean, process = functools.cache(clean_whitespace), functools.cache(process_answer)
    accuracy, exact = [], []
    for i, (prediction, gts) in enumerate(zip(predictions, gt_answer_lists)):
        if not isinstance(gts, (list, tuple)) or not gts or not all(isinstance(a, str) for a in gts):
            raise UserError(f"{where(i)}: 'gt_answers' must be a non-empty list of strings, got {gts!r}")
        if not isinstance(prediction, str):
            raise UserError(f"{where(i)}: 'answer' must be a string, got {prediction!r}")
        prediction, gts = compared_answers(prediction, gts, clean, process)
        accuracy.append(leave_one_out([g == prediction for g in gts]))
        exact.append(float(max(dict.fromkeys(gts), key=gts.count) == prediction))  # the first on a tie
    return np.asarray(accuracy, np.float64), np.asarray(exact, np.float64)


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its ground-truth answers, in [0, 1]."""
    return float(score_batch([prediction], [gt_answers])[0][0])


def exact_match(prediction: str, gt_answers: Sequence[str]) -> float:
    """1.0 if the prediction equals the majority ground truth as the metric compares them; not an official number."""
    return float(score_batch([prediction], [gt_answers])[1][0])


def score_rows(rows: Sequence[dict]) -> dict:
    """{"vqa_accuracy": %, "exact_match": %, "n", "per_answer_type", "per_question_type"} of rows with `answer`
    and `gt_answers`, aggregated as the official tool does; rows without a type are left out of its breakdown."""
    rows = list(rows)
    if not rows:
        raise UserError("no prediction rows to score")

    def where(i: int) -> str:
        return f"row {i}" + (f" (question_id {rows[i]['question_id']})" if "question_id" in rows[i] else "")

    for i, row in enumerate(rows):
        for key in ("answer", "gt_answers"):
            if key not in row:
                raise UserError(f"{where(i)}: missing '{key}'")
    accuracy, exact = score_batch([r["answer"] for r in rows], [r["gt_answers"] for r in rows], where)
    accuracy, exact = accuracy.tolist(), exact.tolist()

    def summary(indices: Sequence[int]) -> dict:
        return {"vqa_accuracy": percent([accuracy[i] for i in indices]),
                "exact_match": percent([exact[i] for i in indices]), "n": len(indices)}

    out = summary(range(len(rows)))
    for key in ("answer_type", "question_type"):
        groups: dict = {}
        for i, row in enumerate(rows):
            if row.get(key) is not None:
                groups.setdefault(row[key], []).append(i)
        out[f"per_{key}"] = {group: summary(indices) for group, indices in groups.items()}
    return out


# --- rows and bootstrap intervals ----------------------------------------------------------------

def is_scorable(row: dict) -> bool:
    """A row that holds a prediction: no error recorded and a string answer."""
    return not row.get("error") and isinstance(row.get("answer"), str)


def processing_changes(rows: Sequence[dict]) -> dict:
    """How many rows' `raw_answer` (the model's text) the official processing changed into `answer`;
    `with_raw` counts the rows that record one."""
    raws = [r.get("raw_answer") for r in rows]
    return {"n": len(rows), "with_raw": sum(raw is not None for raw in raws),
            "changed": sum(raw is not None and raw != r.get("answer") for raw, r in zip(raws, rows))}


def paired_bootstrap(base_scores: Sequence[float], ft_scores: Sequence[float], n_resamples: int = 1000,
                     seed: int = 0, clusters: Sequence | None = None) -> tuple[float, float, float]:
    """(mean change ft - base, 2.5th and 97.5th percentiles) in points, resampling `clusters` (one per
    question, e.g. its image; None: the questions) with the same draws for both models (docs/notes.md)."""
    base, ft = np.asarray(base_scores, dtype=np.float64), np.asarray(ft_scores, dtype=np.float64)
    if base.ndim != 1 or base.shape != ft.shape:
        raise ValueError(f"paired_bootstrap needs two equally long 1-D score lists, got {base.shape} and {ft.shape}")
    if base.size == 0:
        raise ValueError("paired_bootstrap needs at least one question")
    diff = ft - base
    clusters = range(diff.size) if clusters is None else clusters  # None: each question its own cluster
    if len(clusters) != diff.size:  # np.fromiter below would drop the surplus silently
        raise ValueError(f"paired_bootstrap needs one cluster per question, got {len(clusters)} for {diff.size}")
    number = {c: k for k, c in enumerate(dict.fromkeys(clusters))}
    ids = np.fromiter((number[c] for c in clusters), dtype=np.int64, count=diff.size)
    sums, counts = np.bincount(ids, weights=diff), np.bincount(ids)
    rng = np.random.default_rng(seed)
    # one resample at a time: the draws of a single (n_resamples, n) array, in memory for one (VQAv2 val: 214k)
    draws = (rng.integers(0, sums.size, size=sums.size) for _ in range(n_resamples))
    low, high = np.percentile([sums[idx].sum() / counts[idx].sum() for idx in draws], [2.5, 97.5])
    return float(100 * diff.mean()), float(100 * low), float(100 * high)


def bootstrap_clusters(pairs: Sequence[dict]) -> tuple[list | None, dict]:
    """(each row's cluster for paired_bootstrap, {"unit", "n"}): the images when every row names one, else
    the questions (rows written before they carried image_id): a partial image count would mislead."""
    images = [p.get("image_id") for p in pairs]
    if pairs and all(i is not None for i in images):
        return images, {"unit": "image", "n": len(set(images))}
    return None, {"unit": "question", "n": len(pairs)}


def accuracy_interval(rows: Sequence[dict], n_resamples: int = 1000, seed: int = 0) -> dict:
    """The VQA accuracy's 95% bootstrap interval, resampling images as the comparison does."""
    clusters, unit = bootstrap_clusters(rows)
    scores = [r["vqa_accuracy"] for r in rows]
    _, low, high = paired_bootstrap([0.0] * len(scores), scores, n_resamples, seed, clusters)
    return {"low": low, "high": high, "level": 0.95, "resampled": unit}
