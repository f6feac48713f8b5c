"""The Gradio demo of inference_demo.py: ask BLIP-2 about a picture, and browse the comparison report.

`build_demo(model, processor, ...)` returns the Blocks app (queued, model calls serialised);
`inference_demo.py` loads the model and launches it, tests build it in-process too.

With a LoRA adapter loaded (`model` is a peft PeftModel) every question is answered twice by the
same weights in memory: once inside `model.disable_adapter()` (the zero-shot base model) and once
with the adapter on (the fine-tuned model), shown side by side.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from .errors import UserError
from .images import MAX_IMAGE_PIXELS, list_images, load_image
from .prompts import DEFAULT_CAPTION_DECODING, DEFAULT_VQA_DECODING, DEFAULT_VQA_PROMPT

COMPARE_COMMAND = "python compare_baseline_finetuned.py"
READY_MESSAGE = "Upload an image or click an example, then press Ask."
MAX_QUESTION_CHARS = 500  # VQAv2 questions are ~6 words; this keeps the prompt far below OPT's 2048 positions
_ANSWER_TYPE_ORDER = ["yes/no", "number", "other"]
# the pictures the compare script may write, in the order the tab shows them
_CHARTS = [("accuracy.png", "Accuracy before / after"), ("answer_length.png", "Answer length before / after"),
           ("demo_images.png", "The ten demo images, before / after"), ("contact_sheet.png", "All example cases")]
_CASE_NAME = re.compile(r"case_(?P<group>[a-z]+)_(?P<i>\d+)_q(?P<qid>.+)\.png$")
_GROUP_TITLES = {"improved": "improved", "worsened": "worsened", "unchanged": "unchanged",
                 "correct": "baseline right", "wrong": "baseline wrong"}


# --- asking -------------------------------------------------------------------------------------

def open_upload(path: str | None, max_upload_mb: float, max_pixels: int = MAX_IMAGE_PIXELS):
    """The uploaded file as an RGB PIL image, or UserError naming the file by its own name
    (not the server's temporary path) for: nothing uploaded, too many bytes, not an image,
    truncated, too many pixels."""
    if not path:
        raise UserError("Upload an image first (or click one of the examples).")
    name = Path(path).name
    if os.path.isfile(path):
        size = os.path.getsize(path)
        if size > max_upload_mb * 1024 * 1024:
            raise UserError(f"{name} is too large: {size / 2**20:.1f} MB (the limit is {max_upload_mb:g} MB); "
                            f"upload a smaller image.")
    try:
        return load_image(path, max_pixels=max_pixels)
    except UserError as e:
        raise UserError(str(e).replace(str(path), name)) from None


def empty_question_message() -> str:
    return 'The question is empty: type a question, e.g. "What is in the image?"'


def make_answer_fn(model, processor, *, adapter_available: bool, vqa_prompt: str, vqa_decoding: str,
                   caption_prompt: str, caption_decoding: str, max_upload_mb: float,
                   max_pixels: int = MAX_IMAGE_PIXELS):
    """fn(image_path, question) -> (caption, answer_base, caption_finetuned, answer_finetuned, status).

    Problems the user can fix (no or bad image, empty or overlong question, GPU out of memory) come
    back as the status text with the outputs left empty, never as an exception. A lock serialises
    generation even if a caller bypasses the queue: the adapter switch (disable_adapter) changes the
    shared model for as long as it is held."""
    import torch

    from .inference import caption_and_answer
    from .prompts import check_question

    if adapter_available and not hasattr(model, "disable_adapter"):
        raise ValueError("adapter_available=True needs a peft PeftModel (load_blip2(..., adapter=DIR))")
    lock = threading.Lock()
    settings = dict(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, caption_prompt=caption_prompt,
                    caption_decoding=caption_decoding, batch_size=1)

    def answer(image_path: str | None, question: str | None):
        problems = []
        image = None
        try:
            image = open_upload(image_path, max_upload_mb, max_pixels)
        except UserError as e:
            problems.append(str(e))
        if not (question or "").strip():
            problems.append(empty_question_message())
        elif len(question.strip()) > MAX_QUESTION_CHARS:
            problems.append(f"The question is too long ({len(question.strip())} characters, at most "
                            f"{MAX_QUESTION_CHARS}).")
        if problems:
            return "", "", "", "", "**Cannot answer:** " + " ".join(problems)
        question = check_question(question)
        started = time.perf_counter()
        with lock:
            try:
                with model.disable_adapter() if adapter_available else nullcontext():
                    base = caption_and_answer(model, processor, [image], question, **settings)[0]
                tuned = caption_and_answer(model, processor, [image], question, **settings)[0] \
                    if adapter_available else {"caption": "", "answer": ""}
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                return "", "", "", "", ("**Cannot answer:** the GPU ran out of memory (is another program using "
                                        "it?); try again, or restart the demo with --quantization=4bit.")
        took = time.perf_counter() - started
        who = "base model and fine-tuned (LoRA adapter on)" if adapter_available else "base model"
        status = f"Answered by the {who} in {took:.1f} s."
        return base["caption"], base["answer"], tuned["caption"], tuned["answer"], status

    return answer


def preview_upload(path: str | None, max_upload_mb: float, max_pixels: int = MAX_IMAGE_PIXELS):
    """(picture to show, status) right after an upload, so a bad file is reported before asking."""
    if not path:
        return None, READY_MESSAGE
    try:
        image = open_upload(path, max_upload_mb, max_pixels)
    except UserError as e:
        return None, f"**Cannot use this file:** {e}"
    image.thumbnail((1024, 1024))
    return image, f"Image {Path(path).name} ({image.width}x{image.height} shown). Type a question and press Ask."


def example_images(examples_dir: str | Path) -> list[Path]:
    try:
        return list_images(examples_dir)
    except UserError:  # no examples folder (or an empty one): the demo works without examples
        return []


# --- the comparison tab -------------------------------------------------------------------------

def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _pts(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _change(c: dict | None) -> str:
    if not c:
        return "–"
    return f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"


def comparison_markdown(result: dict, comparisons_dir: str | Path) -> str:
    """The numbers of comparison.json (written by compare_baseline_finetuned.py) as Markdown."""
    base, ft = result["baseline"], result.get("finetuned")
    change, outcomes = result.get("change"), result.get("outcomes")
    settings = result.get("settings") or {}
    s_base, s_ft = settings.get("baseline") or {}, settings.get("finetuned") or {}
    out = ["### BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned",
           f"From `{comparisons_dir}/comparison.json`, written {result.get('generated', '?')} by "
           f"`{COMPARE_COMMAND}`. Full report: `{comparisons_dir}/report.html`.", ""]
    if result.get("partial"):
        out.append(f"**Partial comparison:** only the {result['coverage']['common']} questions present in both "
                   f"files are compared.")
    out.append(f"**Questions compared: {result['n']}** (model `{_cell(s_base.get('model_id'))}`, prompt "
               f"`{_cell(s_base.get('prompt'))}`, adapter `{_cell(s_ft.get('adapter') or 'none')}`)")
    out.append("")
    types = [t for t in _ANSWER_TYPE_ORDER if t in base["per_answer_type"]] + \
        sorted(t for t in base["per_answer_type"] if t not in _ANSWER_TYPE_ORDER)
    if ft is None:
        out.append("Fine-tuned results are missing: run `python evaluate_vqav2_finetuned.py`, then "
                   f"`{COMPARE_COMMAND}` again. Baseline only:")
        out.append("")
        out.append("| metric | baseline |")
        out.append("|---|---:|")
        out.append(f"| VQA accuracy | {_pts(base['vqa_accuracy'])} |")
        out.append(f"| exact match | {_pts(base['exact_match'])} |")
        for t in types:
            m = base["per_answer_type"][t]
            out.append(f"| VQA accuracy, {_cell(t)} (n={m['n']}) | {_pts(m['vqa_accuracy'])} |")
    else:
        out.append("| metric | baseline | fine-tuned | change, points [95% CI] |")
        out.append("|---|---:|---:|---:|")
        for key, name in (("vqa_accuracy", "VQA accuracy"), ("exact_match", "exact match")):
            out.append(f"| {name} | {_pts(base[key])} | {_pts(ft[key])} | {_change(change[key])} |")
        for t in types:
            b, f = base["per_answer_type"][t], ft["per_answer_type"].get(t, {})
            c = change["per_answer_type"].get(t, {})
            out.append(f"| VQA accuracy, {_cell(t)} (n={b['n']}) | {_pts(b['vqa_accuracy'])} | "
                       f"{_pts(f.get('vqa_accuracy'))} | {_change(c.get('vqa_accuracy'))} |")
        out.append("")
        out.append(f"Per question: **better {outcomes['better']}**, worse {outcomes['worse']}, same "
                   f"{outcomes['same']}; the answer text changed on {outcomes['answer_changed']}.")
    lengths = result.get("answer_length") or {}
    if lengths.get("baseline"):
        line = f"Mean answer length: baseline {lengths['baseline']['mean_words']:.2f} words"
        if lengths.get("finetuned"):
            line += f", fine-tuned {lengths['finetuned']['mean_words']:.2f} words"
        out += ["", line + "."]
    for w in result.get("warnings") or []:
        out += ["", f"**Warning:** {_cell(w)}"]
    return "\n".join(out)


def _case_caption(path: Path) -> str:
    m = _CASE_NAME.search(path.name)
    if not m:
        return path.stem
    return f"{_GROUP_TITLES.get(m['group'], m['group'])} #{m['i']} (question {m['qid']})"


def comparison_view(comparisons_dir: str | Path):
    """(markdown, charts, cases, report.html or None) for the comparison tab, read fresh from disk."""
    d = Path(comparisons_dir)
    path = d / "comparison.json"
    if not path.is_file():
        return (f"### No comparison results yet\n\nThere is no `{path}`. Make it with\n\n"
                f"```\n{COMPARE_COMMAND}\n```\n\n(it compares `outputs/vqav2_baseline.jsonl` from "
                f"`python create_vqav2_baseline.py` with `outputs/vqav2_finetuned.jsonl` from "
                f"`python evaluate_vqav2_finetuned.py`), then press **Reload**.", [], [], None)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        text = comparison_markdown(result, comparisons_dir)
    except (ValueError, KeyError, TypeError) as e:
        return (f"### Cannot read `{path}`\n\n{type(e).__name__}: {_cell(e)}. Run `{COMPARE_COMMAND}` again "
                f"to rewrite it, then press **Reload**.", [], [], None)
    charts = [(str(d / name), title) for name, title in _CHARTS if (d / name).is_file()]
    listed = (result.get("artefacts") or {}).get("cases")
    case_files = [d / c for c in listed] if listed else sorted((d / "cases").glob("case_*.png"))
    cases = [(str(p), _case_caption(p)) for p in case_files if p.is_file()]
    report = d / "report.html"
    return text, charts, cases, (str(report) if report.is_file() else None)


# --- the app ------------------------------------------------------------------------------------

_CSS = """
#status {min-height: 1.5em}
#status p {margin: 0}
/* the case pictures are 720x260: wide cells instead of the gallery's square ones (cosmetic) */
#comparison_cases .thumbnail-item {aspect-ratio: 720 / 260}
#comparison_cases .grid-wrap {height: auto; max-height: none}
"""


def build_demo(model, processor, *, adapter_available: bool, comparisons_dir: str | Path,
               examples_dir: str | Path = "baseline_images", default_question: str = "What is in the image?",
               vqa_prompt: str = DEFAULT_VQA_PROMPT, vqa_decoding: str = DEFAULT_VQA_DECODING,
               caption_prompt: str = "caption", caption_decoding: str = DEFAULT_CAPTION_DECODING,
               max_upload_mb: float = 10,
               max_pixels: int = MAX_IMAGE_PIXELS, max_queue: int = 20, model_label: str = "",
               adapter_label: str = "", config: dict | None = None):
    """The Blocks app: tab "Ask" (upload, question, caption + answers) and tab "Comparison".

    Model calls (`api_name="ask"`) run one at a time (concurrency limit 1) behind a queue of at
    most `max_queue` waiting requests; the other events (preview, comparison reload) read files
    only and are not held up by generation. Call `.launch(css=demo_css(), ...)` on the result."""
    import gradio as gr

    answer = make_answer_fn(model, processor, adapter_available=adapter_available, vqa_prompt=vqa_prompt,
                            vqa_decoding=vqa_decoding, caption_prompt=caption_prompt,
                            caption_decoding=caption_decoding, max_upload_mb=max_upload_mb, max_pixels=max_pixels)

    def preview(path):
        return preview_upload(path, max_upload_mb, max_pixels)

    def load_comparison():
        text, chart_files, case_files, report_file = comparison_view(comparisons_dir)
        found = {Path(path).name: path for path, _ in chart_files}
        return (text, *(gr.Image(value=found.get(name), visible=name in found) for name, _ in _CHARTS),
                gr.Gallery(value=case_files, visible=bool(case_files)),
                gr.File(value=report_file, visible=report_file is not None))

    who = f"`{model_label}`" if model_label else "BLIP-2"
    if adapter_available:
        mode = (f"LoRA adapter `{adapter_label}` loaded: every question is answered by the base model (adapter "
                f"switched off) and by the fine-tuned model (adapter on), side by side.")
    else:
        where = f", expected in `{adapter_label}`" if adapter_label else ""
        mode = (f"No LoRA adapter loaded: only the base model answers "
                f"(train one with `python finetune_vqav2_lora.py`{where}).")

    with gr.Blocks(title="BLIP-2 zero-shot vs QLoRA fine-tuned", analytics_enabled=False) as demo:
        gr.Markdown(f"## BLIP-2 VQA demo\n{who} · {mode}", elem_id="header")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Ask", id="ask_tab", elem_id="ask_tab"):
                with gr.Row():
                    with gr.Column(scale=1):
                        # no file_types: gradio would refuse other files itself (a toast in the page, a
                        # traceback in the log); load_image's message is clearer and the same for the API
                        image = gr.File(label=f"Image (JPEG/PNG/…, at most {max_upload_mb:g} MB)", file_count="single",
                                        type="filepath", elem_id="image", height=120)
                        shown = gr.Image(label="Picture", interactive=False, elem_id="preview", height=280,
                                         buttons=["fullscreen"])
                    with gr.Column(scale=1):
                        question = gr.Textbox(label="Question", value=default_question, lines=1, max_lines=3,
                                              max_length=MAX_QUESTION_CHARS, elem_id="question",
                                              placeholder="Ask something about the picture")
                        ask = gr.Button("Ask", variant="primary", elem_id="ask")
                        status = gr.Markdown(READY_MESSAGE, elem_id="status")
                with gr.Row(equal_height=True):
                    with gr.Column(variant="panel", elem_id="base_column"):
                        gr.Markdown("#### Base model (zero-shot)")
                        caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                        answer_base = gr.Textbox(label="Answer", interactive=False, elem_id="answer_base")
                    with gr.Column(variant="panel", visible=adapter_available, elem_id="finetuned_column"):
                        gr.Markdown("#### Fine-tuned (LoRA adapter on)")
                        caption_ft = gr.Textbox(label="Caption", interactive=False, elem_id="caption_finetuned")
                        answer_ft = gr.Textbox(label="Answer", interactive=False, elem_id="answer_finetuned")
                pictures = example_images(examples_dir)
                if pictures:
                    gr.Examples(examples=[[str(p), default_question] for p in pictures], inputs=[image, question],
                                example_labels=[p.name for p in pictures], label=f"Examples ({examples_dir}/)",
                                elem_id="examples", examples_per_page=12)
                if config:
                    with gr.Accordion("Settings of this demo", open=False):
                        gr.Code(json.dumps(config, indent=2, ensure_ascii=False, default=str), language="json")
            with gr.Tab("Comparison", id="comparison_tab", elem_id="comparison_tab"):
                with gr.Row():
                    reload = gr.Button("Reload", elem_id="comparison_reload", size="sm", scale=0, min_width=120)
                    gr.Markdown(f"Shows what `{COMPARE_COMMAND}` wrote to `{comparisons_dir}/`.")
                summary = gr.Markdown(elem_id="comparison_summary")
                chart_images = {name: gr.Image(label=title, interactive=False, visible=False,
                                               buttons=["fullscreen", "download"],
                                               elem_id="chart_" + name.removesuffix(".png"), elem_classes="chart")
                                for name, title in _CHARTS}
                cases = gr.Gallery(label="Example cases (click to enlarge)", columns=2, height="auto",
                                   object_fit="contain", visible=False, elem_id="comparison_cases")
                report = gr.File(label="report.html (download, open in a browser)", interactive=False,
                                 visible=False, elem_id="comparison_report")

        outputs = [caption, answer_base, caption_ft, answer_ft, status]
        ask.click(answer, [image, question], outputs, api_name="ask", concurrency_limit=1, concurrency_id="model")
        question.submit(answer, [image, question], outputs, api_visibility="private", concurrency_limit=1,
                        concurrency_id="model")
        # decoding a picture of up to max_pixels takes memory: two at a time, apart from the model queue
        image.change(preview, image, [shown, status], api_visibility="private", concurrency_limit=2,
                     concurrency_id="preview", show_progress="hidden")
        comparison_outputs = [summary, *chart_images.values(), cases, report]
        demo.load(load_comparison, None, comparison_outputs, api_name="comparison", concurrency_limit=None)
        reload.click(load_comparison, None, comparison_outputs, api_visibility="private", concurrency_limit=None)
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def demo_css() -> str:
    """Gradio 6 takes css in launch(), not in Blocks()."""
    return _CSS
