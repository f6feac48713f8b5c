"""Zero-shot or fine-tuned VQA over a frozen sample (README steps 3 and 5): answer, score, write; resumable
(a rerun skips the ids written) and data-parallel (each process appends a part file, the main one merges)."""

import functools
from pathlib import Path
from typing import Callable, Sequence

from .config import write_config
from .errors import UserError
from .files import JsonlAppender, iter_chunks, read_jsonl_lines, resolved_if_local, write_json, write_jsonl
from .images import load_images
from .modeling import IMAGE_BACKEND
from .prompts import PUBLISHED, generation_record, get_decoding
from .samples import VQASample
from .vqa_eval import (accuracy_interval, exact_match, is_scorable, normalize_answer, processing_changes, score_rows,
                       vqa_accuracy)

# settings every row carries; a resumed run keeps a row only if all of them equal this run's
RESUME_KEYS = ("model_id", "adapter", "prompt", "prompt_template", "question_processing", "decoding", "quantization",
               "split", "dataset", "answer_processing", "image_backend")
ANSWER_PROCESSING = "official VQA (punctuation, number words, articles, contractions)"
SAMPLE_IDS_FILE = "vqav2_sample_ids.json"  # the frozen sample, in the output folder: drawn once by the baseline
# a test split's EvalAI challenge phase, and its subtype in the results file's name (visualqa.org/evaluation.html)
EVALAI_PHASES = {"testdev": "Test-Dev", "test": "Test-Standard"}
EVALAI_SUBTYPES = {"testdev": "test-dev2015", "test": "test2015"}
# a zero-shot run warns when even its interval's top lies this far below the checkpoint's lowest published number
# (room for 4-bit NF4 and for transformers vs LAVIS; a broken setup lands 10+ points below: docs/details.md)
FAR_BELOW_POINTS = 3.0


def evalai_file_name(split: str, run_name: str) -> str:
    """The EvalAI results file of a test split, named as visualqa.org's submission page asks."""
    return f"vqa_OpenEnded_mscoco_{EVALAI_SUBTYPES[split]}_{run_name}_results.json"


def no_answers_line(run_file: str, split: str, evalai_file: str | Path) -> str:
    """The one line the scripts say about a run of a split without public answers."""
    return (f"{run_file} is a {split} run: it has no answers to compare; submit {evalai_file} to EvalAI "
            f"(VQA Challenge, phase {EVALAI_PHASES[split]})")


def batch_images(image_processor, batch: list[VQASample]) -> dict:
    """A batch's distinct images decoded and preprocessed: the DataLoader's collate_fn, run in its workers."""
    images, errors = load_images(s.image_path for s in batch)
    pixel_values = image_processor(list(images.values()), return_tensors="pt")["pixel_values"] if images else None
    return {"paths": list(images), "pixel_values": pixel_values, "errors": errors}


def read_rows(out_path: Path, record: dict | None = None) -> dict[int, dict]:
    """Rows written so far (main file and parts) by question_id, an answered row winning over an error row;
    with `record` (a resumed run's), a row made with other settings (RESUME_KEYS) is refused, never counted."""
    rows: dict[int, dict] = {}
    for path in [out_path, *sorted(out_path.parent.glob(f"{out_path.name}.rank*.part"))]:
        if path.exists():
            for line, row in read_jsonl_lines(path, allow_torn_tail=True):
                if "question_id" not in row:
                    raise UserError(f"{path}, line {line}: a result row without question_id; this file was not "
                                    "written by these scripts (or was edited): delete it to start over")
                try:
                    qid = int(row["question_id"])
                except (TypeError, ValueError):
                    raise UserError(f"{path}, line {line}: question_id {row['question_id']!r} is not a number; "
                                    "delete the file to start over") from None
                for key in RESUME_KEYS if record is not None else ():
                    if row.get(key) != record.get(key):
                        raise UserError(f"{path}, line {line} (question {qid}) was made with {key}={row.get(key)!r}, "
                                        f"but this run uses {key}={record.get(key)!r}; delete that file to start over, "
                                        "or use another --output_dir")
                if qid not in rows or (rows[qid].get("error") and not row.get("error")):
                    rows[qid] = row
    return rows


def result_row(s: VQASample, record: dict, raw_answer: str | None, error: str | None, truncated: bool) -> dict:
    """One output row: the sample, the answer and its scores (or the error), then this run's settings. The
    answer is the model's text (raw_answer) after the official processing, as published numbers are scored."""
    answer = None if raw_answer is None else normalize_answer(raw_answer)
    scored = answer is not None and s.has_answers  # test-dev / test: no answers, no scores (null, never 0)
    row = {"question_id": s.question_id, "image_id": s.image_id, "image_path": s.image_path, "question": s.question,
           "raw_answer": raw_answer, "answer": answer, "gt_answers": s.answers,
           "answer_type": s.answer_type, "question_type": s.question_type,
           "vqa_accuracy": vqa_accuracy(answer, s.answers) if scored else None,
           "exact_match": exact_match(answer, s.answers) if scored else None, "error": error}
    return {**row, **({"question_truncated": True} if truncated else {}), **record}


def run_vqa(samples: Sequence[VQASample], out_path: Path, *, model, processor, accelerator, record: dict,
            batch_size: int, num_workers: int = 0, desc: str = "VQA") -> None:
    """Answer every sample not yet in `out_path` with the prompt and decoding of `record` (eval_record),
    appending one row per question. torch loads here, so reading results needs none."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .inference import fit_prompts, generate_batch

    done = read_rows(out_path, record)  # rows already written must come from this run's settings
    accelerator.wait_for_everyone()  # every process must see the same rows before any writes more
    retried = {q for q, row in done.items() if row.get("error")}  # e.g. an image missing then: asked again
    done = {q: row for q, row in done.items() if q not in retried}
    # questions on the same image sit in the same batch, so the image is encoded once
    todo = sorted((s for s in samples if s.question_id not in done), key=lambda s: (s.image_path, s.question_id))
    if accelerator.is_main_process:
        again = f" ({len(retried)} of them error rows asked again)" if retried else ""
        print(f"***** {desc}: {len(samples)} questions, {len(done)} already done, {len(todo)} to go{again}, "
              f"batch {batch_size} x {accelerator.num_processes} process(es) *****", flush=True)
    mine = list(iter_chunks(todo, batch_size))[accelerator.process_index::accelerator.num_processes]
    decoding = get_decoding(record["decoding"]["preset"])
    questions = [s for batch in mine for s in batch]
    fitted, was_cut, budget = fit_prompts(model, processor, record["prompt"], decoding, [s.question for s in questions])
    prompts = {s.question_id: prompt for s, prompt in zip(questions, fitted)}
    cut = dict.fromkeys(s.question_id for s, c in zip(questions, was_cut) if c)
    for qid in cut:
        print(f"warning: question {qid} is longer than the model reads; cut to {budget} tokens")
    rank_part = out_path.with_name(f"{out_path.name}.rank{accelerator.process_index}.part")  # one per process
    # batch_size=None: each item is a batch already; the loader yields them in order
    loader = DataLoader(mine, batch_size=None, num_workers=num_workers,
                        collate_fn=functools.partial(batch_images, processor.image_processor))
    bar = tqdm(total=len(questions), desc=desc, unit="q", disable=not accelerator.is_main_process, dynamic_ncols=True)
    n_errors = 0  # the bar shows the rate itself
    writer = JsonlAppender(out_path if accelerator.num_processes == 1 else rank_part)
    for batch, images in zip(mine, loader):
        answerable = [s for s in batch if s.image_path not in images["errors"]]
        answers = generate_batch(model, processor, images["pixel_values"],
                                 [prompts[s.question_id] for s in answerable], decoding,
                                 image_index=[images["paths"].index(s.image_path) for s in answerable]) \
            if answerable else []
        answer_of = {s.question_id: a for s, a in zip(answerable, answers)}
        rows = [result_row(s, record, answer_of.get(s.question_id), images["errors"].get(s.image_path),
                           s.question_id in cut) for s in batch]
        writer.write(rows)
        n_errors += sum(row["error"] is not None for row in rows)
        bar.update(len(rows))
        bar.set_postfix(errors=n_errors)
    bar.close()
    if accelerator.num_processes > 1:  # the main process reports each one's share and merges the part files
        from accelerate.utils import gather_object

        counts = gather_object([len(questions)])  # in process order; each process writes a row per question
        if accelerator.is_main_process:
            print(f"questions answered per process: {counts}")
            write_jsonl(out_path, read_rows(out_path).values())  # an answered row wins over an error row
            for part in out_path.parent.glob(f"{out_path.name}.rank*.part"):
                part.unlink()
    accelerator.wait_for_everyone()


def finalize(samples: Sequence[VQASample], out_path: Path, metrics_path: Path, results_path: Path,
             extra: dict | None = None) -> tuple[list[dict], dict]:
    """Rewrite the rows in sample order, write the metrics and the official results file; return (rows,
    metrics). A split without answers is not scored (scored False, accuracy null)."""
    by_id = read_rows(out_path)
    missing = [s.question_id for s in samples if s.question_id not in by_id]
    if missing:
        raise UserError(f"{out_path} lacks {len(missing)} of the {len(samples)} questions (e.g. {missing[:5]}); "
                        "rerun the same command to finish them")
    rows = [by_id[s.question_id] for s in samples]
    write_jsonl(out_path, rows)  # in sample order, without stray rows (e.g. from a larger earlier sample)
    scorable = [r for r in rows if not r.get("error")]
    errors = [r for r in rows if r.get("error")]
    if not scorable:
        raise UserError(f"no question in {out_path} could be answered: every image failed to load "
                        f"(first error: {errors[0]['error']})")
    counts = {"n_errors": len(errors), "answers_changed_by_processing": processing_changes(scorable)["changed"]}
    if any(s.has_answers for s in samples):
        metrics = {**score_rows(scorable), "vqa_accuracy_interval": accuracy_interval(scorable), **counts}
    else:  # counts only: no accuracy (null), n_scored 0
        metrics = {"scored": False, "vqa_accuracy": None, "exact_match": None, "n": len(rows),
                   "n_answered": len(scorable), "n_scored": 0, "per_answer_type": {}, "per_question_type": {},
                   **counts, "why_not_scored": "the split's answers are not public: EvalAI scores the submission file"}
    metrics.update(extra or {})
    write_json(metrics_path, metrics)
    write_json(results_path, [{"question_id": r["question_id"], "answer": r["answer"]} for r in scorable])
    return rows, metrics


def eval_record(*, model_id: str, adapter: str | None, quantization: str, dataset: str, vqa_prompt: str,
                vqa_decoding: str, split: str | None = None) -> dict:
    """What every row of a run records about how it was made (a resumed run must match: RESUME_KEYS); local
    folders resolved, so every spelling of one path is the same run."""
    return {"model_id": resolved_if_local(model_id), "adapter": resolved_if_local(adapter),
            "quantization": quantization, "dataset": dataset, "split": split, "answer_processing": ANSWER_PROCESSING,
            "image_backend": IMAGE_BACKEND, **generation_record(vqa_prompt, vqa_decoding)}


def zero_shot_reference(record: dict, metrics: dict) -> dict | None:
    """For a zero-shot val run of a checkpoint and prompt with a published number: that number, the settings in
    which this run differs from it, and whether the run lands far below every published number."""
    entry = PUBLISHED.get((record.get("model_id"), record.get("prompt")))
    if entry is None or record.get("adapter") or record.get("split") != "val" or metrics.get("vqa_accuracy") is None:
        return None
    run = {"decoding": (record.get("decoding") or {}).get("preset"), "quantization": record.get("quantization"),
           "dataset": record.get("dataset"), "questions": metrics["n"]}
    differs = {key: {"run": run[key], "published": entry[key]} for key in run
               if run[key] not in (entry[key] if isinstance(entry[key], tuple) else (entry[key],))}
    warn_below = min(e["accuracy"] for (model, _), e in PUBLISHED.items() if model == record["model_id"]) \
        - FAR_BELOW_POINTS
    return {"model_id": record["model_id"], "prompt": record["prompt"], "decoding": entry["decoding"],
            "accuracy": entry["accuracy"], "run_accuracy": metrics["vqa_accuracy"], "source": entry["source"],
            "interval": metrics["vqa_accuracy_interval"], "differs": differs, "warn_below": warn_below,
            "far_below": metrics["vqa_accuracy_interval"]["high"] < warn_below}


def score_and_write(samples: Sequence[VQASample], out_dir: Path, run_name: str, *, config: dict, record: dict,
                    split: str, submission_ids: Sequence[int] | None = None,
                    published_lines: Callable[[dict], list[str]] | None = None) -> tuple[list[dict], dict]:
    """Score the finished run, write its .jsonl, _metrics.json, _results.json, _config.json (test split: the
    EvalAI file for `submission_ids` instead of scores) and print the summary, worded by `published_lines`."""
    out_path = out_dir / f"{run_name}.jsonl"
    facts = {"dataset": record["dataset"], "split": split, "model_id": record["model_id"], "adapter": record["adapter"]}
    if submission_ids is not None:
        facts.update(evalai_file=evalai_file_name(split, run_name), evalai_questions=len(submission_ids))
    rows, metrics = finalize(samples, out_path, out_dir / f"{run_name}_metrics.json",
                             out_dir / f"{run_name}_results.json", extra=facts)
    reference = zero_shot_reference(record, metrics)
    if reference:
        metrics["published"] = reference
        write_json(out_dir / f"{run_name}_metrics.json", metrics)
    write_config(config, out_dir / f"{run_name}_config.json")
    errors = [r for r in rows if r.get("error")]
    if errors:
        print(f"{len(errors)} question(s) could not be answered (kept as error rows, left out of the metrics):")
        for r in errors[:5]:
            print(f"  question {r['question_id']}: {r['error']}")
    if submission_ids is None:
        interval = metrics["vqa_accuracy_interval"]
        errors_note = f", {len(errors)} error rows" if errors else ""
        print(f"{run_name} ({facts['dataset']} {split}): VQA accuracy {metrics['vqa_accuracy']:.2f}  exact match "
              f"{metrics['exact_match']:.2f}  (n={metrics['n']}{errors_note})")
        print(f"  95% interval {interval['low']:.2f} to {interval['high']:.2f} (bootstrap over "
              f"{interval['resampled']['n']:,} {interval['resampled']['unit']}s)")
        print(f"  the official answer processing (punctuation, number words, articles) changed "
              f"{metrics['answers_changed_by_processing']} of {metrics['n']} answers before scoring")
        for t, m in sorted(metrics["per_answer_type"].items()):
            print(f"  {t:<8} VQA {m['vqa_accuracy']:6.2f}  EM {m['exact_match']:6.2f}  (n={m['n']})")
        if reference and published_lines:
            print("\n".join("  " + line if not line.startswith("warning") else line
                            for line in published_lines(reference)), flush=True)
        print(f"wrote {out_path}, {run_name}_metrics.json and {run_name}_results.json in {out_dir}")
        return rows, metrics
    # an answer for every id of test2015, "" where this run has none (docs/notes.md)
    evalai_path = out_dir / facts["evalai_file"]
    answer_of = {r["question_id"]: r["answer"] for r in rows if is_scorable(r)}
    write_json(evalai_path, [{"question_id": q, "answer": answer_of.get(q, "")} for q in submission_ids])
    blank = sum(q not in answer_of for q in submission_ids)
    print(f"{run_name} ({facts['dataset']} {split}): no answers to score ({split} answers are held by the EvalAI "
          f"server); {metrics['n_answered']} of {metrics['n']} questions answered, accuracy not computed")
    print(f"{evalai_path.name} answers all {len(submission_ids):,} test2015 questions, as EvalAI wants in every "
          f"phase: {len(submission_ids) - blank:,} from this run, {blank:,} with \"\" (outside this run's questions, "
          "or error rows)")
    print(f"wrote {out_path}, {run_name}_metrics.json, {run_name}_results.json and {evalai_path.name} in {out_dir}")
    if metrics["n_errors"]:  # their answers would go in as "": fix and rerun first (error rows are asked again)
        print(f"warning: {metrics['n_errors']} question(s) have error rows (listed above), so {evalai_path.name} is "
              "not ready to submit: fix what they name (e.g. restore the images) and rerun the same command, which "
              "asks them again")
    else:
        print(f"submit {evalai_path} to EvalAI (VQA Challenge, phase {EVALAI_PHASES[split]})")
    return rows, metrics

