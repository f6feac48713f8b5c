"""Show what QLoRA fine-tuning changed: baseline vs fine-tuned BLIP-2 on the same VQAv2 questions.

Reads the per-question results of the zero-shot model and of the fine-tuned one, joins them on
question_id, rescores both with src.vqa_eval and writes to REPORT_DIR:

    summary.txt        the numbers to quote: n, VQA accuracy and exact match, the change with its 95%
                       paired bootstrap interval, better/worse/same counts, per answer type
    comparison.json    the same numbers, machine-readable (for tests and the Gradio demo)
    report.html        one self-contained page: numbers and charts first, then the examples in collapsible
                       groups and every compared question (collapsed)
    accuracy.png       accuracy before/after, overall and per answer type, and the change with its interval
    answer_length.png  words per answer before/after
    demo_images.png    the ten demo images: captions and answers before/after (when their files exist)
    cases/case_*.png   improved / worsened / unchanged examples, and contact_sheet.png with all of them
    config.json        the resolved settings of this run

    python compare_baseline_finetuned.py                                   # outputs/ -> assets/comparisons/
    python compare_baseline_finetuned.py --allow_partial=True              # compare the questions both files have
    python compare_baseline_finetuned.py --output_dir=runs/a            # runs/a -> runs/a/comparisons/
    python compare_baseline_finetuned.py --lang=en                       # report, summary and charts in English
    python compare_baseline_finetuned.py --finetuned_files=ft_lm.jsonl,ft_qformer.jsonl,ft_both.jsonl --labels=LM,Q-Former,both

Several fine-tuned runs (--finetuned_files=, each from `python evaluate_vqav2_finetuned.py --run_name=...` in the
baseline's folder, so on its frozen sample) are shown side by side: accuracy with intervals per run, each run's
held-out curve (from the train_log.jsonl of the adapter its rows name), and the questions the runs disagree on.

Inputs (in OUTPUT_DIR): vqav2_baseline.jsonl from `python create_vqav2_baseline.py`, vqav2_finetuned.jsonl
from `python evaluate_vqav2_finetuned.py`; optionally baseline.jsonl / baseline_finetuned.jsonl (the ten
demo images). With only the baseline file it writes a baseline-only report. A run of VQAv2 test-dev / test
(no public answers) cannot be compared: it says so in one line, naming the EvalAI file to submit, and
comparison.json records that (mode "no_answers") for the demo. Needs no GPU and no model:
a smoke run is `python -m pytest tests/test_compare.py -q`, which builds small result files and runs this.
Statistics live in src/compare.py, pictures in src/charts.py, the page in src/report.py (a Jinja2
template), the number formats in src/formatting.py and every string of both languages in src/locales/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from src.charts import (accuracy_chart, contact_sheet, demo_chart, draw_case, heldout_chart, image_cache, length_chart,
                        setup_matplotlib)
from src.compare import (check_result_rows, check_same_setup, compare_rows, coverage, is_scorable,
                         length_stats, select_cases, settings_of)
from src.config import apply_overrides, write_config
from src.data import TEST_SPLITS, image_set
from src.evaluation import evalai_file_name, no_answers_line, zero_shot_reference
from src.vqa_eval import accuracy_interval
from src.errors import UserError, run_main
from src.formatting import runs_of, summary_text
from src.i18n import check_lang, texts
from src.files import atomic_write_text, read_jsonl_lines, write_json
from src.report import report_html
from src.locks import LOCK_FILE, hold_output_lock
from src.preflight import check_output_dir, check_train_overlap, check_value, trained_folder

# -----------------------------------------------------------------------------
OUTPUT_DIR: str = "outputs"  # folder holding the result files below
REPORT_DIR: str = ""  # where the report goes; "" = assets/comparisons, or <output_dir>/comparisons with --output_dir
BASELINE_FILE: str = "vqav2_baseline.jsonl"  # zero-shot rows in OUTPUT_DIR (create_vqav2_baseline.py)
FINETUNED_FILE: str = "vqav2_finetuned.jsonl"  # fine-tuned rows for the same questions (evaluate_vqav2_finetuned.py)
FINETUNED_FILES: str = ""  # several fine-tuned runs side by side: comma-separated files in OUTPUT_DIR; "" = FINETUNED_FILE
LABELS: str = ""  # the runs' names in the report, comma-separated in FINETUNED_FILES' order; "" = file names without .jsonl
HELDOUT_PER_TYPE: bool = False  # several runs: the held-out curve chart gets a panel per answer type
DEMO_BASELINE_FILE: str = "baseline.jsonl"  # the ten demo images, base model (create_baseline.py); optional
DEMO_FINETUNED_FILE: str = "baseline_finetuned.jsonl"  # the ten demo images with the adapter; optional
CASES_PER_GROUP: int = 4  # examples drawn per group (improved / worsened / unchanged)
CASES_SHOWN: int = 2  # examples per group shown open in report.html; the rest are one click away
SEED: int = 0  # picks the examples and seeds the bootstrap
BOOTSTRAP_RESAMPLES: int = 1000  # resamples of the paired bootstrap interval of the change
THUMB_SIZE: int = 96  # longest side, in pixels, of the thumbnails embedded in report.html
MAX_THUMBNAILS: int = 2000  # distinct images embedded in the report table; later rows show the path only
ALLOW_PARTIAL: bool = False  # compare only the questions both files have instead of stopping when they differ
ALLOW_TRAIN_OVERLAP: bool = False  # True: compare even questions about pictures the adapter trained on (the report says so)
LANG: str = "zh"  # language of summary.txt, report.html and the charts: "zh" or "en"
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent
# every artefact this script may write, so a rerun removes the ones it did not write this time
_ARTEFACTS = ["summary.txt", "comparison.json", "report.html", "accuracy.png", "answer_length.png",
              "demo_images.png", "heldout_curve.png", "contact_sheet.png", "config.json"]


# --- reading -------------------------------------------------------------------------------------

def resolve_path(path: str | None) -> Path | None:
    """Rows store image and adapter paths relative to the repository root (or absolute)."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute():
        return p
    for base in (REPO, Path.cwd()):
        if (base / p).exists():
            return base / p
    return REPO / p


def read_results(path: Path, how: str) -> list[dict]:
    rows = check_result_rows(read_jsonl_lines(path, allow_torn_tail=True), path)
    if not rows:
        raise UserError(f"{path} has no rows; rerun `{how}`")
    return rows


def read_demo(path: Path, warnings_out: list[str]) -> dict | None:
    """{image_path: row} of a demo-image file, or None when it does not exist."""
    if not path.exists():
        return None
    out = {}
    for line, row in read_jsonl_lines(path, allow_torn_tail=True):
        for field in ("image_path", "question", "caption", "answer", "error"):
            if row.get(field) is not None and not isinstance(row[field], str):
                raise UserError(f"{path}, line {line}: field {field!r} is {type(row[field]).__name__}, not a string; "
                                "fix that line or rerun create_baseline.py")
        key = os.path.normpath(str(row.get("image_path")))
        if key in out:
            warnings_out.append(f"{path}: {row.get('image_path')} occurs more than once; the last row is used")
        out[key] = row
    return out


def demo_rows_of(demo_base: dict | None, demo_ft: dict | None) -> list[dict]:
    """One row per demo image in either file: captions and answers before / after (an error row: its error)."""
    demo_base, demo_ft = demo_base or {}, demo_ft or {}

    def demo_text(row: dict, key: str) -> str | None:
        return f"(error: {row['error']})" if row.get("error") else row.get(key)

    rows = []
    for key in list(demo_base) + [k for k in demo_ft if k not in demo_base]:
        b, f = demo_base.get(key, {}), demo_ft.get(key, {})
        rows.append({"image_path": b.get("image_path", f.get("image_path")),
                     "question": b.get("question", f.get("question")),
                     "baseline_caption": demo_text(b, "caption"), "finetuned_caption": demo_text(f, "caption"),
                     "baseline_answer": demo_text(b, "answer"), "finetuned_answer": demo_text(f, "answer")})
    return rows


# --- comparing -----------------------------------------------------------------------------------

def compare_files(base_rows: list[dict], ft_rows: list[dict] | None, base_path: Path,
                  ft_path: Path) -> tuple[dict, list[dict]]:
    """(result numbers, pairs) of baseline vs fine-tuned, or of the baseline alone (`ft_rows` None); stops on
    files that cannot be compared."""
    cov = coverage(base_rows, ft_rows or base_rows)
    if (cov["only_baseline"] or cov["only_finetuned"]) and not ALLOW_PARTIAL:
        raise UserError(
            f"the files cover different questions: {base_path} has {cov['baseline_questions']}, {ft_path} has "
            f"{cov['finetuned_questions']}, {cov['common']} in common ({cov['only_baseline']} only in baseline, "
            f"{cov['only_finetuned']} only in fine-tuned); rerun `python evaluate_vqav2_finetuned.py` on the "
            f"baseline's questions, or pass --allow_partial=True to compare the {cov['common']} in common")
    cmp = compare_rows(base_rows, ft_rows, n_resamples=BOOTSTRAP_RESAMPLES, seed=SEED)
    if cmp["mismatched"]["n"]:
        ids = ", ".join(map(str, cmp["mismatched"]["question_ids"][:5]))
        raise UserError(f"{cmp['mismatched']['n']} question ids have a different question or ground truth in "
                        f"{base_path} and {ft_path} (e.g. {ids}): the files come from different question sets")
    if cmp["n"] == 0:
        raise UserError(f"{base_path}: every row is an error row; nothing to report" if ft_rows is None else
                        f"no question can be compared: {cov['common']} ids in common, all of them error rows "
                        f"in one of the files")
    pairs = cmp.pop("pairs")
    del cmp["mismatched"]
    return cmp, pairs


def unanswered_split(rows: list[dict]) -> str | None:
    """testdev / test when the rows come from a split without public answers (nothing to score), else None."""
    return next((r["split"] for r in rows if r.get("split") in TEST_SPLITS), None)


# --- writing -------------------------------------------------------------------------------------

def draw_pictures(result: dict, pairs: list[dict], demo_rows: list[dict], cases: dict, report_dir: Path,
                  cache, tr) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The charts and the example-case PNGs; ({chart name: path}, {group: [case paths]})."""
    cases_dir = report_dir / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    plt, runs = setup_matplotlib(), runs_of(result, tr)
    charts = {"accuracy": report_dir / "accuracy.png", "answer_length": report_dir / "answer_length.png"}
    curves = [(r["label"], r["heldout"]["points"]) for r in runs if "heldout" in r]
    if any(points for _, points in curves):
        charts["heldout_curve"] = report_dir / "heldout_curve.png"
        heldout_chart(plt, curves, charts["heldout_curve"], tr, per_type=HELDOUT_PER_TYPE)
    accuracy_chart(plt, result["baseline"], runs, charts["accuracy"], tr)
    length_chart(plt, [(tr("baseline"), result["answer_length"]["baseline"]),
                       *((r["label"], r["answer_length"]) for r in runs)], charts["answer_length"], tr)
    if demo_rows:
        charts["demo_images"] = report_dir / "demo_images.png"
        demo_chart(plt, demo_rows, cache, charts["demo_images"], tr)
    case_files: dict[str, list[Path]] = {}
    for group, ps in cases.items():
        case_files[group] = [cases_dir / f"case_{group}_{i}_q{p['question_id']}.png" for i, p in enumerate(ps, 1)]
        for p, out in zip(ps, case_files[group]):
            draw_case(plt, p, group, cache, out, tr)
    if any(case_files.values()):
        charts["contact_sheet"] = report_dir / "contact_sheet.png"
        contact_sheet(case_files, charts["contact_sheet"])
    return charts, case_files


def remove_stale(report_dir: Path, written: set[Path]) -> None:
    """Delete what an earlier run wrote and this one did not (e.g. demo_images.png); only files this script names."""
    for old in [*(report_dir / "cases").glob("case_*.png"), *(report_dir / name for name in _ARTEFACTS)]:
        if old not in written and old.is_file():
            old.unlink()


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    config = apply_overrides(globals(), check=check_value)
    started = time.perf_counter()
    tr = texts(check_lang(LANG))
    output_dir = Path(OUTPUT_DIR)
    # the repository's outputs/ (however spelled) reports to assets/comparisons, where the demo's tab looks
    ours = output_dir.resolve() == (REPO / "outputs").resolve()
    report_dir = Path(REPORT_DIR) if REPORT_DIR else REPO / "assets" / "comparisons" if ours else output_dir / "comparisons"
    base_path = output_dir / BASELINE_FILE
    ft_paths = [output_dir / name.strip() for name in FINETUNED_FILES.split(",") if name.strip()] or \
        [output_dir / FINETUNED_FILE]
    if not base_path.exists():
        raise UserError(f"baseline results not found: {base_path}; create them with `python create_vqav2_baseline.py` "
                        f"(or point --output_dir= at the folder holding {BASELINE_FILE})")
    labels = run_labels(ft_paths)
    check_output_dir(report_dir, setting="--report_dir")  # a file, or read-only: said before any work
    check_report_folder(report_dir)
    with hold_output_lock(report_dir):  # two comparisons into one folder would mix their pictures
        write_report(config, started, tr, output_dir, report_dir, base_path, ft_paths, labels)


def run_labels(ft_paths: list[Path]) -> list[str]:
    """The runs' names (LABELS, or the file names); several runs must all exist, each with its own name."""
    if len(ft_paths) < 2:
        return ["finetuned"]
    missing = [p for p in ft_paths if not p.is_file()]
    if missing:
        raise UserError(f"fine-tuned results not found: {', '.join(map(str, missing))}; write each with `python "
                        f"evaluate_vqav2_finetuned.py --output_dir={OUTPUT_DIR} --run_name={missing[0].stem} "
                        f"--adapter_dir=...` (the baseline's folder, so its frozen sample)")
    labels = [label.strip() for label in LABELS.split(",")] if LABELS else [p.stem for p in ft_paths]
    if len(labels) != len(ft_paths) or not all(labels) or len(set(labels)) < len(labels):
        raise UserError(f"--labels={LABELS!r} must give {len(ft_paths)} distinct names, one per --finetuned_files= "
                        f"entry in the same order (the file names {[p.name for p in ft_paths]} when left empty)")
    return labels


def training_data_of(ft_rows: list[dict], tr, warns: list[str]) -> dict | None:
    """The fine-tuned rows' adapter's training record with its line for the report; questions about its training
    pictures are refused in one line (src.preflight.check_train_overlap) unless ALLOW_TRAIN_OVERLAP, then warned."""
    runs = dict.fromkeys((r.get("adapter"), r.get("model_id")) for r in ft_rows)  # one model per file: one look each
    adapter = next(filter(None, (trained_folder(*run) for run in runs)), None)
    pictures = [(image_set(r.get("dataset") or "vqav2", r.get("split") or "val"), r["image_id"]) for r in ft_rows]
    record = check_train_overlap(adapter, pictures, ALLOW_TRAIN_OVERLAP, what="the compared questions")
    if record is None:
        return None
    setting = tr("training_paper" if record["images_from"] == "COCO train2014" else
                 "training_train_split" if record["split"] == "train" else "training_not_paper")
    line = tr("training_data", questions=f"{record.get('questions', 0):,}", images=f"{record.get('images', 0):,}",
              source=record.get("hf_dataset") or record["dataset"], split=record["split"], setting=setting)
    if record["overlap_images"]:
        warns.append(tr("training_overlap", questions=f"{record['overlap_questions']:,}",
                        images=f"{record['overlap_images']:,}"))
    return {**record, "line": line}


def check_report_folder(report_dir: Path) -> None:
    """The report folder holds only what this script writes: it never writes into a model's folder or among
    another tool's files (its config.json would replace a model's)."""
    ours = {*_ARTEFACTS, "cases", ".gitkeep", LOCK_FILE}
    foreign = sorted(p.name for p in report_dir.iterdir() if p.name not in ours)
    config = report_dir / "config.json"
    if config.is_file() and "report_dir" not in config.read_text(encoding="utf-8", errors="replace"):
        foreign.insert(0, "config.json")
    if foreign:
        raise UserError(f"--report_dir={report_dir} holds files this script did not write ({', '.join(foreign[:4])}"
                        f"{', ...' if len(foreign) > 4 else ''}); choose an empty or new folder for the report")


def write_no_answers(config: dict, report_dir: Path, runs: list[tuple[Path, str]]) -> None:
    """Runs without answers (path, split): one line each naming its EvalAI file, and comparison.json saying so
    (mode "no_answers", for the demo) in place of an earlier report of this folder."""
    files = [{"run": str(path), "evalai": str(path.parent / evalai_file_name(split, path.stem)), "split": split}
             for path, split in runs]
    for f in files:
        f["evalai_exists"] = Path(f["evalai"]).is_file()
    lines = [no_answers_line(Path(f["run"]).name, f["split"], f["evalai"]) for f in files]
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(report_dir, set())
    write_json(report_dir / "comparison.json", {
        "mode": "no_answers", "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "lang": LANG, "split": runs[0][1],
        "files": files[0], "runs": files, "message": "\n".join(lines), "artefacts": {"config": "config.json"},
        "warnings": []})
    write_config(config, report_dir / "config.json")
    print("\n".join(lines))


def write_report(config: dict, started: float, tr, output_dir: Path, report_dir: Path, base_path: Path,
                 ft_paths: list[Path], labels: list[str]) -> None:
    warns: list[str] = []
    base_rows = read_results(base_path, "python create_vqav2_baseline.py")
    comparing = ft_paths[0].exists()
    ft_rows = [read_results(p, "python evaluate_vqav2_finetuned.py") for p in ft_paths] if comparing else []
    runs = [(path, split) for path, rows in ((base_path, base_rows), *zip(ft_paths, ft_rows))
            if (split := unanswered_split(rows))]
    if runs:  # test-dev / test: nothing to score, so nothing to compare; every such run's EvalAI file is named
        write_no_answers(config, report_dir, runs)
        return
    result, pairs, demo_rows, cases = build_result(base_rows, ft_rows, base_path, ft_paths, labels, output_dir, tr,
                                                   warns)
    write_files(config, started, tr, report_dir, result, pairs, demo_rows, cases)


def build_result(base_rows: list[dict], ft_rows: list[list[dict]], base_path: Path, ft_paths: list[Path],
                 labels: list[str], output_dir: Path, tr, warns: list[str]) -> tuple[dict, list, list, dict]:
    """(result, pairs, demo rows, cases): the baseline against each fine-tuned run. One run (or none: the baseline
    alone) is the two-run report with the demo images; several stand side by side on the questions all of them
    answered, with intervals, held-out curves and, as the cases, the questions they disagree on."""
    multi = len(ft_rows) > 1
    if multi:
        base_rows, ft_rows, counts = on_frozen_sample(base_rows, ft_rows, base_path, ft_paths)
    s_base = settings_of(base_rows, str(base_path), warns)
    runs, mismatches = [], {}
    for label, path, rows in zip(labels, ft_paths, ft_rows):
        numbers, pairs = compare_files(base_rows, rows, base_path, path)
        settings, notes = settings_of(rows, str(path), warns), []
        check_same_setup(s_base, settings, notes)
        training = training_data_of(rows, tr, notes)
        warns += [f"{label}: {line}" if multi else line for line in notes]
        mismatches[label] = numbers["stored_score_mismatches"]["finetuned"]
        runs.append({"label": label, "file": str(path), "settings": settings, "training_data": training,
                     "numbers": numbers, "pairs": pairs})
    if not runs:
        numbers, pairs = compare_files(base_rows, None, base_path, ft_paths[0])
    for who, n in {"baseline": numbers["stored_score_mismatches"]["baseline"], **mismatches}.items():
        warns += [f"{n} {who} rows store a VQA accuracy / exact match that differs from src/vqa_eval.py; the "
                  "recomputed scores are used"] if n else []
    result = {"mode": "multirun" if multi else "comparison" if runs else "baseline_only",
              "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "lang": LANG}
    if not multi:
        demo_base = read_demo(output_dir / DEMO_BASELINE_FILE, warns)
        demo_ft = read_demo(output_dir / DEMO_FINETUNED_FILE, warns)
        demo_rows = demo_rows_of(demo_base, demo_ft)
        result.update({
            "files": {"baseline": str(base_path), "finetuned": str(ft_paths[0]), "finetuned_exists": bool(runs),
                      "demo_baseline": str(output_dir / DEMO_BASELINE_FILE),
                      "demo_finetuned": str(output_dir / DEMO_FINETUNED_FILE)},
            "settings": {"baseline": s_base, "finetuned": runs[0]["settings"] if runs else None},
            **numbers,
            "answer_length": {"baseline": length_stats([p["baseline_answer"] for p in pairs]),
                              "finetuned": length_stats([p["finetuned_answer"] for p in pairs]) if runs else None},
            "demo": {"baseline_exists": demo_base is not None, "finetuned_exists": demo_ft is not None,
                     "rows": demo_rows},
            "training_data": runs[0]["training_data"] if runs else None})
    else:  # each run compared as in the two-run report, then joined per question (the same ones in every run)
        demo_rows, pairs = [], [join_runs(labels, ps) for ps in zip(*(r["pairs"] for r in runs))]
        result.update({
            "files": {"baseline": str(base_path), "finetuned": [str(p) for p in ft_paths]},
            "settings": {"baseline": s_base}, "n": len(pairs), **counts,
            "partial": counts["coverage"]["only_baseline"] + counts["coverage"]["only_finetuned"] > 0,
            "baseline": numbers["baseline"], "baseline_interval": accuracy_intervals(pairs, "baseline_vqa"),
            "runs": [{"label": r["label"], "file": r["file"], "settings": r["settings"],
                      "finetuned": r["numbers"]["finetuned"], "change": r["numbers"]["change"],
                      "interval": accuracy_intervals(r["pairs"], "finetuned_vqa"), "outcomes": r["numbers"]["outcomes"],
                      "answer_length": length_stats([p["finetuned_answer"] for p in r["pairs"]]),
                      "heldout": heldout_curve(r["settings"]["adapter"]), "training_data": r["training_data"]}
                     for r in runs],
            "disagreements": {"n": sum(p["outcome"] == "disagree" for p in pairs),
                              "question_ids": [p["question_id"] for p in pairs if p["outcome"] == "disagree"]},
            "answer_length": {"baseline": length_stats([p["baseline_answer"] for p in pairs])}})
    cases = select_cases(pairs, CASES_PER_GROUP, SEED)
    clusters = numbers["clusters"]
    result.update({"bootstrap": {"method": f"paired percentile bootstrap over {clusters['unit']}s", "confidence": 0.95,
                                 "n_resamples": BOOTSTRAP_RESAMPLES, "seed": SEED, "clusters": clusters},
                   "cases": {g: [p["question_id"] for p in ps] for g, ps in cases.items()},
                   "cases_per_group": CASES_PER_GROUP, "published": published_of(base_rows, pairs, numbers["baseline"]),
                   "warnings": warns})
    return result, pairs, demo_rows, cases


def join_runs(labels: list[str], pairs: tuple[dict, ...]) -> dict:
    """One question's pairs of several runs as one: the baseline's fields, each run's answer and scores in "runs",
    and whether their scores differ."""
    scores = [p["finetuned_vqa"] for p in pairs]
    return {**{k: v for k, v in pairs[0].items() if not k.startswith("finetuned_")},
            "runs": [{"label": label, **{k: v for k, v in p.items() if k.startswith("finetuned_")}}
                     for label, p in zip(labels, pairs)],
            "spread": max(scores) - min(scores), "outcome": "disagree" if max(scores) - min(scores) > 1e-9 else "agree"}


def on_frozen_sample(base_rows: list[dict], ft_rows: list[list[dict]], base_path: Path,
                     ft_paths: list[Path]) -> tuple[list[dict], list[list[dict]], dict]:
    """The rows of the questions every run answered, and their coverage and error counts. A run on other
    questions than the baseline's (another frozen sample) is refused; ALLOW_PARTIAL keeps the ones all share.
    A question some run answered with an error row is left out of every run, so each counts the same ones."""
    base_ids = {r["question_id"] for r in base_rows}
    common, union = set(base_ids), set()
    for path, rows in zip(ft_paths, ft_rows):
        ids = {r["question_id"] for r in rows}
        if ids != base_ids and not ALLOW_PARTIAL:
            raise UserError(
                f"{path} is not on the frozen sample of {base_path}: {len(ids - base_ids)} of its {len(ids)} "
                f"questions are not in the baseline and {len(base_ids - ids)} of the baseline's {len(base_ids)} are "
                f"missing; evaluate it in the baseline's folder (python evaluate_vqav2_finetuned.py --output_dir="
                f"{base_path.parent} --run_name={path.stem} --adapter_dir=...), or pass --allow_partial=True to "
                f"compare the questions all runs share")
        common, union = common & ids, union | ids
    failed = {r["question_id"] for rows in (base_rows, *ft_rows) for r in rows if not is_scorable(r)} & common
    keep = common - failed
    counts = {"coverage": {"baseline_questions": len(base_ids), "finetuned_questions": len(union),
                           "common": len(common), "only_baseline": len(base_ids - common),
                           "only_finetuned": len(union - common)},
              "errors": {"baseline": sum(not is_scorable(r) for r in base_rows),
                         "finetuned": sum(not is_scorable(r) for rows in ft_rows for r in rows),
                         "excluded": len(failed)}}
    return [r for r in base_rows if r["question_id"] in keep], \
        [[r for r in rows if r["question_id"] in keep] for rows in ft_rows], counts


def accuracy_intervals(pairs: list[dict], key: str) -> dict:
    """The 95% interval of one model's VQA accuracy, overall and per answer type (resampling as the change's)."""
    def interval(ps):
        i = accuracy_interval([{"image_id": p["image_id"], "vqa_accuracy": p[key]} for p in ps],
                              BOOTSTRAP_RESAMPLES, SEED)
        return {"low": round(i["low"], 2), "high": round(i["high"], 2)}

    types = sorted({p["answer_type"] for p in pairs if p["answer_type"] is not None})
    return {"overall": interval(pairs),
            "per_answer_type": {t: interval([p for p in pairs if p["answer_type"] == t]) for t in types}}


def heldout_curve(adapter: str | None) -> dict:
    """{"log", "points"}: the held-out accuracy per optimizer step in the train_log.jsonl of a run's adapter
    folder (its "heldout" rows); no points when the folder, the log or such rows are missing or unreadable."""
    if not adapter:
        return {"log": None, "points": []}
    log = resolve_path(adapter) / "train_log.jsonl"
    try:
        rows = read_jsonl_lines(log, allow_torn_tail=True) if log.is_file() else []
    except UserError:  # a damaged log costs the curve, not the report
        rows = []
    points = []
    for _, row in rows:
        h = row.get("heldout")
        if isinstance(h, dict) and isinstance(row.get("step"), int) and isinstance(h.get("accuracy"), (int, float)):
            per_type = h.get("per_answer_type") if isinstance(h.get("per_answer_type"), dict) else {}
            points.append({"step": row["step"], "accuracy": h["accuracy"], "per_answer_type": per_type,
                           "questions": h.get("questions"), "decoding": h.get("decoding")})
    return {"log": str(log), "points": points}


def published_of(base_rows: list[dict], pairs: list[dict], baseline: dict) -> dict | None:
    """A zero-shot baseline of a checkpoint and prompt with a published number: held against it."""
    scores = [{"image_id": p["image_id"], "vqa_accuracy": p["baseline_vqa"]} for p in pairs]
    return zero_shot_reference(next(r for r in base_rows if is_scorable(r)), {
        "vqa_accuracy": baseline["vqa_accuracy"], "n": len(pairs),
        "vqa_accuracy_interval": accuracy_interval(scores, BOOTSTRAP_RESAMPLES, SEED)})


def write_files(config: dict, started: float, tr, report_dir: Path, result: dict, pairs: list[dict],
                demo_rows: list[dict], cases: dict) -> None:
    """Draw the pictures and write summary.txt, comparison.json, report.html and config.json."""
    report_dir.mkdir(parents=True, exist_ok=True)
    cache = image_cache(resolve_path)
    charts, case_files = draw_pictures(result, pairs, demo_rows, cases, report_dir, cache, tr)
    result["artefacts"] = {
        "summary": "summary.txt", "report": "report.html", "config": "config.json",
        **{name: path.name for name, path in charts.items()},
        "cases": [str(f.relative_to(report_dir)) for fs in case_files.values() for f in fs],
    }
    remove_stale(report_dir, {*charts.values(), *(f for fs in case_files.values() for f in fs),
                              *(report_dir / name for name in ("summary.txt", "comparison.json", "report.html",
                                                               "config.json"))})
    summary = summary_text(result, tr)
    atomic_write_text(report_dir / "summary.txt", summary)
    write_json(report_dir / "comparison.json", result)
    atomic_write_text(report_dir / "report.html", report_html(
        result, pairs, demo_rows, charts, case_files, cache, thumb_size=THUMB_SIZE, max_thumbnails=MAX_THUMBNAILS,
        cases_shown=CASES_SHOWN, lang=LANG))
    write_config(config, report_dir / "config.json")
    print(summary, end="")
    print(f"\nwrote {report_dir}/: summary.txt, comparison.json, report.html, {len(charts)} charts, "
          f"{sum(map(len, case_files.values()))} example images ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    run_main(main)
