"""Baseline against fine-tuned on the same questions, joined on question_id: per-question outcomes, the paired
bootstrap of the change, the report's statistics and cases, and the console comparison."""

import json
import random
import re
import statistics
from collections import Counter
from typing import Sequence

from .errors import UserError
from .formatting import console_comparison
from .i18n import texts
from .vqa_eval import bootstrap_clusters, is_scorable, paired_bootstrap, processing_changes, score_batch, score_rows

# per-question scores differing by less than this are "the same" (scores are multiples of 1/30)
_SAME_TOLERANCE = 1e-9
_LENGTH_BINS = 10  # answer-length histogram bins: 0..9 words and "10+"
_SETTING_KEYS = ("model_id", "adapter", "prompt", "decoding", "quantization")


# field: the JSON types it may hold, "?" when it may be null; the fields without "?" are required
RESULT_FIELDS = {"question_id": "integer", "gt_answers": "list of strings", "question": "string?",
                 "image_path": "string?", "image_id": "integer or string?", "answer": "string?", "raw_answer": "string?",
                 "answer_type": "string?", "question_type": "string?", "vqa_accuracy": "number?",
                 "exact_match": "number?", "error": "string?"}
_JSON_TYPES = {"integer": int, "string": str, "number": (int, float), "list of strings": list}
_SURROGATE = re.compile("[\ud800-\udfff]")  # unpaired surrogates: valid JSON, not UTF-8


def check_result_rows(numbered_rows, path) -> list[dict]:
    """The rows of a result file (`(line, row)` pairs from read_jsonl_lines), each field of its type and each
    question once, or one line naming the file and the line; unpaired surrogates become "\ufffd" for the reports."""
    rows, seen = [], set()
    for line, row in numbered_rows:
        for field, spec in RESULT_FIELDS.items():
            if field not in row and not spec.endswith("?"):
                raise UserError(f"{path}, line {line}: no {field!r} field; this file was not written by these "
                                "scripts (or was edited): rerun the script that wrote it")
            value = row.get(field)
            types = tuple(_JSON_TYPES[name] for name in spec.rstrip("?").split(" or "))
            # a bool is an int to isinstance, but no field holds one
            fits = spec.endswith("?") if value is None else isinstance(value, types) and not isinstance(value, bool) \
                and (not isinstance(value, list) or all(isinstance(a, str) for a in value))
            if field in row and not fits:
                raise UserError(f"{path}, line {line}: field {field!r} is {type(value).__name__} {str(value)[:40]!r}, "
                                f"not {spec.replace('?', ' or null')}; fix that line or rerun the script that wrote "
                                "the file")
            if isinstance(value, str):
                row[field] = _SURROGATE.sub("\ufffd", value)
            elif isinstance(value, list):
                row[field] = [_SURROGATE.sub("\ufffd", a) for a in value]
        if row["question_id"] in seen:  # rows are joined on question_id
            raise UserError(f"{path}, line {line}: question_id {row['question_id']} occurs twice; each question must "
                            "have one row (delete the duplicate or rerun the script that wrote it)")
        seen.add(row["question_id"])
        rows.append(row)
    return rows


def coverage(base_rows: Sequence[dict], ft_rows: Sequence[dict]) -> dict:
    """How far two result files cover the same question ids (error rows count: they were asked)."""
    base_ids = {r.get("question_id") for r in base_rows}
    ft_ids = {r.get("question_id") for r in ft_rows}
    return {"baseline_questions": len(base_ids), "finetuned_questions": len(ft_ids),
            "common": len(base_ids & ft_ids), "only_baseline": len(base_ids - ft_ids),
            "only_finetuned": len(ft_ids - base_ids)}


def _metrics(scored: dict) -> dict:
    return {key: scored[key] for key in ("vqa_accuracy", "exact_match", "n", "per_answer_type")}


def _bootstrap_changes(pairs: list[dict], n_resamples: int, seed: int) -> dict:
    clusters, resampled = bootstrap_clusters(pairs)
    out = {"clusters": resampled}
    for metric, key in (("vqa_accuracy", "vqa"), ("exact_match", "em")):
        diff, low, high = paired_bootstrap([p[f"baseline_{key}"] for p in pairs],
                                           [p[f"finetuned_{key}"] for p in pairs], n_resamples, seed, clusters)
        out[metric] = {"diff": round(diff, 2), "low": round(low, 2), "high": round(high, 2)}
    return out


def _counts(pairs: list[dict]) -> dict:
    return {**{outcome: sum(p["outcome"] == outcome for p in pairs) for outcome in ("better", "worse", "same")},
            "answer_changed": sum(p["baseline_answer"].strip().lower() != p["finetuned_answer"].strip().lower()
                                  for p in pairs)}


def compare_rows(base_rows: Sequence[dict], ft_rows: Sequence[dict] | None,
                 n_resamples: int = 1000, seed: int = 0) -> dict:
    """Two result files compared on the questions both answered (or the baseline alone: `ft_rows` None), scored
    again with src.vqa_eval; error rows and mismatched questions are left out and counted. Keys: docs/notes.md."""
    base_by_id = {r["question_id"]: r for r in base_rows}
    ft_by_id = base_by_id if ft_rows is None else {r["question_id"]: r for r in ft_rows}
    kept, excluded, mismatched = [], 0, []
    for qid in sorted(base_by_id.keys() & ft_by_id.keys()):
        b, f = base_by_id[qid], None if ft_rows is None else ft_by_id[qid]
        if not (is_scorable(b) and (f is None or is_scorable(f))):
            excluded += 1
        elif f and (b.get("question") != f.get("question") or list(b["gt_answers"]) != list(f["gt_answers"])):
            mismatched.append(qid)
        else:
            kept.append((b, f))
    result = {"n": len(kept), "coverage": coverage(base_rows, ft_rows or []),
              "errors": {"baseline": sum(not is_scorable(r) for r in base_rows),
                         "finetuned": None if ft_rows is None else sum(not is_scorable(r) for r in ft_rows),
                         "excluded": excluded},
              "mismatched": {"n": len(mismatched), "question_ids": mismatched[:20]}, "baseline": None,
              "finetuned": None, "change": None, "outcomes": None, "clusters": None, "answer_processing": None,
              "partial": ft_rows is not None and base_by_id.keys() != ft_by_id.keys(),
              "stored_score_mismatches": None, "pairs": []}
    if not kept:
        return result
    base_list = [b for b, _ in kept]
    # the fine-tuned rows take the baseline's answer and question types: one question, one type
    ft_list = [{**f, "answer_type": b.get("answer_type"), "question_type": b.get("question_type")} for b, f in kept
               if f is not None]
    gts = [b["gt_answers"] for b in base_list]
    scores = {"baseline": score_batch([b["answer"] for b in base_list], gts)}
    scores["finetuned"] = score_batch([f["answer"] for f in ft_list], gts) if ft_list else ([None] * len(kept),) * 2
    pairs, stored = [], {"baseline": 0, "finetuned": 0}
    for i, (b, f) in enumerate(kept):
        pair = {key: b.get(key) for key in ("question_id", "image_id", "image_path", "question", "gt_answers",
                                            "answer_type", "question_type")}
        for who, row in (("baseline", b), ("finetuned", f or {})):
            vqa, em = (None if s[i] is None else float(s[i]) for s in scores[who])
            pair.update({f"{who}_answer": row.get("answer"), f"{who}_raw_answer": row.get("raw_answer"),
                         f"{who}_vqa": vqa, f"{who}_em": em})
            # rows carry the scores their writer computed; ours are recomputed: count the rows that disagree
            stored[who] += any(isinstance(row.get(key), (int, float)) and abs(row[key] - ours) > 1e-6
                               for key, ours in (("vqa_accuracy", vqa), ("exact_match", em)))
        delta = f and pair["finetuned_vqa"] - pair["baseline_vqa"]
        pair["outcome"] = f and ("better" if delta > _SAME_TOLERANCE else
                                 "worse" if delta < -_SAME_TOLERANCE else "same")
        pairs.append(pair)
    result.update(baseline=_metrics(score_rows(base_list)), pairs=pairs,
                  answer_processing={"baseline": processing_changes(base_list),
                                     "finetuned": processing_changes(ft_list) if ft_list else None},
                  stored_score_mismatches={**stored, "finetuned": stored["finetuned"] if ft_list else None})
    if not ft_list:  # the baseline alone: its interval's resampling unit (with runs: the change's, below)
        return {**result, "clusters": bootstrap_clusters(pairs)[1]}
    change = _bootstrap_changes(pairs, n_resamples, seed)
    outcomes = _counts(pairs)
    types = sorted({p["answer_type"] for p in pairs} - {None})
    by_type = {t: [p for p in pairs if p["answer_type"] == t] for t in types}
    change["per_answer_type"] = {t: {"n": len(ps), **_bootstrap_changes(ps, n_resamples, seed)}
                                 for t, ps in by_type.items()}
    outcomes["per_answer_type"] = {t: _counts(ps) for t, ps in by_type.items()}
    result.update(finetuned=_metrics(score_rows(ft_list)), change=change, outcomes=outcomes,
                  clusters=change["clusters"])
    return result


def settings_of(rows: Sequence[dict], source: str, warnings_out: list[str]) -> dict:
    """model_id / adapter / prompt / decoding of a result file; a file mixing settings gets a warning."""
    seen = Counter(json.dumps({k: r.get(k) for k in _SETTING_KEYS}, sort_keys=True) for r in rows if is_scorable(r))
    if not seen:
        return {k: None for k in _SETTING_KEYS}
    if len(seen) > 1:
        warnings_out.append(f"{source} mixes {len(seen)} different model/adapter/prompt/decoding/precision settings; "
                            f"the most common one is shown")
    return json.loads(seen.most_common(1)[0][0])


def check_same_setup(base: dict, ft: dict, warnings_out: list[str]) -> None:
    """Warn unless both runs share base model, precision, prompt and decoding (a key `ft` lacks is not compared)."""
    for key in ("model_id", "quantization", "prompt", "decoding"):
        if key in ft and base.get(key) != ft.get(key):
            warnings_out.append(f"{key} differs: baseline {base.get(key)!r}, fine-tuned {ft.get(key)!r}; "
                                f"the change is not due to fine-tuning alone")
    if base.get("adapter"):
        warnings_out.append(f"the baseline rows were produced with an adapter ({base['adapter']})")
    if not ft.get("adapter"):
        warnings_out.append("the fine-tuned rows record no adapter; are they really from the fine-tuned model?")


def length_stats(answers: Sequence[str | None]) -> dict:
    """Words per answer: mean, median and a histogram 0..9 and "10+"."""
    lengths = [len(a.split()) if a else 0 for a in answers]
    hist = Counter(min(n, _LENGTH_BINS) for n in lengths)
    return {"mean_words": round(statistics.fmean(lengths), 2), "median_words": statistics.median(lengths),
            "histogram": {str(i) if i < _LENGTH_BINS else f"{i}+": hist[i] for i in range(_LENGTH_BINS + 1)}}


def group_members(pairs: Sequence[dict]) -> dict[str, list[dict]]:
    """Every pair in its example group: improved / worsened / unchanged, the questions several runs disagree on,
    or (baseline only) the questions the baseline got right / wrong."""
    if pairs and pairs[0]["outcome"] is None:
        return {"correct": [p for p in pairs if p["baseline_vqa"] >= 1.0],
                "wrong": [p for p in pairs if p["baseline_vqa"] <= 0.0]}
    groups = {"disagree": "disagree"} if pairs and "runs" in pairs[0] else \
        {"improved": "better", "worsened": "worse", "unchanged": "same"}
    return {g: [p for p in pairs if p["outcome"] == outcome] for g, outcome in groups.items()}


def select_cases(pairs: Sequence[dict], k: int, seed: int) -> dict[str, list[dict]]:
    """`k` examples per group: the largest changes (or spreads between runs) first, unchanged ones with a changed
    answer text first; ties broken by a seeded shuffle, so reruns pick the same questions."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    delta = lambda p: p["finetuned_vqa"] - p["baseline_vqa"]  # noqa: E731
    first = {"improved": lambda p: -delta(p), "worsened": delta, "disagree": lambda p: -p["spread"],
             "unchanged": lambda p: p["baseline_answer"].strip().lower() == p["finetuned_answer"].strip().lower()}
    return {g: sorted(ps, key=first[g])[:k] if g in first else ps[:k] for g, ps in group_members(order).items()}


def print_comparison(base_rows: list[dict], rows: list[dict], *, n_cases: int, n_resamples: int, seed: int) -> None:
    """The console comparison of evaluate_vqav2_finetuned.py: the headline table, then `n_cases` random
    questions side by side."""
    cmp = compare_rows(base_rows, rows, n_resamples=n_resamples, seed=seed)
    if cmp["partial"]:
        print("note: the baseline file has {only_baseline} question(s) this run lacks and this run {only_finetuned} "
              "the baseline lacks; only the {n} common questions are compared. Finish the baseline with "
              "`python create_vqav2_baseline.py` (same settings).".format(**cmp["coverage"], n=cmp["n"]))
    print("\n" + console_comparison(cmp, texts("en")))
    pairs = cmp["pairs"]
    if pairs and n_cases > 0:
        print(f"{min(n_cases, len(pairs))} random cases:")
        for p in random.Random(seed).sample(pairs, min(n_cases, len(pairs))):
            print(f"  [{p['question_id']}] {p['question']}  (ground truth: {p['gt_answers'][0]!r}...)")
            print(f"      baseline:   {p['baseline_answer']!r} ({p['baseline_vqa']:.2f})")
            print(f"      fine-tuned: {p['finetuned_answer']!r} ({p['finetuned_vqa']:.2f})")
