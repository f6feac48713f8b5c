"""The Gradio demo of inference_demo.py: ask BLIP-2 about a picture, and browse the comparison report. With a
LoRA adapter loaded, one model in memory answers twice, adapter off (zero-shot) and on (fine-tuned)."""

import json
import os
import re
import string
import threading
import time
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from .evaluation import EVALAI_PHASES
from .errors import UserError
from .formatting import detail_lines, group_title, is_multirun, score_table
from .i18n import texts
from .images import MAX_IMAGE_PIXELS, list_images, load_image
from .prompts import DEFAULT_CAPTION_DECODING, DEFAULT_VQA_DECODING, DEFAULT_VQA_PROMPT

COMPARE_COMMAND = "python compare_baseline_finetuned.py"
DEMO_CSS = Path(__file__).resolve().parent / "templates" / "demo.css"  # Gradio 6 takes it in launch(), not Blocks()
MAX_QUESTION_CHARS = 500  # VQAv2 questions are ~6 words; this keeps the prompt far below OPT's 2048 positions
# the pictures the compare script may write, in the order the tab shows them, with their i18n title keys
_CHARTS = [("accuracy.png", "charts_accuracy"), ("answer_length.png", "charts_length"),
           ("heldout_curve.png", "charts_heldout"), ("demo_images.png", "charts_demo"),
           ("contact_sheet.png", "charts_contact")]
_CASE_NAME = re.compile(r"case_(?P<group>[a-z]+)_(?P<i>\d+)_q(?P<qid>.+)\.png$")
# src.images' refusals, by the start of their message, as i18n keys (the message itself is English)
_IMAGE_PROBLEMS = {"not an image": "problem_not_image", "image too large": "problem_pixels",
                   "cannot decode image": "problem_corrupt", "image file is empty": "problem_empty",
                   "image not found": "problem_missing"}


# --- asking -------------------------------------------------------------------------------------

def open_upload(path: str | None, max_upload_mb: float, max_pixels: int = MAX_IMAGE_PIXELS, lang: str = "zh"):
    """The uploaded file as an RGB PIL image, or UserError naming the file by its own name, not the server's
    temporary path (too many pixels is read from the header: a decompression bomb is never decoded)."""
    tr = texts(lang)
    if not path:
        raise UserError(tr("upload_first"))
    name = Path(path).name
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    if size > max_upload_mb * 1024 * 1024:
        raise UserError(tr("too_large", name=name, mb=f"{size / 2**20:.1f}", limit=f"{max_upload_mb:g}"))
    try:
        return load_image(path, max_pixels=max_pixels, exif_orientation=True)  # an upload: upright
    except UserError as e:
        detail = str(e).replace(str(path), name)
        key = next((k for start, k in _IMAGE_PROBLEMS.items() if detail.startswith(start)), None)
        raise UserError(detail if lang == "en" or key is None else f"{tr(key, name=name)}（{detail}）") from None


def make_answer_fn(model, processor, *, adapter_available: bool, vqa_prompt: str, vqa_decoding: str,
                   caption_prompt: str, caption_decoding: str, max_upload_mb: float,
                   max_pixels: int = MAX_IMAGE_PIXELS, lang: str = "zh"):
    """fn(image path or Image event payload, question) -> (caption, answer_base, caption_finetuned, answer_finetuned,
    status); problems the user can fix (bad image or question, GPU out of memory) come back as the status."""
    import torch

    from .inference import caption_and_answer

    tr = texts(lang)
    lock = threading.Lock()  # even past the queue: disable_adapter() switches the shared model while it is held
    settings = dict(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, caption_prompt=caption_prompt,
                    caption_decoding=caption_decoding, batch_size=1)

    def answer(payload, question: str | None):
        problems, image = [], None
        try:
            image = open_upload(payload_path(payload), max_upload_mb, max_pixels, lang)
        except UserError as e:
            problems.append(str(e))
        question = (question or "").strip()
        if not question:
            problems.append(tr("question_empty"))
        elif len(question) > MAX_QUESTION_CHARS:
            problems.append(tr("question_too_long", n=len(question), limit=MAX_QUESTION_CHARS))
        if problems:
            return "", "", "", "", tr("cannot_answer", problems=" ".join(problems))
        started = time.perf_counter()
        with lock:
            try:
                with model.disable_adapter() if adapter_available else nullcontext():
                    base = caption_and_answer(model, processor, [image], question, **settings)[0]
                tuned = caption_and_answer(model, processor, [image], question, **settings)[0] \
                    if adapter_available else {"caption": "", "answer": ""}
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                return "", "", "", "", tr("cannot_answer", problems=tr("gpu_oom"))
        seconds = f"{time.perf_counter() - started:.1f}"
        status = tr("answered_both" if adapter_available else "answered_base", seconds=seconds)
        return base["caption"], base["answer"], tuned["caption"], tuned["answer"], status

    return answer


# --- the comparison tab -------------------------------------------------------------------------

# HTML characters as entities, other ASCII punctuation backslash-escaped, line breaks and tabs as spaces
_MD_ESCAPES = str.maketrans({**{ch: "\\" + ch for ch in string.punctuation}, "&": "&amp;", "<": "&lt;", ">": "&gt;",
                             '"': "&quot;", "'": "&#39;", "\r": " ", "\n": " ", "\t": " "})


def md_text(value) -> str:
    """Text from a result file, safe inside Markdown: no tag, link, image or emphasis can form."""
    return ("" if value is None else str(value)).translate(_MD_ESCAPES)


def comparison_markdown(result: dict, comparisons_dir: str | Path, lang: str = "zh") -> str:
    """comparison.json as Markdown, but for its score table (a gr.Dataframe); every value read from the file
    goes through md_text, as it may hold any text (a model answer)."""
    tr = texts(lang)
    if result.get("mode") == "no_answers":  # test-dev / test: nothing to compare; which file to submit to EvalAI
        runs = result.get("runs") or [{**(result.get("files") or {}), "split": result.get("split")}]
        return "\n\n".join(tr("cmp_no_answers", run=md_text(Path(str(f.get("run"))).name),
                                split=md_text(f.get("split")), evalai=md_text(f.get("evalai")),
                                phase=md_text(EVALAI_PHASES.get(f.get("split"), "?"))) for f in runs)
    settings = result.get("settings") or {}
    s_base, s_ft = settings.get("baseline") or {}, settings.get("finetuned") or {}
    multi = is_multirun(result)
    where = md_text(f"{comparisons_dir}/")
    out = [tr("cmp_heading"),
           tr("cmp_source", path=where + "comparison.json", when=md_text(result.get("generated", "?")),
              command=COMPARE_COMMAND, report=where + "report.html"), ""]
    if result.get("partial"):
        out.append(tr("cmp_partial", common=md_text(result["coverage"]["common"])))
    compared = dict(n=md_text(result["n"]), model=md_text(s_base.get("model_id")), prompt=md_text(s_base.get("prompt")))
    if multi:  # several fine-tuned runs: each one's name and adapter
        runs = "; ".join(f"{md_text(r['label'])} ({md_text(r['settings'].get('adapter'))})" for r in result["runs"])
        out += [tr("cmp_runs", runs=runs, **compared), ""]
    else:
        out += [tr("cmp_compared", adapter=md_text(s_ft.get("adapter") or tr("none")), **compared), ""]
    if result.get("finetuned") is None and not multi:
        out += [tr("cmp_missing_ft", command=COMPARE_COMMAND), ""]
    out += [md_text(line) + "  " for line in detail_lines(result, tr)]
    for w in result.get("warnings") or []:
        out += ["", tr("warning_md", text=md_text(w))]
    return "\n".join(out)


def _case_caption(path: Path, tr) -> str:
    m = _CASE_NAME.search(path.name)
    return tr("case_caption", group=group_title(m["group"], tr), i=m["i"], qid=m["qid"]) if m else path.stem


def comparison_view(comparisons_dir: str | Path, lang: str = "zh"):
    """(markdown, score table or None, charts, cases, report.html or None) of the comparison tab, read fresh."""
    tr = texts(lang)
    d = Path(comparisons_dir)
    path = d / "comparison.json"
    if not path.is_file():
        return (tr("cmp_none_heading") + "\n\n" + tr("cmp_none", path=md_text(path), command=COMPARE_COMMAND),
                None, [], [], None)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        text = comparison_markdown(result, comparisons_dir, lang)
        table = None if result.get("mode") == "no_answers" else score_table(result, tr)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return (tr("cmp_broken", path=md_text(path), error=md_text(f"{type(e).__name__}: {e}"),
                   command=COMPARE_COMMAND), None, [], [], None)
    charts = [(str(d / name), tr(title)) for name, title in _CHARTS if (d / name).is_file()]
    listed = (result.get("artefacts") or {}).get("cases")
    case_files = [d / c for c in listed] if listed else sorted((d / "cases").glob("case_*.png"))
    inside = [p for p in case_files if p.is_file() and p.resolve().is_relative_to(d.resolve())]
    cases = [(str(p), _case_caption(p, tr)) for p in inside]
    report = d / "report.html"
    return text, table, charts, cases, (str(report) if report.is_file() else None)


# --- the app ------------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    """Everything build_demo needs besides the model; inference_demo.py fills it from its constants."""
    comparisons_dir: str = "assets/comparisons"  # what compare_baseline_finetuned.py wrote
    examples_dir: str = "baseline_images"  # pictures offered as clickable thumbnails
    max_examples: int = 24  # at most this many of them (a dataset folder may hold thousands)
    default_question: str = "What is in the image?"
    vqa_prompt: str = DEFAULT_VQA_PROMPT
    vqa_decoding: str = DEFAULT_VQA_DECODING
    caption_prompt: str = "caption"
    caption_decoding: str = DEFAULT_CAPTION_DECODING
    max_upload_mb: float = 10
    max_queue: int = 20  # requests waiting for the model; more are refused
    model_label: str = ""  # shown in the header
    adapter_label: str = ""
    overlap_images: int = 0  # example pictures the adapter trained on (--allow_train_overlap=True): said in the header
    lang: str = "zh"  # "zh" or "en": every label and message of the page
    config: dict | None = None  # shown under "Settings of this demo"


def payload_path(payload) -> str | None:
    """The file's path from an Image event's raw payload (preprocess=False: src.images checks it; docs/details.md)."""
    return payload.get("path") if isinstance(payload, dict) else payload


def _ask_tab(gr, tr, opts: DemoOptions, answer, adapter_available: bool) -> None:
    """Tab "Ask": picture and question in, both models' caption and answer out."""
    def on_upload(payload):  # a bad file is reported right after its upload, before asking
        path = payload_path(payload)
        if not path:  # cleared (by the user, or below after a refusal): keep the message
            return gr.skip(), gr.skip()
        try:
            image = open_upload(path, opts.max_upload_mb, lang=opts.lang)
        except UserError as e:
            return None, tr("cannot_use", problem=e)  # a refused file is taken off the page
        return gr.skip(), tr("image_ok", name=Path(path).name, w=image.width, h=image.height)

    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label=tr("image_label", mb=f"{opts.max_upload_mb:g}"), type="filepath",
                             sources=["upload", "clipboard", "webcam"], elem_id="image", height=320,
                             buttons=["fullscreen"])
        with gr.Column(scale=1):
            question = gr.Textbox(label=tr("question_label"), value=opts.default_question, lines=1, max_lines=3,
                                  max_length=MAX_QUESTION_CHARS, elem_id="question",
                                  placeholder=tr("question_placeholder"))
            ask = gr.Button(tr("ask"), variant="primary", elem_id="ask")
            status = gr.Markdown(tr("ready"), elem_id="status")
    with gr.Row(equal_height=True):
        with gr.Column(variant="panel", elem_id="base_column"):
            gr.Markdown(tr("base_heading"))
            caption = gr.Textbox(label=tr("caption_label"), interactive=False, elem_id="caption")
            answer_base = gr.Textbox(label=tr("answer_label"), interactive=False, elem_id="answer_base")
        with gr.Column(variant="panel", visible=adapter_available, elem_id="finetuned_column"):
            gr.Markdown(tr("ft_heading"))
            caption_ft = gr.Textbox(label=tr("caption_label"), interactive=False, elem_id="caption_finetuned")
            answer_ft = gr.Textbox(label=tr("answer_label"), interactive=False, elem_id="answer_finetuned")
    with suppress(UserError):  # no examples folder (or an empty one): the demo works without examples
        if pictures := list_images(opts.examples_dir)[:opts.max_examples]:  # one input: a grid of thumbnails
            gr.Examples(examples=[[str(p)] for p in pictures], inputs=[image], examples_per_page=12,
                        label=tr("examples_label", folder=opts.examples_dir), elem_id="examples")
    if opts.config:
        with gr.Accordion(tr("settings_label"), open=False):
            gr.Code(json.dumps(opts.config, indent=2, ensure_ascii=False, default=str), language="json")
    outputs = [caption, answer_base, caption_ft, answer_ft, status]
    ask.click(answer, [image, question], outputs, api_name="ask", concurrency_limit=1, concurrency_id="model",
              preprocess=False)
    question.submit(answer, [image, question], outputs, api_visibility="private", concurrency_limit=1,
                    concurrency_id="model", preprocess=False)
    # decoding a picture of up to max_pixels takes memory: two at a time, apart from the model queue
    image.change(on_upload, image, [image, status], api_visibility="private", concurrency_limit=2,
                 concurrency_id="preview", show_progress="hidden", preprocess=False)


def _comparison_tab(gr, tr, opts: DemoOptions, demo) -> None:
    """Tab "Comparison": what compare_baseline_finetuned.py wrote, read when the page loads and on Reload."""
    def load_comparison():
        text, table, chart_files, case_files, report_file = comparison_view(opts.comparisons_dir, opts.lang)
        found = {Path(path).name: path for path, _ in chart_files}
        frame = (gr.Dataframe(value=table[1], headers=table[0], visible=True) if table
                 else gr.Dataframe(value=None, visible=False))
        return (text, frame, *(gr.Image(value=found.get(name), visible=name in found) for name, _ in _CHARTS),
                gr.Gallery(value=case_files, visible=bool(case_files)),
                gr.File(value=report_file, visible=report_file is not None))

    with gr.Row():
        reload = gr.Button(tr("reload"), elem_id="comparison_reload", size="sm", scale=0, min_width=120)
        gr.Markdown(tr("comparison_intro", command=COMPARE_COMMAND, folder=md_text(opts.comparisons_dir)))
    outputs = [gr.Markdown(elem_id="comparison_summary"),
               gr.Dataframe(interactive=False, visible=False, wrap=True, elem_id="comparison_table"),
               *(gr.Image(label=tr(title), interactive=False, visible=False, buttons=["fullscreen", "download"],
                          elem_id="chart_" + name.removesuffix(".png"), elem_classes="chart")
                 for name, title in _CHARTS),
               gr.Gallery(label=tr("cases_label"), columns=2, height="auto", object_fit="contain", visible=False,
                          elem_id="comparison_cases"),
               gr.File(label=tr("report_label"), interactive=False, visible=False, elem_id="comparison_report")]
    gr.on([demo.load, reload.click], load_comparison, None, outputs, api_name="comparison", concurrency_limit=None)


def build_demo(model, processor, *, adapter_available: bool, options: DemoOptions | None = None):
    """The Blocks app, tabs "Ask" and "Comparison": model calls one at a time behind a queue of `max_queue`, file
    reads beside them. Call `.launch(css_paths=DEMO_CSS, ...)` on it."""
    import gradio as gr

    opts = options or DemoOptions()
    tr = texts(opts.lang)
    answer = make_answer_fn(model, processor, adapter_available=adapter_available, vqa_prompt=opts.vqa_prompt,
                            vqa_decoding=opts.vqa_decoding, caption_prompt=opts.caption_prompt,
                            caption_decoding=opts.caption_decoding, max_upload_mb=opts.max_upload_mb, lang=opts.lang)
    where = tr("demo_mode_where", path=md_text(opts.adapter_label)) if opts.adapter_label else ""
    mode = tr("demo_mode_adapter", adapter=md_text(opts.adapter_label)) if adapter_available else \
        tr("demo_mode_base", where=where)
    with gr.Blocks(title=tr("demo_title"), analytics_enabled=False) as demo:
        who = md_text(opts.model_label) if opts.model_label else "BLIP-2"
        overlap = tr("demo_overlap", images=opts.overlap_images) if opts.overlap_images else ""
        gr.Markdown(tr("demo_heading", who=who, mode=mode) + overlap, elem_id="header")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab(tr("tab_ask"), id="ask_tab", elem_id="ask_tab"):
                _ask_tab(gr, tr, opts, answer, adapter_available)
            with gr.Tab(tr("tab_comparison"), id="comparison_tab", elem_id="comparison_tab"):
                _comparison_tab(gr, tr, opts, demo)
    demo.queue(max_size=opts.max_queue, default_concurrency_limit=1)
    return demo

