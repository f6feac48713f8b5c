"""The one prompt registry and the decoding presets every script uses, each declaring the model families it
suits ("auto" = the family's own), and the published zero-shot numbers. Sources: docs/notes.md."""

import re

from .errors import UserError

PROMPTS = {
    "vqa_opt": "Question: {} Answer:",
    "vqa_opt_raw": "Question: {} Answer:",
    "vqa_opt_lavis": "Question: {} Short answer:",
    "vqa_t5": "Question: {} Short answer:",
    "caption": "",
}
# the model families (src/family.py) each prompt was written for; a prompt not listed suits every family
PROMPT_FAMILIES = {"vqa_opt": ("opt",), "vqa_opt_raw": ("opt",), "vqa_opt_lavis": ("opt",), "vqa_t5": ("t5",)}
# how each prompt's question is processed before it is put in: "lavis" (LAVIS's blip_question) or "raw"
QUESTION_PROCESSING = {"vqa_opt": "lavis", "vqa_opt_raw": "raw", "vqa_opt_lavis": "lavis", "vqa_t5": "lavis",
                       "caption": "raw"}

_LAVIS_STRIP = re.compile(r'([.!\"()*#:;~])')
_LAVIS_MAX_WORDS = 50


DECODING = {
    # BLIP-2 paper zero-shot VQA decoding
    "vqa_beam5": {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False},
    "vqa_beam5_t5": {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 10, "min_length": 1, "do_sample": False},
    # LAVIS's released zero-shot OPT config (predict_answers defaults, max_txt_len 32)
    "vqa_lavis": {"num_beams": 5, "length_penalty": 0.0, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False,
                  "max_prompt_tokens": 32},
    "greedy": {"num_beams": 1, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False},
    "caption_beam5": {"num_beams": 5, "length_penalty": 1.0, "max_new_tokens": 30, "min_new_tokens": 1, "do_sample": False},
}
# LAVIS's OPT-only and Flan-T5-only settings; the others suit both families
DECODING_FAMILIES = {"vqa_lavis": ("opt",), "vqa_beam5_t5": ("t5",)}
# the published numbers' setting: all 214,354 questions of VQAv2 val2014
PAPER_SETTING = {"quantization": "none", "dataset": ("vqav2", "vqav2_hub"), "questions": 214_354}
# zero-shot VQAv2 val accuracy published per (checkpoint, prompt), with the decoding it was measured with
PUBLISHED = {(model, prompt): {"accuracy": accuracy, "decoding": decoding, "source": source, **PAPER_SETTING}
             for model, prompt, accuracy, decoding, source in (
    ("Salesforce/blip2-opt-2.7b", "vqa_opt", 53.5, "vqa_beam5", "BLIP-2 paper, Table 2"),
    ("Salesforce/blip2-opt-2.7b", "vqa_opt_lavis", 51.88, "vqa_lavis", "LAVIS vqav2_zeroshot_opt_eval.yaml"),
    ("Salesforce/blip2-opt-6.7b", "vqa_opt", 54.3, "vqa_beam5", "BLIP-2 paper, Table 2"),
    ("Salesforce/blip2-flan-t5-xl", "vqa_t5", 63.1, "vqa_beam5_t5",
     "BLIP-2 paper, Table 2; LAVIS vqav2_zeroshot_flant5xl_eval.yaml: 63.13"),
    ("Salesforce/blip2-flan-t5-xxl", "vqa_t5", 65.2, "vqa_beam5_t5", "BLIP-2 paper, Table 2"))}

DEFAULT_VQA_PROMPT = "vqa_opt"  # what "auto" (src/family.py) is for the default model, Salesforce/blip2-opt-2.7b
DEFAULT_VQA_DECODING = "vqa_beam5"
DEFAULT_CAPTION_DECODING = "caption_beam5"


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
