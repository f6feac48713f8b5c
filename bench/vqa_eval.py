"""The official VQAv2 evaluation tool's drop-in, on the official files:

    python -m bench.vqa_eval --questions Q.json --annotations A.json --results R.json [--out M.json]

Q and A are the official VQAv2 question and annotation files, R the official results format
`[{"question_id": int, "answer": str}, ...]` (what the evaluation scripts write as <run>_results.json).
It prints overall, per-answer-type and per-question-type accuracy and writes M.json: {"overall",
"perAnswerType", "perQuestionType", "perQuestion"} in percent, every number as the official
`vqaEval.py` gives it (the rules: src/vqa_eval.py).

`evaluate` also follows the official loop's order: questions are taken in results-file order, and a
question id repeated in the results is scored once per occurrence (with its last answer) on ground
truths the earlier pass already processed, since the official tool edits them in place.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from src.errors import UserError, run_main
from src.files import read_json, write_json
from src.vqa_eval import PRECISION, clean_whitespace, compared_answers, leave_one_out, percent, process_answer

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
    clean, process = functools.cache(clean_whitespace), functools.cache(process_answer)  # texts repeat
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
        prog="python -m bench.vqa_eval",
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
