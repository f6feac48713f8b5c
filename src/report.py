"""report.html of compare_baseline_finetuned.py, rendered from templates/report.html.j2 (Jinja2 escapes every
value). Every picture is inline, so the one file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Callable

from .charts import ImageCache, jpeg_data_uri
from .compare import group_members
from .formatting import (clip, detail_lines, group_title, gt_summary, interval_line, is_multirun, length_line,
                         processing_line, reference_lines, score_table, signed)
from .i18n import texts

TEMPLATES = Path(__file__).resolve().parent / "templates"


def png_data_uri(path: Path, as_jpeg: bool = False) -> str:
    """A picture as an inline data URI; photos-with-text (the examples) are smaller as JPEG."""
    from PIL import Image

    if as_jpeg:
        with Image.open(path) as img:
            return jpeg_data_uri(img, quality=85)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


class Thumbnails:
    """Each distinct picture embedded once, as a CSS class the table cells refer to; after `max_images`
    pictures, cells show the path."""

    def __init__(self, cache: ImageCache, size: int, max_images: int):
        self.cache, self.size, self.max_images = cache, size, max_images
        self.uris: dict = {}  # image path -> (class name, data URI) or None

    def cell(self, path: str | None) -> dict:
        if path not in self.uris:
            embedded = sum(v is not None for v in self.uris.values())
            uri = self.cache.thumbnail_data_uri(path, self.size) if embedded < self.max_images else None
            self.uris[path] = (f"t{embedded}", uri) if uri else None
        cls = self.uris[path][0] if self.uris[path] else None
        return {"cls": cls, "path": path, "label": clip(path, 80)}

    def rules(self) -> list[tuple[str, str]]:
        return [entry for entry in self.uris.values() if entry]


def _cards(result: dict, tr) -> list[tuple[str, str, str]]:
    if is_multirun(result):  # each run's accuracy and change, and how often the runs disagree
        return [(tr("card_questions"), str(result["n"]), tr("card_excluded", n=result["errors"]["excluded"])),
                *((r["label"], f"{result['baseline']['vqa_accuracy']:.2f} → {r['finetuned']['vqa_accuracy']:.2f}",
                   tr("card_change", **{k: signed(v) for k, v in r["change"]["vqa_accuracy"].items()}))
                  for r in result["runs"]),
                (tr("card_disagree"), str(result["disagreements"]["n"]), tr("card_disagree_sub"))]
    base, ft = result["baseline"], result["finetuned"]
    cards = [(tr("card_questions" if ft else "card_questions_baseline"), str(result["n"]),
              tr("card_excluded", n=result["errors"]["excluded"]))]
    for metric in ("vqa_accuracy", "exact_match"):
        if ft:
            c = result["change"][metric]
            cards.append((tr(metric), f"{base[metric]:.2f} → {ft[metric]:.2f}",
                          tr("card_change", diff=signed(c["diff"]), low=signed(c["low"]), high=signed(c["high"]))))
        else:
            cards.append((f"{tr(metric)} ({tr('baseline')})", f"{base[metric]:.2f}", tr("card_percent")))
    if ft:
        oc = result["outcomes"]
        cards.append((tr("better_worse_same"), f"{oc['better']} / {oc['worse']} / {oc['same']}",
                      tr("card_outcomes_sub")))
    proc = result.get("answer_processing") or {}
    if processing_line(result, tr):
        counts = " / ".join(str(proc[who]["changed"]) for who in ("baseline", "finetuned") if proc.get(who))
        cards.append((tr("card_processing"), counts, tr("card_processing_sub")))
    return cards


def _case_groups(result: dict, pairs: list[dict], case_files: dict[str, list[Path]], cases_shown: int, tr) -> list:
    totals = {"disagree": result["disagreements"]["n"]} if is_multirun(result) else \
        {g: len(ps) for g, ps in group_members(pairs, result["finetuned"] is not None).items()}
    groups = []
    for key, files in case_files.items():
        uris = [png_data_uri(f, as_jpeg=True) for f in files]
        groups.append({"key": key, "title": group_title(key, tr), "drawn": len(files), "total": totals.get(key, 0),
                       "shown": uris[:cases_shown], "more": uris[cases_shown:]})
    return groups


def _question_rows(pairs: list[dict], thumbs: Thumbnails, tr) -> list[dict]:
    rows = []
    for p in pairs:
        delta = None if p.get("finetuned_vqa") is None else signed(p["finetuned_vqa"] - p["baseline_vqa"])
        rows.append({**p, "thumb": thumbs.cell(p["image_path"]), "gt": gt_summary(p["gt_answers"], 10),
                     "delta": delta, "outcome_label": tr(f"outcome_{p['outcome']}") if p["outcome"] else ""})
    return rows


def _file_lines(result: dict, tr) -> list[str]:
    files, settings = result["files"], result["settings"]
    s_base, s_ft = settings["baseline"], settings.get("finetuned")
    lines = [tr("report_baseline_file", path=files["baseline"], model=s_base["model_id"], prompt=s_base["prompt"],
                decoding=json.dumps(s_base["decoding"]))]
    for r in result.get("runs") or []:
        lines += [tr("report_run_file", label=r["label"], path=r["file"], adapter=r["settings"]["adapter"])]
        lines += [f"{r['label']}: {r['training_data']['line']}"] if r.get("training_data") else []
    if s_ft:
        lines.append(tr("report_ft_file", path=files["finetuned"], adapter=s_ft["adapter"]))
        lines += [result["training_data"]["line"]] if result.get("training_data") else []
    return lines + (reference_lines(result["published"], tr, with_interval=True) if result.get("published") else [])


def _demo_missing(result: dict, tr) -> list[str]:
    demo, files = result["demo"], result["files"]
    out = []
    for who, present, path, hint in (
            ("demo_caption_base", demo["baseline_exists"], files["demo_baseline"], "demo_missing_base_hint"),
            ("demo_caption_ft", demo["finetuned_exists"], files["demo_finetuned"], "demo_missing_ft_hint")):
        if not present:
            out.append(tr("demo_missing", path=path, hint=tr(hint), who=tr(who)))
    return out


def report_html(result: dict, pairs: list[dict], demo_rows: list[dict], charts: dict[str, Path],
                case_files: dict[str, list[Path]], cache: ImageCache, *, thumb_size: int, max_thumbnails: int,
                cases_shown: int, lang: str) -> str:
    """The whole page as one string."""
    import jinja2

    tr: Callable[..., str] = texts(lang)
    multi = is_multirun(result)
    comparing = multi or result["finetuned"] is not None
    thumbs = Thumbnails(cache, thumb_size, max_thumbnails)
    header, rows = score_table(result, tr)
    oc = result.get("outcomes") or {}
    filters = [("all", tr("filter_all"), len(pairs))]
    if multi:
        filters.append(("disagree", tr("outcome_disagree"), result["disagreements"]["n"]))
    elif comparing:
        filters += [(k, tr(f"outcome_{k}"), oc[k]) for k in ("better", "worse", "same")]
    chart_alts = {"accuracy": tr("charts_accuracy"), "answer_length": tr("charts_length"),
                  "heldout_curve": tr("charts_heldout")}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=lambda v: "" if v is None else v)
    context = dict(
        tr=tr, lang=lang, result=result, comparing=comparing, multi=multi, thumb_size=thumb_size,
        file_lines=_file_lines(result, tr), cards=_cards(result, tr), table_header=header, table_rows=rows,
        # the interval line sits under the table whose brackets it explains
        notes=detail_lines(result, tr) if multi else
        [line for line in (interval_line(result, tr) if comparing else None, length_line(result, tr)) if line],
        charts=[(png_data_uri(charts[name]), alt) for name, alt in chart_alts.items() if name in charts],
        case_groups=_case_groups(result, pairs, case_files, cases_shown, tr) if any(case_files.values()) else [],
        demo_rows=[{**row, "thumb": thumbs.cell(row["image_path"])} for row in demo_rows],
        demo_missing=[] if multi else _demo_missing(result, tr), questions=_question_rows(pairs, thumbs, tr),
        filters=filters)
    context["thumb_rules"] = thumbs.rules()  # after every cell above has registered its picture
    return env.get_template("report.html.j2").render(**context)
