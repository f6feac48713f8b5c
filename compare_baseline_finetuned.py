"""Show what QLoRA fine-tuning changed: baseline vs fine-tuned BLIP-2 on the same VQAv2 questions.

Reads the per-question results of the zero-shot model and of the fine-tuned one, joins them on
question_id, rescores both with src.vqa_eval and writes to REPORT_DIR:

    summary.txt        the numbers to quote: n, VQA accuracy and exact match, the change with its 95%
                       paired bootstrap interval, better/worse/same counts, per answer type
    comparison.json    the same numbers, machine-readable (for tests and the Gradio demo)
    report.html        one self-contained page: headline, charts, examples, every compared question
    accuracy.png       accuracy before/after, overall and per answer type, and the change with its interval
    answer_length.png  words per answer before/after
    demo_images.png    the ten demo images: captions and answers before/after (when their files exist)
    cases/case_*.png   improved / worsened / unchanged examples, and contact_sheet.png with all of them
    config.json        the resolved settings of this run

    python compare_baseline_finetuned.py                                   # outputs/ -> assets/comparisons/
    python compare_baseline_finetuned.py --allow_partial=True              # compare the questions both files have
    python compare_baseline_finetuned.py --output_dir=runs/a            # runs/a -> runs/a/comparisons/

Inputs (in OUTPUT_DIR): vqav2_baseline.jsonl from `python create_vqav2_baseline.py`, vqav2_finetuned.jsonl
from `python evaluate_vqav2_finetuned.py`; optionally baseline.jsonl / baseline_finetuned.jsonl (the ten
demo images). With only the baseline file it writes a baseline-only report. Needs no GPU and no model:
a smoke run is `python -m pytest tests/test_compare.py -q`, which builds small result files and runs this.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import random
import statistics
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

from src.compare import compare_rows, coverage, index_by_question_id, is_scorable
from src.config import apply_overrides, write_config
from src.errors import UserError, run_main
from src.io import atomic_write_text, read_jsonl, write_json
from src.vqa_eval import score_batch, score_rows

# -----------------------------------------------------------------------------
OUTPUT_DIR = "outputs"  # folder holding the result files below
REPORT_DIR = ""  # where the report goes; "" = assets/comparisons, or <output_dir>/comparisons with --output_dir
BASELINE_FILE = "vqav2_baseline.jsonl"  # zero-shot rows in OUTPUT_DIR (create_vqav2_baseline.py)
FINETUNED_FILE = "vqav2_finetuned.jsonl"  # fine-tuned rows for the same questions (evaluate_vqav2_finetuned.py)
DEMO_BASELINE_FILE = "baseline.jsonl"  # the ten demo images, base model (create_baseline.py); optional
DEMO_FINETUNED_FILE = "baseline_finetuned.jsonl"  # the ten demo images with the adapter; optional
CASES_PER_GROUP = 4  # examples drawn per group (improved / worsened / unchanged)
SEED = 0  # picks the examples and seeds the bootstrap
BOOTSTRAP_RESAMPLES = 1000  # resamples of the paired bootstrap interval of the change
THUMB_SIZE = 96  # longest side, in pixels, of the thumbnails embedded in report.html
MAX_THUMBNAILS = 2000  # distinct images embedded in the report table; later rows show the path only
ALLOW_PARTIAL = False  # compare only the questions both files have instead of stopping when they differ
DEBUG = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent
_ANSWER_TYPE_ORDER = ["yes/no", "number", "other"]
_GROUPS = {  # group key -> (title, colour)
    "improved": ("improved", "#2e7d32"),
    "worsened": ("worsened", "#c62828"),
    "unchanged": ("unchanged", "#546e7a"),
    "correct": ("baseline right", "#2e7d32"),
    "wrong": ("baseline wrong", "#c62828"),
}
_CASE_IMAGE_SIZE = 300  # longest side of the picture inside a case PNG
_LENGTH_BINS = 10  # answer-length histogram bins: 0..9 words and "10+"
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


def settings_of(rows: list[dict], source: Path, warnings_out: list[str]) -> dict:
    """model_id / adapter / prompt / decoding of a result file; a file mixing settings gets a warning."""
    keys = ("model_id", "adapter", "prompt", "decoding")
    seen = Counter(json.dumps({k: r.get(k) for k in keys}, sort_keys=True) for r in rows if is_scorable(r))
    if not seen:
        return {k: None for k in keys}
    if len(seen) > 1:
        warnings_out.append(f"{source} mixes {len(seen)} different model/adapter/prompt/decoding settings; "
                            f"the most common one is shown")
    return json.loads(seen.most_common(1)[0][0])


def check_same_setup(base: dict, ft: dict, warnings_out: list[str]) -> None:
    """The comparison is fair only with the same base model, prompt and decoding."""
    for key in ("model_id", "prompt", "decoding"):
        if base.get(key) != ft.get(key):
            warnings_out.append(f"{key} differs: baseline {base.get(key)!r}, fine-tuned {ft.get(key)!r}; "
                                f"the change is not due to fine-tuning alone")
    if base.get("adapter"):
        warnings_out.append(f"the baseline rows were produced with an adapter ({base['adapter']})")
    if not ft.get("adapter"):
        warnings_out.append("the fine-tuned rows record no adapter; are they really from the fine-tuned model?")


def count_stored_mismatches(pairs: list[dict], rows_by_id: dict, who: str) -> int:
    """Rows carry the scores their writer computed; ours are recomputed. Count disagreements."""
    n = 0
    for p in pairs:
        row = rows_by_id[p["question_id"]]
        for stored_key, ours in (("vqa_accuracy", p[f"{who}_vqa"]), ("exact_match", p[f"{who}_em"])):
            stored = row.get(stored_key)
            if isinstance(stored, (int, float)) and abs(float(stored) - ours) > 1e-6:
                n += 1
                break
    return n


def baseline_only_pairs(rows: list[dict]) -> list[dict]:
    valid = sorted((r for r in rows if is_scorable(r)), key=lambda r: r["question_id"])
    if not valid:
        return []
    vqa, em = score_batch([r["answer"] for r in valid], [r["gt_answers"] for r in valid])
    return [{"question_id": r["question_id"], "image_id": r.get("image_id"), "image_path": r.get("image_path"),
             "question": r.get("question"), "gt_answers": r["gt_answers"], "answer_type": r.get("answer_type"),
             "question_type": r.get("question_type"), "baseline_answer": r["answer"], "finetuned_answer": None,
             "baseline_vqa": float(vqa[i]), "finetuned_vqa": None, "baseline_em": float(em[i]),
             "finetuned_em": None, "outcome": None} for i, r in enumerate(valid)]


def read_demo(path: Path, warnings_out: list[str]) -> dict | None:
    """{image_path: row} of a demo-image file, or None when it does not exist."""
    if not path.exists():
        return None
    out = {}
    for row in read_jsonl(path, allow_torn_tail=True):
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


# --- numbers -------------------------------------------------------------------------------------

def type_order(types) -> list[str]:
    types = list(types)
    return [t for t in _ANSWER_TYPE_ORDER if t in types] + sorted(t for t in types if t not in _ANSWER_TYPE_ORDER)


def words(answer: str | None) -> int:
    return len(answer.split()) if answer else 0


def length_stats(answers: list[str]) -> dict:
    lengths = [words(a) for a in answers]
    hist = Counter(min(n, _LENGTH_BINS) for n in lengths)
    labels = [str(i) for i in range(_LENGTH_BINS)] + [f"{_LENGTH_BINS}+"]
    return {"mean_words": round(statistics.fmean(lengths), 2), "median_words": statistics.median(lengths),
            "histogram": {labels[i]: hist.get(i, 0) for i in range(_LENGTH_BINS + 1)}}


def select_cases(pairs: list[dict], comparing: bool, k: int, seed: int) -> dict[str, list[dict]]:
    """Examples per group. Improved/worsened: the largest changes first; unchanged: questions whose
    answer text changed first (they show that a different answer need not score differently).
    Ties are broken by a seeded shuffle so reruns pick the same questions."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    if comparing:
        delta = lambda p: p["finetuned_vqa"] - p["baseline_vqa"]  # noqa: E731
        changed = lambda p: p["baseline_answer"].strip().lower() != p["finetuned_answer"].strip().lower()  # noqa: E731
        groups = {
            "improved": sorted((p for p in order if p["outcome"] == "better"), key=lambda p: -delta(p)),
            "worsened": sorted((p for p in order if p["outcome"] == "worse"), key=delta),
            "unchanged": sorted((p for p in order if p["outcome"] == "same"), key=lambda p: not changed(p)),
        }
    else:
        groups = {"correct": [p for p in order if p["baseline_vqa"] >= 1.0],
                  "wrong": [p for p in order if p["baseline_vqa"] <= 0.0]}
    return {g: ps[:k] for g, ps in groups.items()}


# --- pictures --------------------------------------------------------------------------------------

def setup_matplotlib():
    """Agg backend; a CJK font as fallback where one is installed; no glyph-missing warning noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    # DejaVu Sans has no Chinese glyphs: prefer an installed CJK font as fallback (matplotlib >= 3.6
    # falls back along the family list); without one Chinese shows as boxes, which is still readable
    warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
    installed = {f.name for f in font_manager.fontManager.ttflist}
    cjk = [name for name in ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
                             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC",
                             "Arial Unicode MS", "Noto Sans CJK JP") if name in installed]
    plt.rcParams["font.family"] = ["DejaVu Sans"] + cjk[:1]
    plt.rcParams["savefig.dpi"] = 100
    return plt


class ImageCache:
    """Each picture is opened once; a missing or unreadable one becomes None (drawn as a placeholder)."""

    def __init__(self):
        self._small: dict = {}
        self._thumb: dict = {}

    def small(self, path: str | None):
        if path not in self._small:
            from PIL import Image

            from src.images import load_image

            resolved = resolve_image(path)
            try:
                img = load_image(resolved) if resolved is not None else None
            except UserError:
                img = None
            if img is not None:
                img.thumbnail((_CASE_IMAGE_SIZE, _CASE_IMAGE_SIZE), Image.Resampling.LANCZOS)
            self._small[path] = img
        return self._small[path]

    def thumbnail_data_uri(self, path: str | None, size: int) -> str | None:
        if path not in self._thumb:
            img = self.small(path)
            uri = None
            if img is not None:
                thumb = img.copy()
                thumb.thumbnail((size, size))
                buf = io.BytesIO()
                thumb.save(buf, format="JPEG", quality=75)
                uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            self._thumb[path] = uri
        return self._thumb[path]


def clip(text, n: int) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def wrap(text, width: int, max_lines: int = 3) -> str:
    lines = textwrap.wrap(clip(text, width * max_lines), width) or [""]
    return "\n".join(lines[:max_lines])


def score_colour(score: float | None) -> str:
    if score is None:
        return "#546e7a"
    return "#2e7d32" if score >= 1.0 else "#c62828" if score <= 0.0 else "#ef6c00"


def gt_summary(gt_answers: list[str], n: int = 4) -> str:
    counts = Counter(a.strip().lower() for a in gt_answers)
    return ", ".join(f"{a} ×{c}" if c > 1 else a for a, c in counts.most_common(n)) + (" …" if len(counts) > n else "")


def draw_picture(ax, img, path: str | None) -> None:
    if img is None:
        ax.set_facecolor("#bdbdbd")
        ax.text(0.5, 0.5, "image not found\n" + wrap(path or "(no path)", 28, 4), ha="center", va="center",
                fontsize=8, color="#424242", transform=ax.transAxes, parse_math=False)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.imshow(img)
        ax.axis("off")


def draw_case(plt, pair: dict, group: str, cache: ImageCache, out: Path) -> None:
    title, colour = _GROUPS[group]
    fig = plt.figure(figsize=(7.2, 2.6))
    ax_img = fig.add_axes([0.01, 0.04, 0.33, 0.92])
    draw_picture(ax_img, cache.small(pair["image_path"]), pair["image_path"])
    fig.text(0.37, 0.9, f"{title.upper()}  ·  question {pair['question_id']}  ·  {pair['answer_type']}",
             fontsize=10, fontweight="bold", color=colour, parse_math=False)
    fig.text(0.37, 0.8, "Q: " + wrap(pair["question"], 52, 2), fontsize=10, va="top", parse_math=False)
    fig.text(0.37, 0.56, "Ground truth: " + clip(gt_summary(pair["gt_answers"]), 60), fontsize=9,
             color="#37474f", va="top", parse_math=False)
    rows = [("Baseline", pair["baseline_answer"], pair["baseline_vqa"])]
    if pair["finetuned_answer"] is not None:
        rows.append(("Fine-tuned", pair["finetuned_answer"], pair["finetuned_vqa"]))
    for i, (who, answer, score) in enumerate(rows):
        y = 0.36 - 0.2 * i
        fig.text(0.37, y, f"{who}:", fontsize=9, fontweight="bold", va="center", parse_math=False)
        fig.text(0.52, y, clip(answer, 40), fontsize=10, va="center", parse_math=False)
        fig.text(0.985, y, f"VQA {score:.2f}", fontsize=9, va="center", ha="right", color="white",
                 fontweight="bold", parse_math=False,
                 bbox={"boxstyle": "round,pad=0.3", "facecolor": score_colour(score), "edgecolor": "none"})
    fig.savefig(out)
    plt.close(fig)


def contact_sheet(case_files: dict[str, list[Path]], out: Path, width: int = 1800) -> None:
    """The case PNGs side by side: one column per group, one row per example."""
    from PIL import Image

    columns = [files for files in case_files.values()]
    rows = max((len(c) for c in columns), default=0)
    if rows == 0:
        return
    tiles = [[Image.open(f).convert("RGB") for f in c] for c in columns]
    tw, th = tiles[next(i for i, c in enumerate(tiles) if c)][0].size
    gap = 8
    sheet = Image.new("RGB", (len(columns) * (tw + gap) - gap, rows * (th + gap) - gap), "white")
    for ci, column in enumerate(tiles):
        for ri, tile in enumerate(column):
            sheet.paste(tile, (ci * (tw + gap), ri * (th + gap)))
    if sheet.width > width:
        sheet = sheet.resize((width, round(sheet.height * width / sheet.width)), Image.Resampling.LANCZOS)
    sheet.save(out, optimize=True)


def accuracy_chart(plt, base: dict, ft: dict | None, change: dict | None, out: Path) -> None:
    groups = ["overall"] + type_order(base["per_answer_type"])

    def values(metrics, metric):
        return [metrics[metric]] + [metrics["per_answer_type"].get(g, {}).get(metric, math.nan) for g in groups[1:]]

    labels = [f"{g}\n(n={base['n'] if g == 'overall' else base['per_answer_type'][g]['n']})" for g in groups]
    panels = 3 if ft is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 4.0))
    x = list(range(len(groups)))
    for ax, metric, name in zip(axes, ("vqa_accuracy", "exact_match"), ("VQA accuracy (%)", "exact match (%)")):
        series = [("baseline", values(base, metric), "#90a4ae")]
        if ft is not None:
            series.append(("fine-tuned", values(ft, metric), "#1e88e5"))
        width = 0.8 / len(series)
        for si, (who, vals, colour) in enumerate(series):
            xs = [xi - 0.4 + width * (si + 0.5) for xi in x]
            bars = ax.bar(xs, vals, width, label=who, color=colour)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 109)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8, loc="upper left", frameon=False, ncols=2)
        ax.spines[["top", "right"]].set_visible(False)
    if ft is not None and change is not None:
        ax = axes[2]
        for offset, metric, colour, name in ((-0.12, "vqa_accuracy", "#1e88e5", "VQA accuracy"),
                                             (0.12, "exact_match", "#8e24aa", "exact match")):
            cs = [change[metric]] + [change["per_answer_type"].get(g, {}).get(metric) for g in groups[1:]]
            for xi, c in zip(x, cs):
                if c is None:
                    continue
                ax.errorbar(xi + offset, c["diff"], yerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]],
                            fmt="o", color=colour, capsize=3, markersize=5,
                            label=name if xi == 0 else None)
        ax.axhline(0, color="#616161", linewidth=0.8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title("change, points (95% paired bootstrap CI)", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def length_chart(plt, lengths: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    labels = list(lengths["baseline"]["histogram"])
    series = [(who, stats) for who, stats in lengths.items() if stats is not None]
    width = 0.8 / len(series)
    for si, (who, stats) in enumerate(series):
        xs = [i - 0.4 + width * (si + 0.5) for i in range(len(labels))]
        ax.bar(xs, list(stats["histogram"].values()), width, color="#90a4ae" if who == "baseline" else "#1e88e5",
               label=f"{'fine-tuned' if who == 'finetuned' else who} (mean {stats['mean_words']:.1f} words)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("words per answer")
    ax.set_ylabel("questions")
    ax.set_title("answer length" + (" before / after fine-tuning" if len(series) > 1 else ""), fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def demo_chart(plt, demo_rows: list[dict], cache: ImageCache, out: Path) -> None:
    n = len(demo_rows)
    fig = plt.figure(figsize=(10, 1.25 * n + 0.5))
    fig.text(0.01, 1 - 0.25 / (1.25 * n + 0.5), "demo images: base model → fine-tuned", fontsize=11,
             fontweight="bold", va="center")
    top = 1 - 0.5 / (1.25 * n + 0.5)
    h = top / n
    for i, row in enumerate(demo_rows):
        y0 = top - (i + 1) * h
        ax = fig.add_axes([0.01, y0 + 0.06 * h, 0.11, 0.88 * h])
        draw_picture(ax, cache.small(row["image_path"]), row["image_path"])
        lines = [("caption", row["baseline_caption"], row["finetuned_caption"]),
                 (f"Q: {row['question']}", row["baseline_answer"], row["finetuned_answer"])]
        for li, (what, before, after) in enumerate(lines):
            y = y0 + h * (0.68 - 0.4 * li)
            fig.text(0.14, y, wrap(what, 30, 2), fontsize=8, fontweight="bold", va="center", parse_math=False)
            fig.text(0.35, y, wrap(before if before is not None else "—", 55, 2), fontsize=8, va="center",
                     color="#455a64", parse_math=False)
            fig.text(0.67, y, "→ " + wrap(after if after is not None else "— (no fine-tuned row)", 55, 2),
                     fontsize=8, va="center", color="#0d47a1", parse_math=False)
    fig.savefig(out)
    plt.close(fig)


# --- report text ---------------------------------------------------------------------------------

def fmt_change(c: dict) -> str:
    return f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"


def summary_text(result: dict) -> str:
    files, base, ft = result["files"], result["baseline"], result["finetuned"]
    s_base, s_ft = result["settings"]["baseline"], result["settings"]["finetuned"]
    out = ["BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned", ""]
    out.append(f"baseline:   {files['baseline']}  (model {s_base['model_id']}, adapter {s_base['adapter'] or 'none'}, "
               f"prompt {s_base['prompt']})")
    if ft is None:
        out.append(f"fine-tuned: MISSING {files['finetuned']}; create it with `python evaluate_vqav2_finetuned.py`, "
                   f"then rerun this script")
    else:
        out.append(f"fine-tuned: {files['finetuned']}  (model {s_ft['model_id']}, adapter {s_ft['adapter']}, "
                   f"prompt {s_ft['prompt']})")
    cov, err = result["coverage"], result["errors"]
    out.append(f"decoding:   {json.dumps(s_base['decoding'])}")
    out.append("")
    if result["partial"]:
        out.append(f"PARTIAL COMPARISON (--allow_partial=True): only the {cov['common']} question ids present in both "
                   f"files are compared ({cov['only_baseline']} only in baseline, {cov['only_finetuned']} only "
                   f"in fine-tuned are left out)")
    out.append(f"questions {'compared' if ft is not None else 'scored'}: {result['n']}  (excluded error rows: {err['excluded']}; error rows in "
               f"baseline {err['baseline']}" + (f", fine-tuned {err['finetuned']})" if ft is not None else ")"))
    out.append("")
    if ft is None:
        out.append(f"{'':16}{'baseline':>10}")
        out.append(f"{'VQA accuracy':16}{base['vqa_accuracy']:>10.2f}")
        out.append(f"{'exact match':16}{base['exact_match']:>10.2f}")
        out.append("")
        out.append("per answer type:")
        for t in type_order(base["per_answer_type"]):
            m = base["per_answer_type"][t]
            out.append(f"  {t:8} n={m['n']:<5} VQA {m['vqa_accuracy']:6.2f}  exact match {m['exact_match']:6.2f}")
    else:
        ch, oc = result["change"], result["outcomes"]
        out.append(f"{'':16}{'baseline':>10}{'fine-tuned':>12}   change, points [95% CI]")
        for metric, name in (("vqa_accuracy", "VQA accuracy"), ("exact_match", "exact match")):
            out.append(f"{name:16}{base[metric]:>10.2f}{ft[metric]:>12.2f}   {fmt_change(ch[metric])}")
        out.append("")
        out.append(f"per question (VQA accuracy): better {oc['better']}, worse {oc['worse']}, same {oc['same']}; "
                   f"answer text changed on {oc['answer_changed']}")
        out.append("")
        out.append("per answer type:")
        for t in type_order(base["per_answer_type"]):
            b, f, c, o = base["per_answer_type"][t], ft["per_answer_type"][t], ch["per_answer_type"][t], \
                oc["per_answer_type"][t]
            out.append(f"  {t:8} n={b['n']:<5} VQA {b['vqa_accuracy']:6.2f} -> {f['vqa_accuracy']:6.2f} "
                       f"({fmt_change(c['vqa_accuracy'])})  exact match {b['exact_match']:6.2f} -> "
                       f"{f['exact_match']:6.2f} ({fmt_change(c['exact_match'])})  "
                       f"better {o['better']} / worse {o['worse']} / same {o['same']}")
    lengths = result["answer_length"]
    out.append("")
    out.append(f"answer length, mean words: baseline {lengths['baseline']['mean_words']:.2f}"
               + (f", fine-tuned {lengths['finetuned']['mean_words']:.2f}" if lengths["finetuned"] else ""))
    b = result["bootstrap"]
    if ft is not None:
        out.append(f"interval: {b['confidence']:.0%} paired percentile bootstrap over questions, "
                   f"{b['n_resamples']} resamples, seed {b['seed']}")
    for w in result["warnings"]:
        out.append(f"warning: {w}")
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","PingFang SC","Microsoft YaHei",sans-serif;
 margin:24px auto;max-width:1200px;color:#263238;padding:0 12px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #cfd8dc}
.muted{color:#607d8b;font-size:.9em}.notice{background:#fff8e1;border:1px solid #ffca28;padding:8px 12px;margin:8px 0}
.error{background:#ffebee;border-color:#e57373}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #cfd8dc;border-radius:6px;padding:10px 14px;min-width:180px}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#607d8b;font-size:.85em}
table{border-collapse:collapse;font-size:.9em}td,th{border-bottom:1px solid #eceff1;padding:4px 8px;text-align:left;
 vertical-align:top}th{background:#f5f7f8}
.num{text-align:right;font-variant-numeric:tabular-nums}.nw{white-space:nowrap}
.cases{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px}
.cases img{width:100%;height:auto;border:1px solid #eceff1}
img.chart{max-width:100%;border:1px solid #eceff1;margin:6px 0}
.ph{display:inline-block;width:90px;min-height:40px;background:#bdbdbd;color:#424242;font-size:.7em;padding:3px;
 word-break:break-all}
.s{display:inline-block;border-radius:3px;padding:0 5px;color:#fff;font-size:.8em;font-weight:600;margin-left:4px}
.s1{background:#2e7d32}.s0{background:#c62828}.sp{background:#ef6c00}
tr.better td.o{color:#2e7d32;font-weight:600}tr.worse td.o{color:#c62828;font-weight:600}
.filters label{margin-right:14px;cursor:pointer}
#f-better:checked~table.questions tbody tr:not(.better){display:none}
#f-worse:checked~table.questions tbody tr:not(.worse){display:none}
#f-same:checked~table.questions tbody tr:not(.same){display:none}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def score_badge(score: float | None) -> str:
    if score is None:
        return ""
    cls = "s1" if score >= 1.0 else "s0" if score <= 0.0 else "sp"
    return f'<span class="s {cls}">{score:.2f}</span>'


def png_data_uri(path: Path, as_jpeg: bool = False) -> str:
    """A chart as an inline data URI; photos-with-text (the examples) are smaller as JPEG."""
    from PIL import Image

    data, mime = path.read_bytes(), "image/png"
    if as_jpeg:
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=85)
            data, mime = buf.getvalue(), "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


class Thumbnails:
    """Each distinct picture is embedded once, as a CSS class that table cells refer to, so a picture
    asked about five times costs its bytes once. After `max_images` pictures, cells show the path."""

    def __init__(self, cache: ImageCache, size: int, max_images: int):
        self.cache, self.size, self.max_images = cache, size, max_images
        self.uris: dict = {}  # image path -> (class name, data URI) or None

    def cell(self, path: str | None) -> str:
        if path not in self.uris:
            embedded = sum(v is not None for v in self.uris.values())
            uri = self.cache.thumbnail_data_uri(path, self.size) if embedded < self.max_images else None
            self.uris[path] = (f"t{embedded}", uri) if uri else None
        if self.uris[path] is None:
            return f'<span class="ph" title="{esc(path)}">{esc(clip(path, 80))}</span>'
        return f'<span class="t {self.uris[path][0]}" role="img" aria-label="{esc(path)}" title="{esc(path)}"></span>'

    def css(self) -> str:
        rules = [f".t{{display:inline-block;vertical-align:top;width:{self.size}px;height:{self.size}px;"
                 f"background:center/contain no-repeat}}"]
        rules += [f".{cls}{{background-image:url({uri})}}" for cls, uri in filter(None, self.uris.values())]
        return "\n".join(rules)


def report_html(result: dict, pairs: list[dict], demo_rows: list[dict], charts: dict[str, Path],
                case_files: dict[str, list[Path]], cache: ImageCache, thumb_size: int, max_thumbnails: int) -> str:
    base, ft, files = result["baseline"], result["finetuned"], result["files"]
    comparing = ft is not None
    thumbs = Thumbnails(cache, thumb_size, max_thumbnails)
    h = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         "<title>BLIP-2 VQAv2: baseline vs fine-tuned</title>", f"<style>{_CSS}</style>",
         "THUMBNAIL-STYLE", "</head>\n<body>"]
    h.append("<h1>BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned</h1>")
    s_base, s_ft = result["settings"]["baseline"], result["settings"]["finetuned"]
    h.append(f'<p class="muted">baseline: <code>{esc(files["baseline"])}</code> (model {esc(s_base["model_id"])}, '
             f'prompt {esc(s_base["prompt"])}, decoding <code>{esc(json.dumps(s_base["decoding"]))}</code>)'
             + (f'<br>fine-tuned: <code>{esc(files["finetuned"])}</code> (adapter {esc(s_ft["adapter"])})'
                if comparing else "") + f'<br>generated {esc(result["generated"])}</p>')
    if not comparing:
        h.append(f'<div class="notice error"><b>Fine-tuned results missing:</b> <code>{esc(files["finetuned"])}</code> '
                 f"was not found, so this is a baseline-only report. Create them with "
                 f"<code>python evaluate_vqav2_finetuned.py</code>, then rerun "
                 f"<code>python compare_baseline_finetuned.py</code>.</div>")
    if result["partial"]:
        cov = result["coverage"]
        h.append(f'<div class="notice"><b>Partial comparison</b> (<code>--allow_partial=True</code>): only the '
                 f'{cov["common"]} question ids present in both files are compared; {cov["only_baseline"]} only in '
                 f'the baseline and {cov["only_finetuned"]} only in the fine-tuned file are left out.</div>')
    for w in result["warnings"]:
        h.append(f'<div class="notice">warning: {esc(w)}</div>')

    err = result["errors"]
    cards = [("questions compared", str(result["n"]),
              f'{err["excluded"]} excluded (error rows)')]
    for metric, name in (("vqa_accuracy", "VQA accuracy"), ("exact_match", "exact match")):
        if comparing:
            c = result["change"][metric]
            cards.append((name, f'{base[metric]:.2f} → {ft[metric]:.2f}',
                          f'change {c["diff"]:+.2f} points, 95% CI [{c["low"]:+.2f}, {c["high"]:+.2f}]'))
        else:
            cards.append((name + " (baseline)", f"{base[metric]:.2f}", "percent"))
    if comparing:
        oc = result["outcomes"]
        cards.append(("better / worse / same", f'{oc["better"]} / {oc["worse"]} / {oc["same"]}',
                      "per question, by VQA accuracy"))
    h.append('<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div><div class="k">{esc(sub)}</div></div>'
        for k, v, sub in cards) + "</div>")

    h.append("<h2>Per answer type</h2><table><thead><tr><th>answer type</th><th class=num>n</th>"
             "<th class=num>VQA baseline</th>" + ("<th class=num>VQA fine-tuned</th><th>change [95% CI]</th>"
                                                 if comparing else "")
             + "<th class=num>EM baseline</th>" + ("<th class=num>EM fine-tuned</th><th>change [95% CI]</th>"
                                                    "<th>better / worse / same</th>" if comparing else "")
             + "</tr></thead><tbody>")
    for t in ["overall"] + type_order(base["per_answer_type"]):
        b = base if t == "overall" else base["per_answer_type"][t]
        cells = [esc(t), str(b["n"]), f'{b["vqa_accuracy"]:.2f}']
        if comparing:
            f = ft if t == "overall" else ft["per_answer_type"][t]
            c = result["change"] if t == "overall" else result["change"]["per_answer_type"][t]
            o = result["outcomes"] if t == "overall" else result["outcomes"]["per_answer_type"][t]
            cells += [f'{f["vqa_accuracy"]:.2f}', fmt_change(c["vqa_accuracy"]), f'{b["exact_match"]:.2f}',
                      f'{f["exact_match"]:.2f}', fmt_change(c["exact_match"]),
                      f'{o["better"]} / {o["worse"]} / {o["same"]}']
        else:
            cells.append(f'{b["exact_match"]:.2f}')
        h.append("<tr>" + "".join(f'<td class="{"nw" if i in (0, 4, 7, 8) else "num"}">{c}</td>'
                                  for i, c in enumerate(cells)) + "</tr>")
    h.append("</tbody></table>")

    h.append("<h2>Charts</h2>")
    for name, alt in (("accuracy", "accuracy before and after, per answer type"),
                      ("answer_length", "answer length distribution")):
        if name in charts:
            h.append(f'<img class="chart" src="{png_data_uri(charts[name])}" alt="{esc(alt)}">')
    if any(case_files.values()):
        h.append(f"<h2>Examples</h2><p class='muted'>up to {result['cases_per_group']} per group, chosen with seed "
                 f"{result['bootstrap']['seed']}; the badge is the answer's VQA accuracy "
                 f"(also in contact_sheet.png and cases/)</p>")
        sizes = Counter(p["outcome"] for p in pairs) if comparing else \
            Counter("correct" if p["baseline_vqa"] >= 1 else "wrong" if p["baseline_vqa"] <= 0 else "" for p in pairs)
        outcome_of = {"improved": "better", "worsened": "worse", "unchanged": "same", "correct": "correct",
                      "wrong": "wrong"}
        for group, files_ in case_files.items():
            h.append(f"<h3>{esc(_GROUPS[group][0])} ({len(files_)} of {sizes[outcome_of[group]]})</h3>")
            if files_:
                h.append('<div class="cases">' + "".join(
                    f'<img src="{png_data_uri(f, as_jpeg=True)}" alt="{esc(_GROUPS[group][0])} example">'
                    for f in files_) + "</div>")

    h.append("<h2>Demo images</h2>")
    if demo_rows:
        h.append("<table><thead><tr><th>image</th><th>caption, base model</th><th>caption, fine-tuned</th>"
                 "<th>question</th><th>answer, base model</th><th>answer, fine-tuned</th></tr></thead><tbody>")
        for row in demo_rows:
            h.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
                thumbs.cell(row["image_path"]), esc(row["baseline_caption"]),
                esc(row["finetuned_caption"]), esc(row["question"]), esc(row["baseline_answer"]),
                esc(row["finetuned_answer"]))) + "</tr>")
        h.append("</tbody></table>")
    demo = result["demo"]
    for who, present in (("base model", demo["baseline_exists"]), ("fine-tuned", demo["finetuned_exists"])):
        if not present:
            path = files["demo_baseline"] if who == "base model" else files["demo_finetuned"]
            hint = "python create_baseline.py" if who == "base model" else "the demo run with the adapter"
            h.append(f'<p class="muted">{esc(path)} not found ({esc(hint)}); the {who} column is empty.</p>')

    h.append(f"<h2>Every {'compared ' if comparing else ''}question ({len(pairs)})</h2>")
    h.append('<div class="filters">')
    if comparing:
        oc = result["outcomes"]
        for key, label, n in (("all", "all", len(pairs)), ("better", "improved", oc["better"]),
                              ("worse", "worsened", oc["worse"]), ("same", "unchanged", oc["same"])):
            checked = " checked" if key == "all" else ""
            h.append(f'<input type="radio" name="filter" id="f-{key}"{checked}>'
                     f'<label for="f-{key}">{label} ({n})</label>')
    h.append('<table class="questions"><thead><tr><th class=num>#</th><th>image</th><th>question</th>'
             "<th>ground truth</th><th>baseline answer</th>" + ("<th>fine-tuned answer</th><th>change</th>"
                                                                 if comparing else "") + "</tr></thead><tbody>")
    for p in pairs:
        cls = p["outcome"] or "baseline"
        cells = [f'<td class="num">{esc(p["question_id"])}</td>', f"<td>{thumbs.cell(p['image_path'])}</td>",
                 f'<td>{esc(p["question"])}<br><span class="muted">{esc(p["answer_type"])} · '
                 f'{esc(p["question_type"])}</span></td>', f'<td>{esc(gt_summary(p["gt_answers"], 10))}</td>',
                 f'<td>{esc(p["baseline_answer"])}{score_badge(p["baseline_vqa"])}</td>']
        if comparing:
            delta = p["finetuned_vqa"] - p["baseline_vqa"]
            cells += [f'<td>{esc(p["finetuned_answer"])}{score_badge(p["finetuned_vqa"])}</td>',
                      f'<td class="o">{esc(p["outcome"])} {delta:+.2f}</td>']
        h.append(f'<tr class="{cls}" data-qid="{esc(p["question_id"])}">' + "".join(cells) + "</tr>")
    h.append("</tbody></table></div>")
    b = result["bootstrap"]
    h.append(f'<p class="muted">Scores: official VQA accuracy (src/vqa_eval.py), recomputed from the answers. '
             f'Intervals: {b["confidence"]:.0%} paired percentile bootstrap over questions, {b["n_resamples"]} '
             f'resamples, seed {b["seed"]}. Written by compare_baseline_finetuned.py.</p>')
    h.append("</body>\n</html>\n")
    h[h.index("THUMBNAIL-STYLE")] = f"<style>\n{thumbs.css()}\n</style>"
    return "\n".join(h)


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    config = apply_overrides(globals())
    started = time.perf_counter()
    default_report = "assets/comparisons" if Path(OUTPUT_DIR) == Path("outputs") else str(Path(OUTPUT_DIR) / "comparisons")
    output_dir, report_dir = Path(OUTPUT_DIR), Path(REPORT_DIR or default_report)
    base_path, ft_path = output_dir / BASELINE_FILE, output_dir / FINETUNED_FILE
    demo_base_path, demo_ft_path = output_dir / DEMO_BASELINE_FILE, output_dir / DEMO_FINETUNED_FILE
    for name in ("CASES_PER_GROUP", "BOOTSTRAP_RESAMPLES", "THUMB_SIZE"):
        if globals()[name] < 1:
            raise UserError(f"--{name.lower()} must be at least 1, got {globals()[name]}")

    if not base_path.exists():
        raise UserError(f"baseline results not found: {base_path}; create them with `python create_vqav2_baseline.py` "
                        f"(or point --output_dir= at the folder holding {BASELINE_FILE})")
    base_rows = read_jsonl(base_path, allow_torn_tail=True)
    if not base_rows:
        raise UserError(f"{base_path} has no rows; rerun `python create_vqav2_baseline.py`")
    base_by_id = index_by_question_id(base_rows, str(base_path))
    warns: list[str] = []
    settings = {"baseline": settings_of(base_rows, base_path, warns), "finetuned": None}
    comparing = ft_path.exists()
    partial = False
    stored = {}

    if comparing:
        ft_rows = read_jsonl(ft_path, allow_torn_tail=True)
        if not ft_rows:
            raise UserError(f"{ft_path} has no rows; rerun `python evaluate_vqav2_finetuned.py`")
        ft_by_id = index_by_question_id(ft_rows, str(ft_path))
        cov = coverage(base_rows, ft_rows)
        if cov["only_baseline"] or cov["only_finetuned"]:
            if not ALLOW_PARTIAL:
                raise UserError(
                    f"the files cover different questions: {base_path} has {cov['baseline_questions']}, {ft_path} has "
                    f"{cov['finetuned_questions']}, {cov['common']} in common ({cov['only_baseline']} only in baseline, "
                    f"{cov['only_finetuned']} only in fine-tuned); rerun `python evaluate_vqav2_finetuned.py` on the "
                    f"baseline's questions, or pass --allow_partial=True to compare the {cov['common']} in common")
            partial = True
        cmp = compare_rows(base_rows, ft_rows, n_resamples=BOOTSTRAP_RESAMPLES, seed=SEED)
        if cmp["mismatched"]["n"]:
            ids = ", ".join(map(str, cmp["mismatched"]["question_ids"][:5]))
            raise UserError(f"{cmp['mismatched']['n']} question ids have a different question or ground truth in "
                            f"{base_path} and {ft_path} (e.g. {ids}): the files come from different question sets")
        if cmp["n"] == 0:
            raise UserError(f"no question can be compared: {cov['common']} ids in common, all of them error rows "
                            f"in one of the files")
        settings["finetuned"] = settings_of(ft_rows, ft_path, warns)
        check_same_setup(settings["baseline"], settings["finetuned"], warns)
        pairs = cmp["pairs"]
        stored = {"baseline": count_stored_mismatches(pairs, base_by_id, "baseline"),
                  "finetuned": count_stored_mismatches(pairs, ft_by_id, "finetuned")}
        result_core = {k: cmp[k] for k in ("n", "coverage", "errors", "baseline", "finetuned", "change", "outcomes")}
    else:
        pairs = baseline_only_pairs(base_rows)
        if not pairs:
            raise UserError(f"{base_path}: every row is an error row; nothing to report")
        scored = score_rows([{"answer": p["baseline_answer"], "gt_answers": p["gt_answers"],
                              "answer_type": p["answer_type"]} for p in pairs])
        n_err = sum(not is_scorable(r) for r in base_rows)
        result_core = {
            "n": len(pairs), "coverage": {**coverage(base_rows, []), "common": 0},
            "errors": {"baseline": n_err, "finetuned": None, "excluded": n_err},
            "baseline": {k: scored[k] for k in ("vqa_accuracy", "exact_match", "n", "per_answer_type")},
            "finetuned": None, "change": None, "outcomes": None}
        stored = {"baseline": count_stored_mismatches(pairs, base_by_id, "baseline"), "finetuned": None}
    for who, n in stored.items():
        if n:
            warns.append(f"{n} {who} rows store a VQA accuracy / exact match that differs from src/vqa_eval.py; "
                         f"the recomputed scores are used")

    demo_base = read_demo(demo_base_path, warns)
    demo_ft = read_demo(demo_ft_path, warns)
    demo_rows = []
    for key in list(demo_base or {}) + [k for k in (demo_ft or {}) if k not in (demo_base or {})]:
        b, f = (demo_base or {}).get(key, {}), (demo_ft or {}).get(key, {})
        demo_rows.append({"image_path": b.get("image_path", f.get("image_path")),
                          "question": b.get("question", f.get("question")),
                          "baseline_caption": demo_text(b, "caption"), "finetuned_caption": demo_text(f, "caption"),
                          "baseline_answer": demo_text(b, "answer"), "finetuned_answer": demo_text(f, "answer")})

    n_cases = CASES_PER_GROUP
    cases = select_cases(pairs, comparing, n_cases, SEED)
    lengths = {"baseline": length_stats([p["baseline_answer"] for p in pairs]),
               "finetuned": length_stats([p["finetuned_answer"] for p in pairs]) if comparing else None}
    result = {
        "mode": "comparison" if comparing else "baseline_only",
        "partial": partial,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "files": {"baseline": str(base_path), "finetuned": str(ft_path), "finetuned_exists": comparing,
                  "demo_baseline": str(demo_base_path), "demo_finetuned": str(demo_ft_path)},
        "settings": settings,
        **result_core,
        "answer_length": lengths,
        "bootstrap": {"method": "paired percentile bootstrap over questions", "confidence": 0.95,
                      "n_resamples": BOOTSTRAP_RESAMPLES, "seed": SEED},
        "cases": {g: [p["question_id"] for p in ps] for g, ps in cases.items()},
        "cases_per_group": n_cases,
        "demo": {"baseline_exists": demo_base is not None, "finetuned_exists": demo_ft is not None,
                 "rows": demo_rows},
        "stored_score_mismatches": stored,
        "warnings": warns,
    }

    # pictures
    report_dir.mkdir(parents=True, exist_ok=True)
    cases_dir = report_dir / "cases"
    if cases_dir.is_dir():  # remove the examples of an earlier run; only files this script names
        for old in cases_dir.glob("case_*.png"):
            old.unlink()
    cases_dir.mkdir(exist_ok=True)
    plt = setup_matplotlib()
    cache = ImageCache()
    charts: dict[str, Path] = {}
    charts["accuracy"] = report_dir / "accuracy.png"
    accuracy_chart(plt, result["baseline"], result["finetuned"], result["change"], charts["accuracy"])
    charts["answer_length"] = report_dir / "answer_length.png"
    length_chart(plt, lengths, charts["answer_length"])
    if demo_rows:
        charts["demo_images"] = report_dir / "demo_images.png"
        demo_chart(plt, demo_rows, cache, charts["demo_images"])
    case_files: dict[str, list[Path]] = {}
    for group, ps in cases.items():
        case_files[group] = []
        for i, p in enumerate(ps, 1):
            out = cases_dir / f"case_{group}_{i}_q{p['question_id']}.png"
            draw_case(plt, p, group, cache, out)
            case_files[group].append(out)
    if any(case_files.values()):
        charts["contact_sheet"] = report_dir / "contact_sheet.png"
        contact_sheet(case_files, charts["contact_sheet"])

    result["artefacts"] = {
        "summary": "summary.txt", "report": "report.html", "config": "config.json",
        **{name: path.name for name, path in charts.items()},
        "cases": [str(f.relative_to(report_dir)) for fs in case_files.values() for f in fs],
    }
    written = {"summary.txt", "comparison.json", "report.html", "config.json"} | {p.name for p in charts.values()}
    for name in _ARTEFACTS:
        if name not in written and (report_dir / name).is_file():
            (report_dir / name).unlink()

    summary = summary_text(result)
    atomic_write_text(report_dir / "summary.txt", summary)
    write_json(report_dir / "comparison.json", result)
    atomic_write_text(report_dir / "report.html",
                      report_html(result, pairs, demo_rows, charts, case_files, cache, THUMB_SIZE, MAX_THUMBNAILS))
    write_config(config, report_dir / "config.json")
    print(summary, end="")
    print(f"\nwrote {report_dir}/: summary.txt, comparison.json, report.html, {len(charts)} charts, "
          f"{sum(map(len, case_files.values()))} example images ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    run_main(main)
