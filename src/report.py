"""report.html of compare_baseline_finetuned.py, rendered from templates/report.html.j2 (Jinja2 escapes every
value), every picture inline, so the one file can be mailed or opened offline."""

import base64
import io
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import jinja2

from .compare import group_members
from .formatting import (clip, detail_lines, file_lines, group_title, gt_summary, interval_line, is_multirun,
                         length_line, processing_line, reference_lines, runs_of, score_table)
from .i18n import texts

TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                               autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                               lstrip_blocks=True, finalize=lambda v: "" if v is None else v)


def data_uri(picture, quality: int = 0) -> str:
    """A picture as an inline data URI: a PNG file's bytes as they are, or a file or PIL image as JPEG at `quality`."""
    from PIL import Image

    if not quality:
        return "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode("ascii")
    buf = io.BytesIO()
    with Image.open(picture) if isinstance(picture, Path) else nullcontext(picture) as img:
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def report_html(result: dict, pairs: list[dict], demo_rows: list[dict], charts: dict[str, Path],
                case_files: dict[str, list[Path]], cache: Callable, *, thumb_size: int, max_thumbnails: int,
                cases_shown: int, lang: str) -> str:
    """The whole page as one string."""
    tr = texts(lang)
    runs = runs_of(result, tr)
    uris: dict = {}  # image path -> (class name, data URI) or None

    def thumb(path: str | None) -> dict:
        """Each distinct picture embedded once, as a CSS class the cells refer to; past `max_thumbnails`, the path."""
        if path not in uris:
            embedded = sum(v is not None for v in uris.values())
            small = cache(path) if embedded < max_thumbnails else None
            if small is not None:
                small = small.copy()
                small.thumbnail((thumb_size, thumb_size))
            uris[path] = None if small is None else (f"t{embedded}", data_uri(small, quality=75))
        return {"cls": uris[path] and uris[path][0], "path": path, "label": clip(path, 80)}

    header, rows = score_table(result, tr)
    totals = {g: len(ps) for g, ps in group_members(pairs).items()}
    context = dict(
        tr=tr, lang=lang, result=result, runs=runs, comparing=bool(runs), multi=is_multirun(result),
        thumb_size=thumb_size, table_header=header, table_rows=rows, gt_summary=gt_summary, detail_lines=detail_lines,
        interval_line=interval_line, length_line=length_line, processing_line=processing_line,
        file_lines=file_lines(result, tr, "report_baseline_file", "report_run_file") + (
            reference_lines(result["published"], tr, with_interval=True) if result.get("published") else []),
        charts=charts, data_uri=data_uri, cases_shown=cases_shown, case_groups=[  # JPEG: smaller
            {"key": key, "title": group_title(key, tr), "total": totals.get(key, 0),
             "uris": [data_uri(f, quality=85) for f in files]} for key, files in case_files.items()
        ] if any(case_files.values()) else [],
        demo_rows=[{**row, "thumb": thumb(row["image_path"])} for row in demo_rows],
        questions=[{**p, "thumb": thumb(p["image_path"])} for p in pairs])
    context["thumb_rules"] = [entry for entry in uris.values() if entry]  # after every cell has its picture
    return TEMPLATES.get_template("report.html.j2").render(**context)
