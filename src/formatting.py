"""The one set of formatters behind summary.txt, report.html, the demo's comparison tab and the console, so a
number reads the same in each; they read a comparison result (src.compare.compare_rows, comparison.json)."""

import json
import re
import textwrap
import unicodedata
from collections import Counter
from typing import Callable

ANSWER_TYPE_ORDER = ["yes/no", "number", "other"]  # VQAv2's answer types, in the order every table shows them
GROUP_KEYS = ("improved", "worsened", "unchanged", "correct", "wrong", "disagree")  # example-case groups


def type_order(types) -> list[str]:
    return [t for t in ANSWER_TYPE_ORDER if t in types] + sorted(t for t in types if t not in ANSWER_TYPE_ORDER)


_UNDRAWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_text(text) -> str:
    """`text` on one line with control characters and unpaired surrogates as "�": they stop matplotlib's
    text layout and UTF-8 output."""
    return _UNDRAWABLE.sub("\ufffd", "" if text is None else str(text).replace("\n", " "))


def clip(text, n: int) -> str:
    text = safe_text(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def wrap(text, width: int, max_lines: int = 3) -> str:
    lines = textwrap.wrap(clip(text, width * max_lines), width) or [""]
    return "\n".join(lines[:max_lines])


def gt_summary(gt_answers: list[str], n: int = 4) -> str:
    """'orange ×8, red' : the most common annotator answers with their counts."""
    counts = Counter(a.strip().lower() for a in gt_answers)
    shown = ", ".join(f"{a} ×{c}" if c > 1 else a for a, c in counts.most_common(n))
    return shown + (" …" if len(counts) > n else "")


def group_title(group: str, tr: Callable[..., str]) -> str:
    return tr(f"group_{group}") if group in GROUP_KEYS else safe_text(group)


def runs_of(result: dict, tr: Callable[..., str]) -> list[dict]:
    """The fine-tuned runs of a result, each with label, file, settings and numbers: a several-run report's
    "runs", the one run of a two-run report, or none."""
    if is_multirun(result):
        return result["runs"]
    if result.get("finetuned") is None:
        return []
    return [{**result, "label": tr("finetuned"), "file": (result.get("files") or {}).get("finetuned"),
             "settings": (result.get("settings") or {}).get("finetuned"),
             "answer_length": (result.get("answer_length") or {}).get("finetuned")}]


def is_multirun(result: dict) -> bool:
    """A report of several fine-tuned runs side by side (compare_baseline_finetuned.py --finetuned_files=)."""
    return result.get("mode") == "multirun"


def score_table(result: dict, tr: Callable[..., str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the headline table per answer type: each run's metrics with their change [95% CI]; one
    run adds exact match and better / worse / same, several runs each accuracy's interval."""
    multi, base, runs = is_multirun(result), result["baseline"], runs_of(result, tr)
    metrics = ["vqa_accuracy"] if multi else ["vqa_accuracy", "exact_match"]
    header = [tr("answer_type"), tr("n")]
    for m in metrics:
        header.append(f"{tr(m)} {tr('baseline')}")
        for r in runs:
            header += [f"{tr(m)} {r['label']}", f"{r['label']} {tr('change_ci')}" if multi else tr("change_ci")]
    header += [tr("better_worse_same")] if runs and not multi else []

    def part(numbers: dict, t) -> dict:
        return numbers if t is None else numbers["per_answer_type"].get(t, {})

    def cell(numbers: dict, interval: dict | None, metric: str, t) -> str:  # a percentage, its interval if any
        value = part(numbers, t).get(metric)
        i = interval and (interval["overall"] if t is None else interval["per_answer_type"].get(t))
        return ("–" if value is None else f"{value:.2f}") + (f" [{i['low']:.2f}, {i['high']:.2f}]" if i else "")

    def change(c: dict | None) -> str:  # '+1.23 [-0.40, +2.90]': the change in points and its 95% interval
        return f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]" if c else "–"

    rows = []
    for t in [None, *type_order(base["per_answer_type"])]:
        row = [tr("overall") if t is None else str(t), str(part(base, t)["n"])]
        for m in metrics:
            row.append(cell(base, result.get("baseline_interval"), m, t))
            for r in runs:
                row += [cell(r["finetuned"], r.get("interval"), m, t), change(part(r["change"], t).get(m))]
        if runs and not multi:
            o = part(result["outcomes"], t)
            row.append(f"{o.get('better', '–')} / {o.get('worse', '–')} / {o.get('same', '–')}")
        rows.append(row)
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Fixed-width text lines; the first column left-aligned, numbers right-aligned."""
    def display_width(text: str) -> int:  # columns in a terminal: CJK characters take two
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    widths = [max(display_width(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        pads = [" " * (w - display_width(cell)) for cell, w in zip(cells, widths)]
        return "  ".join([cells[0] + pads[0], *(pad + cell for pad, cell in zip(pads[1:], cells[1:]))]).rstrip()

    return [line(header), *(line(r) for r in rows)]


def processing_line(result: dict, tr: Callable[..., str]) -> str | None:
    """How many answers the answer processing changed, or None when no compared row records a raw answer."""
    proc = result.get("answer_processing") or {}
    base, ft = proc.get("baseline"), proc.get("finetuned")
    if not base or not base.get("with_raw") and not (ft or {}).get("with_raw"):
        return None
    if ft is None:
        return tr("processing", who=tr("baseline"), n=base["changed"], total=base["n"])
    return tr("processing_both", base=base["changed"], ft=ft["changed"], total=base["n"])


def length_line(result: dict, tr: Callable[..., str]) -> str | None:
    lengths = result.get("answer_length") or {}
    if not lengths.get("baseline"):
        return None
    return tr("mean_length", base=f"{lengths['baseline']['mean_words']:.2f}") + (
        tr("mean_length_ft", ft=f"{lengths['finetuned']['mean_words']:.2f}") if lengths.get("finetuned") else "")


def bootstrap_unit(clusters: dict | None, n: int, tr: Callable[..., str]) -> str:
    """What the interval's bootstrap resamples; an older comparison.json without clusters resampled questions."""
    clusters = clusters or {"unit": "question", "n": n}
    return tr(f"unit_{clusters['unit']}", **clusters)


def interval_line(result: dict, tr: Callable[..., str]) -> str:
    b = result["bootstrap"]
    return tr("interval", **b, unit=bootstrap_unit(b.get("clusters"), result["n"], tr))


def detail_lines(result: dict, tr: Callable[..., str]) -> list[str]:
    """The lines under the headline table in summary.txt and the demo: outcomes, processing, length, interval."""
    if is_multirun(result):
        outcomes = [tr("run_outcomes", label=r["label"], line=tr("outcomes", **r["outcomes"]))
                    for r in result["runs"]]
        no_curve = [tr("heldout_missing", label=r["label"], log=r["heldout"]["log"]) if r["heldout"]["log"] else
                    tr("heldout_no_adapter", label=r["label"]) for r in result["runs"] if not r["heldout"]["points"]]
        return [tr("disagreements", n=result["disagreements"]["n"], total=result["n"]), *outcomes,
                tr("accuracy_interval"), interval_line(result, tr), *no_curve]  # a run without a held-out curve
    comparing = result.get("finetuned") is not None and result.get("outcomes")
    lines = [tr("outcomes", **result["outcomes"]) if comparing else None, processing_line(result, tr),
             length_line(result, tr), interval_line(result, tr) if comparing and result.get("bootstrap") else None]
    return [line for line in lines if line]


def reference_lines(ref: dict, tr: Callable[..., str], with_interval: bool = False) -> list[str]:
    """A zero-shot run beside its published number (src.evaluation.zero_shot_reference): what differs, the
    published setting's command, and a warning when it lands far below."""
    def shown(value):
        return " or ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    i, unit = ref["interval"], bootstrap_unit(ref["interval"]["resampled"], 0, tr)
    lines = [tr("zero_shot_interval", **i, accuracy=ref["run_accuracy"], unit=unit)] if with_interval else []
    lines.append(tr("published_line", **ref))
    if ref["differs"]:
        differs = "; ".join(tr("published_vs", setting=key, run=shown(v["run"]), published=shown(v["published"]))
                            for key, v in ref["differs"].items())
        command = (f"python create_vqav2_baseline.py --model_id={ref['model_id']} --quantization=none --max_samples=0 "
                   f"--vqa_prompt={ref['prompt']} --vqa_decoding={ref['decoding']} --output_dir=outputs/paper_setting")
        lines.append(tr("published_differs", differs=differs, command=command))
    if ref["far_below"]:
        lines.append(tr("warning", text=tr("far_below", edge=f"{ref['warn_below']:.1f}")))
    return lines


def file_lines(result: dict, tr: Callable[..., str], baseline_key: str, run_key: str) -> list[str]:
    """A line per result file (its model, adapter, prompt, decoding), each run's training data under its own."""
    multi, s_base = is_multirun(result), result["settings"]["baseline"]
    out = []
    for who, path, s, training, key in [(tr("baseline"), result["files"]["baseline"], s_base, None, baseline_key), *(
            (r["label"], r["file"], r["settings"], r.get("training_data"), run_key) for r in runs_of(result, tr))]:
        out.append(tr(key, who=who, path=path, model=s["model_id"], adapter=s["adapter"] or tr("none"),
                      prompt=s["prompt"], decoding=json.dumps(s["decoding"])))
        out += [(f"{who}: " if multi else "") + training["line"]] if training else []
    return out


def summary_text(result: dict, tr: Callable[..., str]) -> str:
    """summary.txt: the files and settings, the headline table, outcomes, processing, warnings."""
    runs, err = runs_of(result, tr), result["errors"]
    out = [tr("title"), "", *file_lines(result, tr, "file_line", "file_line"),
           None if runs else tr("missing_ft", path=result["files"]["finetuned"]),
           tr("decoding", decoding=json.dumps(result["settings"]["baseline"]["decoding"])), "",
           tr("partial", **result["coverage"]) if result["partial"] else None,
           tr("questions_compared" if runs else "questions_scored", n=result["n"])
           + tr("excluded", **err, ft_errors=tr("excluded_ft", n=err["finetuned"]) if runs else ""),
           "", *text_table(*score_table(result, tr)), "", *detail_lines(result, tr),
           *(reference_lines(result["published"], tr, with_interval=True) if result.get("published") else []),
           *(tr("warning", text=w) for w in result["warnings"])]
    return "\n".join(line for line in out if line is not None) + "\n"


def console_comparison(cmp: dict, tr: Callable[..., str]) -> str:
    """What evaluate_vqav2_finetuned.py prints after its run: compare_rows' headline table and the lines under it."""
    return "\n".join([f"===== {tr('console_heading', n=cmp['n'])} =====", *text_table(*score_table(cmp, tr)),
                      tr("console_interval", unit=bootstrap_unit(cmp["clusters"], cmp["n"], tr)),
                      *detail_lines(cmp, tr)])
