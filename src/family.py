"""The one model-family switch: what differs between BLIP-2 on OPT (decoder-only) and on Flan-T5
(encoder-decoder), read from the model's config, never its name. The differences in a table: docs/notes.md."""

import re
from dataclasses import dataclass
from typing import Sequence

from .errors import UserError


@dataclass(frozen=True)
class Family:
    name: str  # "opt" or "t5": what rows, adapters and prompts record
    title: str  # for messages
    decoder_only: bool
    padding_side: str
    lora_targets: tuple[str, ...]
    quantization_skip: tuple[str, ...]  # replaces bitsandbytes' default skip list (so it names lm_head too)
    fp16_ok: bool  # may compute in fp16 on a GPU without native bf16
    vqa_prompt: str  # the prompt "auto" means
    vqa_decoding: str


# Only the language model is quantised: BLIP-2 ran its ViT-g in fp16 and QLoRA is about the LLM. Blip2's
# _keep_in_fp32_modules (Q-Former, query tokens, T5's wo) are never quantised; transformers 5.25 upcasts them to
# fp32 only in an fp16 load, so on bf16 GPUs they run in bf16 (tests/test_quantization.py reads the dtypes).
OPT = Family(name="opt", title="OPT (decoder-only)", decoder_only=True, padding_side="left",
             lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
             quantization_skip=("vision_model", "language_projection", "lm_head"), fp16_ok=True,
             vqa_prompt="vqa_opt", vqa_decoding="vqa_beam5")
T5 = Family(name="t5", title="Flan-T5 (encoder-decoder)", decoder_only=False, padding_side="right",
            lora_targets=("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
            quantization_skip=("vision_model", "language_projection", "lm_head", "wo"), fp16_ok=False,
            vqa_prompt="vqa_t5", vqa_decoding="vqa_beam5_t5")
FAMILIES = {f.name: f for f in (OPT, T5)}
AUTO = "auto"


def family_of(config) -> Family:
    """The family of a BLIP-2 config (a Blip2Config or its config.json as a dict)."""
    config = config if isinstance(config, dict) else config.to_dict()
    model_type = (config.get("text_config") or {}).get("model_type")
    decoder_only = config.get("use_decoder_only_language_model")
    if decoder_only is None:  # an old config without the flag: transformers decides by the text model's type
        decoder_only = model_type not in ("t5", "mt5", "umt5")
    if decoder_only and model_type in ("opt", None):
        return OPT
    if not decoder_only and model_type == "t5":
        return T5
    raise UserError(f"BLIP-2 with a {model_type!r} {'decoder-only' if decoder_only else 'encoder-decoder'} language "
                    "model is not supported; these scripts run the OPT and Flan-T5 checkpoints "
                    "(e.g. --model_id=Salesforce/blip2-opt-2.7b or --model_id=Salesforce/blip2-flan-t5-xl)")


# Where the LoRA goes (LORA_SCOPE, docs/lora_scopes.md): a named scope is one or two parts of BLIP-2; any other
# value is one module-path prefix (e.g. "vision_model"). The Q-Former is the same BERT-style module in both
# families: its Linear layers (self- and cross-attention, feed-forward) and the projection into the language model.
SCOPES = {"language_model": ("language_model",), "qformer": ("qformer",), "both": ("language_model", "qformer")}
QFORMER_TARGETS = ("query", "key", "value", "dense")
PROJECTION = "language_projection"  # no part's prefix: adapted wherever TARGET_MODULES names it


def lora_targets(value, family: Family, scope: str = "language_model") -> tuple[str, ...]:
    """TARGET_MODULES as layer names: "auto" (or ("auto",)) is the family's own for `scope` (the Q-Former's and
    the projection for "qformer", both sets for "both"); a comma-separated string or a list names them."""
    if value == AUTO or value in ("", None) or (not isinstance(value, str) and tuple(value) == (AUTO,)):
        parts = SCOPES.get(scope, (scope,))
        return (() if parts == ("qformer",) else family.lora_targets) + \
            ((*QFORMER_TARGETS, PROJECTION) if "qformer" in parts else ())
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    names = tuple(str(v) for v in value if str(v).strip())
    if not names:
        raise UserError("TARGET_MODULES names no layer; use \"auto\" (the model family's default) or names such as "
                        + ",".join(family.lora_targets))
    return names


def resolve(kind: str, name: str, family: Family, model_id: str, flag: str | None = None) -> str:
    """A prompt (kind "prompt") or decoding preset ("decoding") name for a model of `family`: "auto" is the
    family's own; a name written for another family is refused in one line."""
    from .prompts import DECODING_FAMILIES, PROMPT_FAMILIES

    own = family.vqa_prompt if kind == "prompt" else family.vqa_decoding
    if name == AUTO:
        return own
    suits = (PROMPT_FAMILIES if kind == "prompt" else DECODING_FAMILIES).get(name, tuple(FAMILIES))
    if family.name not in suits:
        what = "prompt" if kind == "prompt" else "decoding preset"
        theirs = " and ".join(FAMILIES[s].title for s in suits)
        flag = flag or f"--vqa_{kind}"
        raise UserError(f"the {what} {name!r} ({flag}) is written for BLIP-2 on {theirs}, but {model_id} is BLIP-2 on "
                        f"{family.title}; use {flag}={own} (or {flag}=auto, the model's own)")
    return name


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA on BLIP-2: `target_modules` (Linear layer names; ("auto",) = the model family's for the scope)
    inside `scope` ("language_model", "qformer", "both" or a module-path prefix)."""

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    scope: str

    @classmethod
    def of_settings(cls, s: dict) -> "LoraSettings":
        """The LoRA of the fine-tuning script's LORA_* and TARGET_MODULES settings: its globals(), or its
        settings block as src.config.script_settings reads it (bench/ does)."""
        targets = s["TARGET_MODULES"]  # a list, or a string: "auto" (the model family's) or comma-separated names
        targets = tuple(t.strip() for t in targets.split(",") if t.strip()) if isinstance(targets, str) else tuple(targets)
        return cls(r=s["LORA_R"], alpha=s["LORA_ALPHA"], dropout=s["LORA_DROPOUT"], target_modules=targets,
                   scope=s["LORA_SCOPE"])


def lora_target_regex(target_modules: Sequence[str], scope: str) -> str:
    """peft target regex: the named Linear layers inside the scope's parts only (OPT's fc1/fc2 share names
    with the vision tower's MLP), plus the projection when named."""
    parts = SCOPES.get(scope, (scope,) if scope else ())
    inside = "|".join(re.escape(p) for p in parts)
    inside = f"(?:{inside})" if len(parts) > 1 else inside
    names = "|".join(re.escape(m) for m in target_modules if m != PROJECTION)
    regex = (rf".*{inside}\..*\.({names})$" if parts else rf".*\.({names})$") if names else ""
    if PROJECTION in target_modules:
        regex = (f"(?:{regex})|" if regex else "") + rf"(?:.*\.)?{PROJECTION}$"
    return regex
