"""The one prompt registry and the decoding presets every script uses.

BLIP-2's OPT models were evaluated zero-shot on VQAv2 with the prompt "Question: {} Answer:",
beam search of width 5, length penalty -1 and at most 10 new tokens (BLIP-2 paper, sec. 4.1;
LAVIS blip2_opt.predict_answers). Captions use an empty text prompt.

Reported zero-shot VQAv2 accuracy of blip2-opt-2.7b per prompt:
  vqa_opt        "Question: {} Answer:"        paper: 53.5 (val), 52.3 (test-dev)
  vqa_opt_lavis  "Question: {} Short answer:"  LAVIS's released zero-shot OPT config, its comment: 51.88 (val);
                 questions lower-cased and stripped of .!"()*#:; and ~ first (LAVIS BlipQuestionProcessor)
"""

from __future__ import annotations

import re

PROMPTS = {
    "vqa_opt": "Question: {} Answer:",
    "vqa_opt_lavis": "Question: {} Short answer:",
    "caption": "",
}

# prompts whose question is rewritten before it is put in (LAVIS's BlipQuestionProcessor for its VQA configs)
_LAVIS_STRIP = re.compile(r'([.!\"()*#:;~])')


def _lavis_question(question: str) -> str:
    return " ".join(_LAVIS_STRIP.sub("", question.lower()).rstrip(" ").split())


QUESTION_TRANSFORMS = {"vqa_opt_lavis": _lavis_question}

DECODING = {
    # BLIP-2 paper zero-shot VQA decoding
    "vqa_beam5": {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False},
    "greedy": {"num_beams": 1, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False},
    "caption_beam5": {"num_beams": 5, "length_penalty": 1.0, "max_new_tokens": 30, "min_new_tokens": 1, "do_sample": False},
}

DEFAULT_VQA_PROMPT = "vqa_opt"
DEFAULT_VQA_DECODING = "vqa_beam5"
DEFAULT_CAPTION_PROMPT = "caption"
DEFAULT_CAPTION_DECODING = "caption_beam5"


def get_prompt(name: str) -> str:
    from .errors import UserError

    if name not in PROMPTS:
        raise UserError(f"unknown prompt {name!r}; known prompts: {', '.join(PROMPTS)}")
    return PROMPTS[name]


def get_decoding(name: str) -> dict:
    from .errors import UserError

    if name not in DECODING:
        raise UserError(f"unknown decoding preset {name!r}; known presets: {', '.join(DECODING)}")
    return dict(DECODING[name])


def format_prompt(name: str, question: str | None = None) -> str:
    template = get_prompt(name)
    if "{}" not in template:
        return template
    transform = QUESTION_TRANSFORMS.get(name)
    return template.format(transform(question) if transform and question else question)


def first_line(text: str) -> str:
    """The model's continuation cut at the first newline (OPT's end token), surrounding white space removed."""
    return text.split("\n", 1)[0].strip()


def generation_record(prompt_name: str, decoding_name: str) -> dict:
    """What every output row records about how its text was produced."""
    return {
        "prompt": prompt_name,
        "prompt_template": get_prompt(prompt_name),
        **({"question_transform": "lavis"} if prompt_name in QUESTION_TRANSFORMS else {}),
        "decoding": {"preset": decoding_name, **get_decoding(decoding_name)},
    }


def check_question(question: str) -> str:
    """A question must have text; returns it stripped."""
    from .errors import UserError

    q = (question or "").strip()
    if not q:
        raise UserError("the question is empty; type a question, e.g. --question=\"What is in the image?\"")
    return q
