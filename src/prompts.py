"""The one prompt registry and the decoding presets every script uses (tables in prompts.json), each declaring
the model families it suits ("auto" = the family's own), and the published zero-shot numbers. Sources: docs/notes.md."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UserError
from .files import read_json

_REGISTRY = read_json(Path(__file__).with_name("prompts.json"), "prompt registry")
PROMPTS = _REGISTRY["prompts"]
# the model families (src/family.py) each prompt was written for; a prompt not listed suits every family
PROMPT_FAMILIES = _REGISTRY["prompt_families"]
# how each prompt's question is processed before it is put in: "lavis" (LAVIS's blip_question) or "raw"
QUESTION_PROCESSING = _REGISTRY["question_processing"]
# generate() settings; "max_prompt_tokens" cuts the prompt (LAVIS's max_txt_len)
DECODING = _REGISTRY["decoding"]
# LAVIS's OPT-only and Flan-T5-only settings; the others suit both families
DECODING_FAMILIES = _REGISTRY["decoding_families"]
# the published numbers' setting: all 214,354 questions of VQAv2 val2014
PAPER_SETTING = _REGISTRY["paper_setting"]
# zero-shot VQAv2 val accuracy published per (checkpoint, prompt), with the decoding it was measured with
PUBLISHED = {(model, prompt): {**entry, **PAPER_SETTING}
             for model, entries in _REGISTRY["published"].items() for prompt, entry in entries.items()}
DEFAULT_VQA_PROMPT = "vqa_opt"  # what "auto" (src/family.py) is for the default model, Salesforce/blip2-opt-2.7b
DEFAULT_VQA_DECODING = "vqa_beam5"
DEFAULT_CAPTION_DECODING = "caption_beam5"
_LAVIS_STRIP = re.compile(r'([.!\"()*#:;~])')
_LAVIS_MAX_WORDS = 50


def get_prompt(name: str) -> str:
    if name not in PROMPTS:
        raise UserError(f"unknown prompt {name!r}; known prompts: {', '.join(PROMPTS)}")
    return PROMPTS[name]


def get_decoding(name: str) -> dict:
    return dict(DECODING[name])  # preset names are checked before any work (src/preflight.py)


def format_prompt(name: str, question: str | None = None) -> str:
    """Prompt `name` with `question` put in, processed as QUESTION_PROCESSING says ("lavis": LAVIS's
    BlipQuestionProcessor.pre_question, exactly)."""
    template = get_prompt(name)
    if question and QUESTION_PROCESSING.get(name) == "lavis":
        question = " ".join(_LAVIS_STRIP.sub("", question.lower()).rstrip(" ").split(" ")[:_LAVIS_MAX_WORDS])
    return template.format(question) if "{}" in template else template


def first_line(text: str) -> str:
    """The model's continuation cut at the first newline (OPT's end token), surrounding white space removed.
    (A Flan-T5 answer ends on </s>, which decoding drops; it holds no newline either.)"""
    return text.split("\n", 1)[0].strip()


def generation_record(prompt_name: str, decoding_name: str) -> dict:
    """What every output row records about how its text was produced."""
    return {"prompt": prompt_name, "prompt_template": get_prompt(prompt_name),
            "question_processing": QUESTION_PROCESSING.get(prompt_name, "raw"),
            "decoding": {"preset": decoding_name, **get_decoding(decoding_name)}}


def check_question(question: str) -> str:
    """A question must have text; returns it stripped."""
    q = (question or "").strip()
    if not q:
        raise UserError("the question is empty; type a question, e.g. --question=\"What is in the image?\"")
    return q
