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

Inputs (in OUTPUT_DIR): vqav2_baseline.jsonl from `python create_vqav2_baseline.py`, vqav2_finetuned.jsonl
from `python evaluate_vqav2_finetuned.py`; optionally baseline.jsonl / baseline_finetuned.jsonl (the ten
demo images). With only the baseline file it writes a baseline-only report. A run of VQAv2 test-dev / test
(no public answers) cannot be compared: it says so in one line, naming the EvalAI file to submit, and
comparison.json records that (mode "no_answers") for the demo. Needs no GPU and no model:
a smoke run is `python -m pytest tests/test_compare.py -q`, which builds small result files and runs this.
Statistics live in src/compare.py, pictures in src/charts.py, the page in src/report.py (a Jinja2
template), the number formats in src/formatting.py and every string of both languages in src/i18n.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from src.charts import ImageCache, accuracy_chart, contact_sheet, demo_chart, draw_case, length_chart, setup_matplotlib
from src.compare import (bootstrap_clusters, check_result_rows, check_same_setup, compare_rows,
                         count_stored_mismatches, coverage, index_by_question_id, is_scorable, length_stats,
                         score_baseline_only, select_cases, settings_of)
from src.config import apply_overrides, write_config
from src.data import TEST_SPLITS, image_set
from src.evaluation import evalai_file_name, no_answers_line, zero_shot_reference
from src.vqa_eval import accuracy_interval
from src.errors import UserError, run_main
from src.formatting import summary_text
from src.i18n import check_lang, texts
from src.files import atomic_write_text, read_jsonl_lines, write_json
from src.report import report_html
from src.outputs import LOCK_FILE, hold_output_lock
from src.preflight import check_output_dir, check_train_overlap, check_value

# -----------------------------------------------------------------------------
OUTPUT_DIR: str = "outputs"  # folder holding the result files below
REPORT_DIR: str = ""  # where the report goes; "" = assets/comparisons, or <output_dir>/comparisons with --output_dir
BASELINE_FILE: str = "vqav2_baseline.jsonl"  # zero-shot rows in OUTPUT_DIR (create_vqav2_baseline.py)
FINETUNED_FILE: str = "vqav2_finetuned.jsonl"  # fine-tuned rows for the same questions (evaluate_vqav2_finetuned.py)
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
              "demo_images.png", "contact_sheet.png", "config.json"]


# --- reading -------------------------------------------------------------------------------------

def resolve_image(path: str | None) -> Path | None:
    """Rows store image paths relative to the repository root (or absolute)."""
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


def demo_text(row: dict, key: str) -> str | None:
    """A demo row's caption or answer; an error row shows its error instead."""
    if row.get("error"):
        return f"(error: {row['error']})"
    return row.get(key)


def demo_rows_of(demo_base: dict | None, demo_ft: dict | None) -> list[dict]:
    """One row per demo image in either file: captions and answers before / after."""
    demo_base, demo_ft = demo_base or {}, demo_ft or {}
    rows = []
    for key in list(demo_base) + [k for k in demo_ft if k not in demo_base]:
        b, f = demo_base.get(key, {}), demo_ft.get(key, {})
        rows.append({"image_path": b.get("image_path", f.get("image_path")),
                     "question": b.get("question", f.get("question")),
                     "baseline_caption": demo_text(b, "caption"), "finetuned_caption": demo_text(f, "caption"),
                     "baseline_answer": demo_text(b, "answer"), "finetuned_answer": demo_text(f, "answer")})
    return rows


# --- comparing -----------------------------------------------------------------------------------

def compare_files(base_rows: list[dict], ft_rows: list[dict], base_path: Path, ft_path: Path,
                  warns: list[str]) -> tuple[dict, list[dict]]:
    """(result numbers, pairs) of baseline vs fine-tuned; stops on files that cannot be compared."""
    cov = coverage(base_rows, ft_rows)
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
        raise UserError(f"no question can be compared: {cov['common']} ids in common, all of them error rows "
                        f"in one of the files")
    pairs = cmp.pop("pairs")
    del cmp["mismatched"]
    cmp["partial"] = bool(cov["only_baseline"] or cov["only_finetuned"])
    cmp["stored_score_mismatches"] = {
        "baseline": count_stored_mismatches(pairs, index_by_question_id(base_rows, str(base_path)), "baseline"),
        "finetuned": count_stored_mismatches(pairs, index_by_question_id(ft_rows, str(ft_path)), "finetuned")}
    return cmp, pairs


def score_baseline(base_rows: list[dict], base_path: Path) -> tuple[dict, list[dict]]:
    """(result numbers, pairs) of a baseline-only report."""
    result, pairs = score_baseline_only(base_rows)
    if not pairs:
        raise UserError(f"{base_path}: every row is an error row; nothing to report")
    by_id = index_by_question_id(base_rows, str(base_path))
    result["partial"] = False
    result["stored_score_mismatches"] = {"baseline": count_stored_mismatches(pairs, by_id, "baseline"),
                                         "finetuned": None}
    return result, pairs


def unanswered_split(rows: list[dict]) -> str | None:
    """testdev / test when the rows come from a split without public answers (nothing to score), else None."""
    return next((r["split"] for r in rows if r.get("split") in TEST_SPLITS), None)


# --- writing -------------------------------------------------------------------------------------

def draw_pictures(result: dict, pairs: list[dict], demo_rows: list[dict], cases: dict, report_dir: Path,
                  cache: ImageCache, tr) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """The charts and the example-case PNGs; ({chart name: path}, {group: [case paths]})."""
    cases_dir = report_dir / "cases"
    if cases_dir.is_dir():  # remove the examples of an earlier run; only files this script names
        for old in cases_dir.glob("case_*.png"):
            old.unlink()
    cases_dir.mkdir(parents=True, exist_ok=True)
    plt = setup_matplotlib()
    charts = {"accuracy": report_dir / "accuracy.png", "answer_length": report_dir / "answer_length.png"}
    accuracy_chart(plt, result["baseline"], result["finetuned"], result["change"], charts["accuracy"], tr)
    length_chart(plt, result["answer_length"], charts["answer_length"], tr)
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


def remove_stale(report_dir: Path, charts: dict[str, Path]) -> None:
    """Delete artefacts of an earlier run that this run did not write (e.g. demo_images.png)."""
    written = {"summary.txt", "comparison.json", "report.html", "config.json"} | {p.name for p in charts.values()}
    for name in _ARTEFACTS:
        if name not in written and (report_dir / name).is_file():
            (report_dir / name).unlink()


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    config = apply_overrides(globals(), check=check_value)
    started = time.perf_counter()
    tr = texts(check_lang(LANG))
    output_dir = Path(OUTPUT_DIR)
    # the repository's outputs/ (however spelled) reports to assets/comparisons, where the demo's tab looks
    ours = output_dir.resolve() == (REPO / "outputs").resolve()
    report_dir = Path(REPORT_DIR) if REPORT_DIR else REPO / "assets" / "comparisons" if ours else output_dir / "comparisons"
    base_path, ft_path = output_dir / BASELINE_FILE, output_dir / FINETUNED_FILE
    if not base_path.exists():
        raise UserError(f"baseline results not found: {base_path}; create them with `python create_vqav2_baseline.py` "
                        f"(or point --output_dir= at the folder holding {BASELINE_FILE})")
    check_output_dir(report_dir, setting="--report_dir")  # a file, or read-only: said before any work
    check_report_folder(report_dir)
    with hold_output_lock(report_dir):  # two comparisons into one folder would mix their pictures
        write_report(config, started, tr, output_dir, report_dir, base_path, ft_path)


def training_data_of(ft_rows: list[dict], tr, warns: list[str]) -> dict | None:
    """The fine-tuned rows' adapter's training record with its line for the report; questions about its training
    pictures are refused in one line (src.preflight.check_train_overlap) unless ALLOW_TRAIN_OVERLAP, then warned."""
    adapter = next((r["adapter"] for r in ft_rows if r.get("adapter")), None)
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
    for old in [*(report_dir / "cases").glob("case_*.png"), *(report_dir / name for name in _ARTEFACTS)]:
        if old.is_file():
            old.unlink()
    write_json(report_dir / "comparison.json", {
        "mode": "no_answers", "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "lang": LANG, "split": runs[0][1],
        "files": files[0], "runs": files, "message": "\n".join(lines), "artefacts": {"config": "config.json"},
        "warnings": []})
    write_config(config, report_dir / "config.json")
    print("\n".join(lines))


def write_report(config: dict, started: float, tr, output_dir: Path, report_dir: Path, base_path: Path,
                 ft_path: Path) -> None:
    # read and compare
    warns: list[str] = []
    base_rows = read_results(base_path, "python create_vqav2_baseline.py")
    comparing = ft_path.exists()
    ft_rows = read_results(ft_path, "python evaluate_vqav2_finetuned.py") if comparing else []
    runs = [(path, split) for path, rows in ((base_path, base_rows), (ft_path, ft_rows)) if (split := unanswered_split(rows))]
    if runs:  # test-dev / test: nothing to score, so nothing to compare; every such run's EvalAI file is named
        write_no_answers(config, report_dir, runs)
        return
    settings = {"baseline": settings_of(base_rows, str(base_path), warns), "finetuned": None}
    if comparing:
        numbers, pairs = compare_files(base_rows, ft_rows, base_path, ft_path, warns)
        settings["finetuned"] = settings_of(ft_rows, str(ft_path), warns)
        check_same_setup(settings["baseline"], settings["finetuned"], warns)
        training = training_data_of(ft_rows, tr, warns)
    else:
        numbers, pairs, training = *score_baseline(base_rows, base_path), None
    clusters = numbers.get("clusters") or bootstrap_clusters(pairs)[1]  # what the intervals resampled
    # a zero-shot baseline of a checkpoint and prompt with a published number: held against it
    scores = [{"image_id": p["image_id"], "vqa_accuracy": p["baseline_vqa"]} for p in pairs]
    published = zero_shot_reference(next(r for r in base_rows if is_scorable(r)), {
        "vqa_accuracy": numbers["baseline"]["vqa_accuracy"], "n": len(pairs),
        "vqa_accuracy_interval": accuracy_interval(scores, BOOTSTRAP_RESAMPLES, SEED)})
    for who, n in numbers["stored_score_mismatches"].items():
        if n:
            warns.append(f"{n} {who} rows store a VQA accuracy / exact match that differs from src/vqa_eval.py; "
                         f"the recomputed scores are used")
    demo_base = read_demo(output_dir / DEMO_BASELINE_FILE, warns)
    demo_ft = read_demo(output_dir / DEMO_FINETUNED_FILE, warns)
    demo_rows = demo_rows_of(demo_base, demo_ft)
    cases = select_cases(pairs, comparing, CASES_PER_GROUP, SEED)
    result = {
        "mode": "comparison" if comparing else "baseline_only",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "lang": LANG,
        "files": {"baseline": str(base_path), "finetuned": str(ft_path), "finetuned_exists": comparing,
                  "demo_baseline": str(output_dir / DEMO_BASELINE_FILE),
                  "demo_finetuned": str(output_dir / DEMO_FINETUNED_FILE)},
        "settings": settings,
        **numbers,
        "answer_length": {"baseline": length_stats([p["baseline_answer"] for p in pairs]),
                          "finetuned": length_stats([p["finetuned_answer"] for p in pairs]) if comparing else None},
        "bootstrap": {"method": f"paired percentile bootstrap over {clusters['unit']}s", "confidence": 0.95,
                      "n_resamples": BOOTSTRAP_RESAMPLES, "seed": SEED, "clusters": clusters},
        "cases": {g: [p["question_id"] for p in ps] for g, ps in cases.items()},
        "cases_per_group": CASES_PER_GROUP,
        "demo": {"baseline_exists": demo_base is not None, "finetuned_exists": demo_ft is not None,
                 "rows": demo_rows},
        "published": published,
        "training_data": training,
        "warnings": warns,
    }

    # draw and write
    report_dir.mkdir(parents=True, exist_ok=True)
    cache = ImageCache(resolve_image)
    charts, case_files = draw_pictures(result, pairs, demo_rows, cases, report_dir, cache, tr)
    result["artefacts"] = {
        "summary": "summary.txt", "report": "report.html", "config": "config.json",
        **{name: path.name for name, path in charts.items()},
        "cases": [str(f.relative_to(report_dir)) for fs in case_files.values() for f in fs],
    }
    remove_stale(report_dir, charts)
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
