"""Every picture the project draws: the training loss curve, the comparison charts and the example cases,
labelled through src.i18n and drawn with a CJK fallback font for Chinese (docs/details.md)."""

import contextlib
import functools
import importlib.util
import math
import sys
import warnings
from pathlib import Path
from typing import Callable

from .errors import UserError
from .formatting import clip, group_title, gt_summary, type_order, wrap
from .i18n import texts

# fonts with Chinese glyphs, most wanted first (Linux, Windows, macOS names as matplotlib sees them)
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", "SimHei", "Heiti SC", "Arial Unicode MS",
             "Noto Serif CJK SC")
PIP_CJK_FONT = ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf")  # (package, file in it): Noto Sans CJK SC, SIL OFL
NO_CJK_WARNING = ("warning: no CJK font found: Chinese text in the charts will show as boxes; "
                  "`pip install -r requirements.txt` brings one (the mplfonts package)")
_CASE_IMAGE_SIZE = 300  # longest side of the picture inside a case PNG
_GROUP_COLOURS = {"improved": "#2e7d32", "worsened": "#c62828", "unchanged": "#546e7a", "correct": "#2e7d32",
                  "wrong": "#c62828", "disagree": "#6a1b9a"}
_BASE_COLOUR, _FT_COLOUR = "#90a4ae", "#1e88e5"
_RUN_COLOURS = (_FT_COLOUR, "#fb8c00", "#43a047", "#8e24aa", "#6d4c41", "#00acc1")  # fine-tuned runs, in order
_warned = []  # the no-CJK warning is printed once per process


def cjk_fonts() -> list[str]:
    """The CJK_FONTS matplotlib can use, in that order: the system's, then the one mplfonts ships."""
    from matplotlib import font_manager

    fonts = font_manager.fontManager

    def known() -> list[str]:
        names = {f.name for f in fonts.ttflist}
        return [name for name in CJK_FONTS if name in names]

    if not known():  # matplotlib's cached font list misses fonts installed after it was built: add new files
        cached = {f.fname for f in fonts.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in cached:
                with contextlib.suppress(OSError, RuntimeError):  # a file FreeType cannot read: not a font for us
                    fonts.addfont(path)
    if not known() and (spec := importlib.util.find_spec(PIP_CJK_FONT[0])) and spec.origin:
        shipped = Path(spec.origin).parent / PIP_CJK_FONT[1]
        if shipped.is_file() and str(shipped) not in {f.fname for f in fonts.ttflist}:
            fonts.addfont(str(shipped))
    return known()


def setup_matplotlib():
    """pyplot on the Agg backend, DejaVu Sans for Latin and a CJK font behind it; warns once when there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cjk = cjk_fonts()
    if not cjk and not _warned:
        print(NO_CJK_WARNING, file=sys.stderr, flush=True)
        _warned.append(True)
    # the warning above says it once; matplotlib would repeat it for every missing glyph
    warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
    # Latin from DejaVu, the rest falls back; questions and answers are text: "$5" stays "$5"
    plt.rcParams.update({"font.family": ["DejaVu Sans", *cjk[:1]], "savefig.dpi": 100, "text.parse_math": False})
    return plt


def _save(plt, fig, out: Path) -> None:
    fig.savefig(out)
    plt.close(fig)


def _run_colour(i: int) -> str:
    return _RUN_COLOURS[i % len(_RUN_COLOURS)]


# --- training ------------------------------------------------------------------------------------

def plot_loss(rows: list[dict], path: Path, title: str, lang: str = "zh") -> None:
    """loss_curve.png of a training run: the loss per step and its moving average; below it the held-out
    accuracy (overall and per answer type) of the steps whose row has a "heldout" entry."""
    tr = texts(lang)
    plt = setup_matplotlib()
    points = [r for r in rows if isinstance(r.get("heldout"), dict)]
    fig, axes = plt.subplots(2 if points else 1, 1, figsize=(7, 6.5 if points else 4), squeeze=False,
                             sharex=True, layout="tight")
    ax = axes[0][0]
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    ax.plot(steps, losses, lw=1, alpha=0.4, label=tr("loss_per_step"))
    if len(losses) >= 10:
        k = max(5, len(losses) // 25)
        windows = [losses[max(0, i - k + 1):i + 1] for i in range(len(losses))]
        smooth = [sum(w) / len(w) for w in windows]
        ax.plot(steps, smooth, lw=2, label=tr("loss_moving_average", k=k))
    ax.set(xlabel="" if points else tr("loss_x"), ylabel=tr("loss_y"))
    ax.set_title(title, fontsize=9)
    if points:
        ax = axes[1][0]
        x = [r["step"] for r in points]
        ax.plot(x, [r["heldout"]["accuracy"] for r in points], "o-", lw=2, label=tr("overall"))
        for t in type_order({t: None for r in points for t in r["heldout"]["per_answer_type"]}):
            ax.plot(x, [r["heldout"]["per_answer_type"].get(t, math.nan) for r in points], ".--", lw=1, label=t)
        last = points[-1]["heldout"]
        ax.set_title(tr("heldout_title", n=last["questions"], decoding=last["decoding"]), fontsize=9)
        ax.set(xlabel=tr("loss_x"), ylabel=tr("heldout_y"))
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


# --- pictures of the questions -------------------------------------------------------------------

def image_cache(resolve: Callable[[str | None], Path | None]) -> Callable:
    """cache(image_path): each picture opened and shrunk once, None when missing or unreadable (drawn as a
    placeholder); `resolve` turns a row's image_path (relative to the repository) into a file path."""
    from PIL import Image

    from .images import load_image

    @functools.cache
    def small(path: str | None):
        resolved, img = resolve(path), None
        with contextlib.suppress(UserError):  # missing or unreadable: None
            if resolved is not None:
                img = load_image(resolved)
                img.thumbnail((_CASE_IMAGE_SIZE, _CASE_IMAGE_SIZE), Image.Resampling.LANCZOS)
        return img

    return small


def draw_picture(canvas, bounds: list[float], cache: Callable, path: str | None, tr) -> None:
    """The picture at `path`, or a grey box naming it, at `bounds` (x, y, width, height) in `canvas`'s data units."""
    img, ax = cache(path), canvas.inset_axes(bounds, transform=canvas.transData)
    if img is None:
        ax.set(facecolor="#bdbdbd", xticks=[], yticks=[])
        ax.text(0.5, 0.5, tr("image_not_found") + "\n" + wrap(path or tr("no_path"), 28, 4), ha="center",
                va="center", fontsize=8, color="#424242", transform=ax.transAxes)
    else:
        ax.imshow(img)
        ax.axis("off")


def draw_case(plt, pair: dict, group: str, cache: Callable, out: Path, tr) -> None:
    """One example: picture, question, ground truth, and each model's answer with its score (and raw text, when
    the answer processing changed it); a pair of several fine-tuned runs carries them in "runs"."""
    runs = [("finetuned", pair)] if "runs" not in pair else [(r["label"], r) for r in pair["runs"]]
    answers = [(tr(who) if key == who else who, row[f"{key}_answer"], row[f"{key}_vqa"], row.get(f"{key}_raw_answer"))
               for who, row, key in (("baseline", pair, "baseline"), *((w, r, "finetuned") for w, r in runs))
               if row[f"{key}_answer"] is not None]
    height = 2.6 + 0.52 * max(0, len(answers) - 2)
    # one frameless axes over the figure places everything; y: the 2.6-inch picture is 0 to 1, answers go below
    ax = plt.figure(figsize=(7.2, height)).add_axes((0, 0, 1, 1), xlim=(0, 1), ylim=(1 - height / 2.6, 1),
                                                    frame_on=False, xticks=[], yticks=[])
    draw_picture(ax, [0.01, 0.04, 0.33, 0.92], cache, pair["image_path"], tr)
    ax.text(0.37, 0.9, tr("case_header", group=group_title(group, tr).upper(), qid=pair["question_id"],
                          answer_type=pair["answer_type"]),
            fontsize=10, fontweight="bold", color=_GROUP_COLOURS.get(group, "#546e7a"))
    ax.text(0.37, 0.8, tr("case_question", question=wrap(pair["question"], 52, 2)), fontsize=10, va="top")
    ax.text(0.37, 0.56, clip(tr("case_gt", answers=gt_summary(pair["gt_answers"])), 70), fontsize=9, color="#37474f",
            va="top")
    for i, (who, answer, score, raw) in enumerate(answers):
        raw = raw if raw != answer else None
        y = 0.36 - 0.2 * i
        ax.text(0.37, y, f"{clip(who, 16)}:", fontsize=9, fontweight="bold", va="center")
        ax.text(0.52, y + (0.03 if raw else 0), clip(answer, 40), fontsize=10, va="center")
        if raw:
            ax.text(0.52, y - 0.06, clip(tr("case_raw", raw=raw), 48), fontsize=7, va="center", color="#607d8b")
        ax.text(0.985, y, f"VQA {score:.2f}", fontsize=9, va="center", ha="right", color="white", fontweight="bold",
                bbox={"boxstyle": "round,pad=0.3", "edgecolor": "none",
                      "facecolor": "#2e7d32" if score >= 1.0 else "#c62828" if score <= 0.0 else "#ef6c00"})
    _save(plt, ax.figure, out)


def contact_sheet(case_files: dict[str, list[Path]], out: Path, width: int = 1800) -> None:
    """The case PNGs (at least one) side by side: one column per group, one row per example."""
    from PIL import Image

    tiles = [[Image.open(f).convert("RGB") for f in column] for column in case_files.values()]
    tw, th = next(c for c in tiles if c)[0].size
    gap = 8
    sheet = Image.new("RGB", (len(tiles) * (tw + gap) - gap, max(map(len, tiles)) * (th + gap) - gap), "white")
    for ci, column in enumerate(tiles):
        for ri, tile in enumerate(column):
            sheet.paste(tile, (ci * (tw + gap), ri * (th + gap)))
    if sheet.width > width:
        sheet = sheet.resize((width, round(sheet.height * width / sheet.width)), Image.Resampling.LANCZOS)
    sheet.save(out, optimize=True)


# --- charts of the numbers -----------------------------------------------------------------------

def _tidy(ax, title: str, xlabel: str = "", ylabel: str = "", legend: bool = True, **legend_options) -> None:
    """The look every chart of numbers shares: small title and legend, no frame on the top and right."""
    ax.set_title(title, fontsize=10)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if legend:
        ax.legend(fontsize=8, frameon=False, **legend_options)
    ax.spines[["top", "right"]].set_visible(False)


def _grouped_bars(ax, heights: list[list[float]], names: list[str], tick_labels: list[str]):
    """The baseline's bars (heights[0]) and each run's beside them in every group, 0.8 wide together."""
    colours = [_BASE_COLOUR, *map(_run_colour, range(len(names) - 1))]
    return ax.grouped_bar(heights, tick_labels=tick_labels, labels=names, colors=colours, group_spacing=len(names) / 4)


def _change_panel(ax, groups, labels, points, tr) -> None:
    """Each change with its interval, the points (label, change, metric, colour) side by side per group."""
    x = list(range(len(groups)))
    for k, (label, change, metric, colour) in enumerate(points):
        offset = 0.24 * (k - (len(points) - 1) / 2)
        cs = [change[metric]] + [change["per_answer_type"].get(g, {}).get(metric) for g in groups[1:]]
        for xi, c in zip(x, cs):
            if c is not None:
                ax.errorbar(xi + offset, c["diff"], yerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]], fmt="o",
                            color=colour, capsize=3, markersize=5, label=label if xi == 0 else None)
    ax.axhline(0, color="#616161", linewidth=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    _tidy(ax, tr("chart_change_title", unit=tr(f"chart_unit_{points[0][1]['clusters']['unit']}")))


def accuracy_chart(plt, base: dict, runs: list[dict], out: Path, tr) -> None:
    """accuracy.png: VQA accuracy and exact match of the baseline and each fine-tuned run (label, finetuned,
    change), overall and per answer type, and the change with its interval (one run: both metrics; several: VQA)."""
    groups = [None, *type_order(base["per_answer_type"])]
    labels = [f"{tr('overall') if g is None else g}\n(n={base['n'] if g is None else base['per_answer_type'][g]['n']})"
              for g in groups]
    numbers, names = [base, *(r["finetuned"] for r in runs)], [tr("baseline"), *(r["label"] for r in runs)]
    if len(runs) == 1:
        points = [(tr(metric), runs[0]["change"], metric, colour)
                  for metric, colour in (("vqa_accuracy", _FT_COLOUR), ("exact_match", "#8e24aa"))]
    else:
        points = [(r["label"], r["change"], "vqa_accuracy", _run_colour(i)) for i, r in enumerate(runs)]
    panels = 3 if runs else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 4.0), layout="tight")
    for ax, metric, title in zip(axes, ("vqa_accuracy", "exact_match"), ("chart_accuracy_title", "chart_em_title")):
        heights = [[m[metric]] + [m["per_answer_type"].get(g, {}).get(metric, math.nan) for g in groups[1:]]
                   for m in numbers]
        for bars in _grouped_bars(ax, heights, names, labels).bar_containers:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.tick_params("x", labelsize=8)
        ax.set_ylim(0, 109)
        _tidy(ax, tr(title), loc="upper left", ncols=2)
    if panels == 3:
        _change_panel(axes[2], groups, labels, points, tr)
    _save(plt, fig, out)


def length_chart(plt, series: list[tuple[str, dict]], out: Path, tr) -> None:
    """answer_length.png: histogram of words per answer, the baseline's first, then each run's (who, stats)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4), layout="tight")
    _grouped_bars(ax, [list(stats["histogram"].values()) for _, stats in series],
                  [tr("chart_length_legend", who=who, mean=f"{stats['mean_words']:.1f}") for who, stats in series],
                  list(series[0][1]["histogram"]))
    _tidy(ax, tr("chart_length_title_both" if len(series) > 1 else "chart_length_title"), tr("chart_length_x"),
          tr("chart_length_y"))
    _save(plt, fig, out)


def heldout_chart(plt, curves: list[tuple[str, list[dict]]], out: Path, tr, per_type: bool = False) -> None:
    """heldout_curve.png: each run's held-out VQA accuracy by optimizer step (train_log.jsonl's "heldout"
    rows), one line per run; `per_type` adds a panel per answer type."""
    types = type_order({t for _, points in curves for p in points for t in p.get("per_answer_type") or {}})
    panels = [None, *(types if per_type else [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 + 3.2 * (len(panels) - 1), 3.6), squeeze=False,
                             layout="tight")
    for ax, t in zip(axes[0], panels):
        for i, (who, points) in enumerate(curves):
            xy = [(p["step"], p["accuracy"] if t is None else (p.get("per_answer_type") or {}).get(t)) for p in points]
            xy = [(x, y) for x, y in xy if y is not None]
            if xy:
                ax.plot(*zip(*xy), marker="o", markersize=3, color=_run_colour(i), label=who)
        ax.grid(alpha=0.3)
        _tidy(ax, tr("chart_heldout_title") if t is None else t, tr("chart_heldout_x"), tr("chart_heldout_y"),
              legend=t is None)
    _save(plt, fig, out)


def demo_chart(plt, demo_rows: list[dict], cache: Callable, out: Path, tr) -> None:
    """demo_images.png: the demo pictures with captions and answers before -> after."""
    n = len(demo_rows)
    ax = plt.figure(figsize=(10, 1.25 * n + 0.5)).add_axes((0, 0, 1, 1), xlim=(0, 1), ylim=(0, n + 0.4),
                                                          frame_on=False, xticks=[], yticks=[])  # y: 1.25-inch rows
    ax.text(0.01, n + 0.2, tr("chart_demo_title"), fontsize=11, fontweight="bold", va="center")
    for y0, row in zip(range(n - 1, -1, -1), demo_rows):
        draw_picture(ax, [0.01, y0 + 0.06, 0.11, 0.88], cache, row["image_path"], tr)
        lines = [(tr("chart_caption"), row["baseline_caption"], row["finetuned_caption"]),
                 (tr("case_question", question=row["question"]), row["baseline_answer"], row["finetuned_answer"])]
        for y, (what, before, after) in zip((y0 + 0.68, y0 + 0.28), lines):
            ax.text(0.14, y, wrap(what, 30, 2), fontsize=8, fontweight="bold", va="center")
            ax.text(0.35, y, wrap(before if before is not None else "—", 55, 2), fontsize=8, va="center",
                    color="#455a64")
            ax.text(0.67, y, "→ " + wrap(after if after is not None else tr("chart_no_ft_row"), 55, 2),
                    fontsize=8, va="center", color="#0d47a1")
    _save(plt, ax.figure, out)
