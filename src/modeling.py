"""The one place that loads BLIP-2, `load_blip2` (the real model and the tiny twin alike), and `build_meta_model`,
its shapes without weights. Checks before the load live in src.preflight; the reasons are in docs/checks.md."""

import json
import logging
import os
from pathlib import Path
from typing import Any

from .config import looks_like_path
from .errors import UserError, again
from .family import OPT, Family, family_of, resolve
from .files import read_json

QUANTIZATIONS = ("4bit", "8bit", "none")
DEFAULT_MODEL_ID = "Salesforce/blip2-opt-2.7b"
_HERE = Path(__file__).parent
# Hub ids whose architecture ships with the repo, so their shapes never need the network (sources: docs/checkpoints.md)
KNOWN_ARCHITECTURES = {
    DEFAULT_MODEL_ID: _HERE / "blip2_opt_2.7b_architecture.json",
    "Salesforce/blip2-opt-6.7b": _HERE / "blip2_opt_6.7b_architecture.json",
    "Salesforce/blip2-flan-t5-xl": _HERE / "blip2_flan_t5_xl_architecture.json",
    "Salesforce/blip2-flan-t5-xxl": _HERE / "blip2_flan_t5_xxl_architecture.json",
}
NF4_BLOCKSIZE = 64  # weights per absmax in bitsandbytes' 4-bit storage (Linear4bit's default)
GIB = 1024**3
IMAGE_BACKEND = "pil"  # what LAVIS used (PIL bicubic), on every machine; transformers 5 picks torchvision when it can
LM_HEAD = "language_model.lm_head.weight"  # BLIP-2's output embedding, OPT's and T5's


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_accelerator(**kwargs):
    """An Accelerator that also goes data-parallel on CPU-only machines (gloo) when launched with
    torchrun; accelerate only does that when told the run is on CPU."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def compute_dtype(device: str, family: Family = OPT):
    """bf16 on GPUs with native (not emulated) bf16, else fp16, or fp32 for a family that overflows in fp16
    (Flan-T5); fp32 on CPU (docs/checks.md)."""
    import torch

    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16 if family.fp16_ok else torch.float32
    return torch.float32


def mixed_precision(device: str, family: Family = OPT) -> str:
    """accelerate's mixed_precision for training on `device`: "bf16", "fp16" (with loss scaling) or "no"."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute_dtype(device, family), "no")


def load_blip2_config(config: Any = None):
    """A Blip2Config from a Blip2Config, a model folder (src.preflight.check_model_dir checked it), a Hub id
    (known ids: the shipped architecture, no network; others: a small download) or None (the default model)."""
    from transformers import Blip2Config

    if isinstance(config, Blip2Config):
        return config
    source = DEFAULT_MODEL_ID if config is None else str(config)
    if not Path(source).exists():  # a known Hub id: the architecture shipped here, no network
        source = KNOWN_ARCHITECTURES.get(source, source)
    try:
        return Blip2Config.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise fetch_error(str(config), e) from None


def build_meta_model(config: Any = None):
    """Blip2ForConditionalGeneration of `config` (as load_blip2_config takes it) on the meta device: shapes, no
    memory; its output embedding untied where loading unties it (docs/details.md)."""
    import torch
    from safetensors import safe_open
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(load_blip2_config(config))
    head = model.get_output_embeddings()
    if head.weight is not model.get_input_embeddings().weight:
        return model
    # tied when built, untied by loading a checkpoint that holds both (a folder's tensor names), else by the config
    folder = Path(config) if isinstance(config, (str, Path)) else None  # a model folder, or a Hub id
    both = {LM_HEAD, model.all_tied_weights_keys.get(LM_HEAD)}  # the head and the embedding it is tied to
    if folder and (folder / "model.safetensors.index.json").is_file():
        unties = both <= set(read_json(folder / "model.safetensors.index.json", "checkpoint index")["weight_map"])
    elif folder and (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            unties = both <= set(f.keys())
    else:
        text = model.config.text_config
        unties = text.tie_word_embeddings is False or getattr(text, "scale_decoder_outputs", True) is False
    if unties:
        head.weight = torch.nn.Parameter(torch.empty_like(head.weight), requires_grad=False)
        model.all_tied_weights_keys.pop(LM_HEAD, None)  # as tie_weights leaves it after loading
        model.language_model.all_tied_weights_keys.pop(LM_HEAD.removeprefix("language_model."), None)
    return model


def bnb_modules_to_not_convert(model) -> list[str]:
    """What transformers' bitsandbytes quantizers pass to `replace_with_bnb_linear` as modules_to_not_convert,
    with `llm_int8_skip_modules` set as `load_blip2` sets it."""
    from transformers.quantizers.base import HfQuantizer

    skip = list(family_of(model.config).quantization_skip)
    return sorted(HfQuantizer.get_modules_to_not_convert(model, skip, model._keep_in_fp32_modules))


def bnb_quantized_linears(model) -> dict[str, Any]:
    """The modules `replace_with_bnb_linear` turns into Linear4bit / Linear8bitLt (its rule; BLIP-2 has no Conv1D)."""
    import torch.nn as nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = bnb_modules_to_not_convert(model)
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear and should_convert_module(name, skip)}


def known_family(model_id: str) -> Family | None:
    """The family of `model_id` where it needs no download (a local folder, a known architecture, the hub
    cache), else None."""
    from huggingface_hub import try_to_load_from_cache

    name, folder = str(model_id), Path(os.path.expanduser(str(model_id)))
    try:
        if folder.is_dir():
            path = folder / "config.json"
        elif name in KNOWN_ARCHITECTURES or is_local(name):
            path = KNOWN_ARCHITECTURES.get(name)
        else:  # a path when cached; raises for an invalid repo id (the model load says so)
            path = try_to_load_from_cache(name, "config.json")
        return family_of(json.loads(Path(path).read_text(encoding="utf-8"))) if isinstance(path, (str, Path)) else None
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: src.preflight.check_model_dir and the load report it


def generation_names(model_id: str, vqa_prompt: str, vqa_decoding: str | None = None,
                     model=None) -> tuple[str, str | None]:
    """VQA_PROMPT and VQA_DECODING for the model: "auto" becomes the family's own, another family's refused.
    Scripts call it before the load (from `known_family`) and again with the loaded `model`."""
    family = family_of(blip2_core(model).config) if model is not None else known_family(model_id)
    if family is None:
        return vqa_prompt, vqa_decoding
    return (resolve("prompt", vqa_prompt, family, model_id),
            None if vqa_decoding is None else resolve("decoding", vqa_decoding, family, model_id))


def is_local(model_id: str) -> bool:
    return os.path.exists(model_id) or looks_like_path(model_id)


def fetch_error(model_id: str, err: Exception) -> UserError:
    if is_local(model_id) and not os.path.isdir(model_id):
        return UserError(f"model folder not found: {model_id}; pass --model_id=<local dir> of a saved model, "
                         "or a Hugging Face Hub id such as Salesforce/blip2-opt-2.7b")
    where = f"the folder {model_id}" if is_local(model_id) else f"the Hugging Face Hub id {model_id!r}"
    return UserError(
        f"could not load BLIP-2 from {where} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "Without internet, or with a wrong id, pass a local copy: --model_id=<local dir> "
        "(a folder saved with save_pretrained, e.g. one made by `python -m twin outputs/tiny-blip2`)"
    )


def load_blip2(model_id: str = DEFAULT_MODEL_ID, quantization: str = "4bit", device: str | None = None, dtype=None):
    """(model, processor) in eval mode, quantised "4bit" (NF4), "8bit" (GPU) or "none" (a LoRA adapter goes on
    with apply_adapter); `dtype` overrides the device's compute dtype (the merge loads float32)."""
    import torch
    from transformers import AutoProcessor, BitsAndBytesConfig, Blip2ForConditionalGeneration

    device = device or default_device()
    family = family_of(load_blip2_config(model_id))
    dtype = dtype or compute_dtype(device, family)
    # every weight straight onto this process's device (also unquantised: no full copy in host RAM first,
    # which is 7.7 GB per process, 62 GB on 8 GPUs); safetensors only: never unpickle downloaded weights
    kwargs = {"dtype": dtype, "use_safetensors": True,
              "device_map": {"": torch.device(device).index or 0} if str(device).startswith("cuda") else {"": "cpu"}}
    bits = {"4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                    "bnb_4bit_compute_dtype": dtype}, "8bit": {"load_in_8bit": True}}.get(quantization)
    if bits:
        kwargs["quantization_config"] = BitsAndBytesConfig(llm_int8_skip_modules=list(family.quantization_skip), **bits)
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(_untied_t5_lm_head)
    try:  # the processor resizes with PIL on every machine, as LAVIS did (docs/checks.md)
        processor = AutoProcessor.from_pretrained(model_id, backend=IMAGE_BACKEND)
        model, loaded = Blip2ForConditionalGeneration.from_pretrained(model_id, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise fetch_error(model_id, e) from None
    except RuntimeError as e:
        if "mismatched" not in str(e) and "size mismatch" not in str(e):
            raise
        detail = next((line.strip() for line in str(e).splitlines() if "shape" in line), str(e).splitlines()[0])
        raise UserError(f"{model_id}: config.json does not match the weights ({detail[:200]}); the config was edited "
                        f"or comes from another model: {again('model folder')}") from None
    finally:
        logger.removeFilter(_untied_t5_lm_head)
    # transformers starts a weight the files lack at random and only its load report says so
    odd = [f"{len(keys)} {what} ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})"
           for what, keys in (("missing", loaded["missing_keys"]), ("unexpected", loaded["unexpected_keys"])) if keys]
    if odd:
        raise UserError(f"{model_id}: the weights do not fit config.json: {'; '.join(odd)} tensors; the files are "
                        f"incomplete or the config comes from another model: {again('model folder')}")
    check_tokenizer(model, processor, model_id)
    # OPT pads on the left, so batched generation continues every row from its last real token; Flan-T5 on the right
    processor.tokenizer.padding_side = family.padding_side
    if quantization == "4bit" and not str(device).startswith("cuda"):  # keep CPU 4-bit weights trainable:
        import bitsandbytes as bnb  # bitsandbytes' inference repacking breaks a later backward

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model.eval(), processor


def check_tokenizer(model, processor, model_id: str) -> None:
    """The tokenizer files fit the model: its image token (files from before the Nov 2024 processor update lack it),
    the language model's BOS first, as it was trained (a stale tokenizer.json shifts every prompt), a pad token."""
    config = model.config
    token = getattr(config, "image_token_index", None)
    if token is None or token >= len(processor.tokenizer):
        fix = (f"download the model again into it: `hf download <hub id, e.g. Salesforce/blip2-opt-2.7b> --local-dir "
               f"{model_id}`" if is_local(model_id) else f"update the cached copy: `hf download {model_id}` (or delete "
               "its folder under ~/.cache/huggingface/hub and run again)")
        raise UserError(
            f"{model_id}: the model files have no image token (image_token_index is "
            f"{'missing' if token is None else f'{token}, beyond the tokenizer'} in config.json); they predate the "
            f"Nov 2024 BLIP-2 processor update; {fix}")
    # the processor's count, when an old processor_config.json lacks it, comes from the model
    processor.num_query_tokens = config.num_query_tokens
    bos, ids = getattr(config.text_config, "bos_token_id", None), processor.tokenizer("a")["input_ids"]
    if bos is not None and family_of(config).decoder_only and (not ids or ids[0] != bos):  # T5: no BOS, starts at pad
        folder = Path(model_id) if Path(model_id).is_dir() else None
        where = (f"{folder / 'tokenizer.json'} and {folder / 'tokenizer_config.json'}" if folder else
                 f"the cached tokenizer.json and tokenizer_config.json of {model_id} (under ~/.cache/huggingface/hub)")
        fix = (again("model folder", download=False) if folder else
               f"refresh them: `hf download {model_id} tokenizer.json tokenizer_config.json --force-download`")
        raise UserError(f"{model_id}: the tokenizer does not start a text with the model's BOS token (id {bos}; it "
                        f"starts 'a' with {ids[:3]}): {where} are damaged or stale; {fix}")
    if processor.tokenizer.pad_token_id is None:
        raise UserError(f"{model_id}: the tokenizer has no pad token (pad_token in tokenizer_config.json); batches "
                        "cannot be padded: " + again("model's tokenizer files"))


def _untied_t5_lm_head(record) -> bool:
    """A logging filter against transformers' warning that a T5 checkpoint holds its lm_head beside the shared
    embedding: Flan-T5's does (its config says tie_word_embeddings false), and keeping them apart is right."""
    text = record.getMessage()
    return not ("present in the checkpoints with different values, so we will NOT tie them" in text
                and "lm_head" in text and "shared" in text)


def end_token_id(model) -> int:
    """The token generation stops on: the language model's eos, which the fine-tuning target must end
    with. For OPT-based BLIP-2 that is the newline (50118), not the tokenizer's `</s>`; for Flan-T5 `</s>` (1)."""
    core = blip2_core(model)
    eos = core.language_model.generation_config.eos_token_id
    if eos is None:
        eos = core.config.text_config.eos_token_id
    return eos[0] if isinstance(eos, (list, tuple)) else int(eos)


def apply_adapter(model, adapter: str | Path):
    """Load the LoRA adapter in `adapter` onto `model`, in eval mode (src.preflight.check_adapter_fits tells
    first, in one line, whether it was trained on this base)."""
    from peft import PeftModel

    loaded = getattr(model.config, "_name_or_path", "") or "the loaded model"
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError) as e:  # peft's NoMatchingPeftModuleError is a ValueError
        if isinstance(e, RuntimeError) and "size mismatch" not in str(e):
            raise
        fix = "" if isinstance(e, RuntimeError) else f"check target_modules in {Path(adapter) / 'adapter_config.json'}, or "
        raise UserError(f"the LoRA adapter in {adapter} does not fit {loaded}: {str(e).strip().splitlines()[-1][:200]}; "
                        f"{fix}pass an adapter trained on {loaded}") from None
    return model.eval()


def base_fingerprint(model, n: int = 64) -> dict[str, list[float]]:
    """n evenly spaced values of each never-quantised weight below: the fine-tuning records its base's, so that
    another checkpoint of the same shapes is told from a copy of the base (in any precision)."""
    import torch

    core = blip2_core(model)
    parts = {"query_tokens": core.query_tokens, "qformer": core.qformer.encoder.layer[0].attention.attention.query.weight,
             "language_projection": core.language_projection.weight, "embeddings": core.get_input_embeddings().weight}
    flat = {name: t.detach().reshape(-1) for name, t in parts.items()}
    return {name: [float(f"{v:.6g}") for v in t[torch.linspace(0, t.numel() - 1, n).long().to(t.device)].float().tolist()]
            for name, t in flat.items()}


def resolve_adapter_dir(adapter_dir: str, output_dir: str | Path) -> str | None:
    """ADAPTER_DIR (or MERGED_DIR) as the folder it names: "" is None (the base model), "{output_dir}" the
    script's OUTPUT_DIR, "~" the home folder."""
    if not adapter_dir:
        return None
    output_dir = str(output_dir).rstrip("/\\") or str(output_dir)
    return os.path.expanduser(adapter_dir.replace("{output_dir}", output_dir))


def blip2_core(model):
    """The Blip2ForConditionalGeneration inside a PeftModel (LoRA layers are injected in place), else `model`;
    asked by duck type, so a plain model (e.g. a merged one) needs no peft installed."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
