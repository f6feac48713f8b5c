"""How much memory BLIP-2's weights take at each precision, and what QLoRA adds, without loading a weight.
`python finetune_vqav2_lora.py --memory_plan_only=True` prints it for that script's model and LoRA.

`plan_memory` builds Blip2ForConditionalGeneration on the meta device (shapes only), counts
parameters per part (a tied lm_head counted once, with the input embedding) and prices every
parameter at fp32, bf16, fp16, LLM.int8 and NF4 with double quantisation. Which modules stay
unquantised, and in which dtype, is asked of the installed transformers itself: its bitsandbytes
quantizers' `get_modules_to_not_convert` (the model family's skip list, `_keep_in_fp32_modules`:
the Q-Former, the query tokens and T5's `wo`), the `should_convert_module` rule and "only `nn.Linear`
is replaced" from `replace_with_bnb_linear`, and the model's `_get_dtype_plan` for the fp32 upcast.
Whether the output embedding is tied follows transformers' `tie_weights` at load time: transformers 5
builds every T5 with lm_head tied to `shared` and unties it when the checkpoint holds both with different
values, as Flan-T5's does (its config says `tie_word_embeddings: false`); see `output_embedding_untied`.
`format_plan` turns the result into the table the fine-tuning script prints before loading.

The architectures of the four public checkpoints ship beside this file (no download), each a copy
of its Hub config.json (the transformers 4.47 revisions that added the `<image>` token) with the
values the Hub file leaves to the config classes' defaults written out:

- Salesforce/blip2-opt-2.7b, `blip2_opt_2.7b_architecture.json`: checked against a public copy of
  the Hub config.json (image_token_index 50265, text vocab_size 50304, eos 50118, ffn 10240, 2560
  hidden, 32 layers / 32 heads) and its printed module tree (vision 1408 / 6144, qkv bias, eps 1e-6,
  257 positions = 224/14 patches + CLS; Q-Former 768 / 3072, cross-attention every 2nd layer, keys
  from 1408; OPT positions 2050 = 2048 + 2, padding_idx 1). The Hub config leaves the rest to the
  config classes' defaults, copied here: vision 39 layers / 16 heads, Q-Former 12 layers / 12 heads
  (its vocab_size 30522 and max_position_embeddings 512 create no parameters in
  Blip2ForConditionalGeneration), OPT bos 2 and tie_word_embeddings true.
- Salesforce/blip2-opt-6.7b, `blip2_opt_6.7b_architecture.json`: OPT-6.7B's sizes (hidden and
  word_embed_proj_dim 4096, ffn 16384, 32 layers / 32 heads, positions 2048, bos 2, pad 1) from a copy
  of facebook/opt-6.7b's config.json, which BLIP-2 took unchanged (LAVIS blip2_pretrain_opt6.7b.yaml:
  opt_model facebook/opt-6.7b; transformers' convert_blip_2_original_to_pytorch.py: OPTConfig of
  facebook/opt-6.7b with eos = the newline, 50118). vocab_size 50304 and image_token_index 50265 are
  those of the same update of Salesforce/blip2-opt-6.7b-coco (its Hub config.json at 6fb8001: the same
  OPT-6.7B, eos 50118, image_token_index 50265, vocab_size 50304), where `<image>` (added_tokens.json:
  50265) made 50266 tokens (50304 is that rounded up to a multiple of 64). The plain checkpoint's own
  updated config.json was not found in a public copy; its parameter count with these values, 7.75B,
  matches promptlayer.com's listing of the Hub model. Vision and Q-Former: the same defaults as
  blip2-opt-2.7b (224-pixel images, LAVIS image_size 224).
- Salesforce/blip2-flan-t5-xl and -xxl, `blip2_flan_t5_xl_architecture.json` and
  `blip2_flan_t5_xxl_architecture.json`: a printed copy of the xl Hub config.json and the xxl Hub
  config.json at revision e9ddf63 (both transformers 4.47.0.dev0): use_decoder_only_language_model
  false, num_query_tokens 32, image_token_index 32100 (`<image>` after T5's 32,100 pieces and sentinels;
  vocab_size stays 32128), text_config model_type t5 with d_model 2048 / 4096, d_ff 5120 / 10240,
  d_kv 64, num_heads 32 / 64, 24 encoder and 24 decoder layers, gated-gelu, relative attention 32
  buckets / max distance 128, layer_norm_epsilon 1e-6, tie_word_embeddings false, pad 0, eos 1,
  decoder_start 0 and bos 1 (convert_blip_2_original_to_pytorch.py sets bos_token_id=1 and
  dense_act_fn="gelu" on google/flan-t5-xl's and -xxl's T5Config). Vision and Q-Former are left to the
  defaults there too (the same values as above). Parameter counts with the untied lm_head, 3.94B and
  12.23B, match promptlayer.com's listings (3.94B, 12.2B) and the xxl checkpoint's 48.9 GB of fp32
  safetensors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .family import AUTO, FAMILIES, Family, family_of, lora_targets
from .family import LoraSettings, lora_target_regex  # the LoRA the fine-tuning script adds, and its peft regex

_HERE = Path(__file__).parent
ARCHITECTURE_JSON = _HERE / "blip2_opt_2.7b_architecture.json"  # the default model's (DEFAULT_MODEL_ID)
# Hub ids whose architecture ships with the repo, so a plan never needs the network
KNOWN_ARCHITECTURES = {
    "Salesforce/blip2-opt-2.7b": ARCHITECTURE_JSON,
    "Salesforce/blip2-opt-6.7b": _HERE / "blip2_opt_6.7b_architecture.json",
    "Salesforce/blip2-flan-t5-xl": _HERE / "blip2_flan_t5_xl_architecture.json",
    "Salesforce/blip2-flan-t5-xxl": _HERE / "blip2_flan_t5_xxl_architecture.json",
}

# bitsandbytes 4-bit storage (bnb.functional.quantize_4bit, Linear4bit's defaults)
NF4_BLOCKSIZE = 64  # weights per absmax
NF4_NESTED_BLOCKSIZE = 256  # absmax values per second-level fp32 absmax (double quantisation)
NF4_CODE_BYTES = 16 * 4  # the NF4 lookup table, fp32, stored with every layer
NESTED_CODE_BYTES = 256 * 4  # the 8-bit dynamic map for the absmax, fp32, stored with every layer
NESTED_OFFSET_BYTES = 4  # mean subtracted from the absmax before quantising them, one fp32
# training state per trainable (LoRA) parameter: peft keeps adapters in fp32
LORA_PARAM_BYTES = 4
LORA_GRAD_BYTES = 4
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
GIB = 1024**3


def nf4_weight_bytes(numel: int, double_quant: bool = True, blocksize: int = NF4_BLOCKSIZE) -> int:
    """Bytes bitsandbytes holds for one NF4 weight: packed 4-bit codes plus its quant_state.

    Double quantisation stores one uint8 absmax per block of 64 weights and one fp32 absmax per
    256 blocks (about 0.5 + 1/64 + 4/16384 bytes per weight), plus the two small lookup tables.
    """
    packed = (numel + 1) // 2
    blocks = math.ceil(numel / blocksize)
    if not double_quant:
        return packed + 4 * blocks + NF4_CODE_BYTES
    nested_blocks = math.ceil(blocks / NF4_NESTED_BLOCKSIZE)
    return packed + blocks + 4 * nested_blocks + NESTED_OFFSET_BYTES + NESTED_CODE_BYTES + NF4_CODE_BYTES


def int8_weight_bytes(out_features: int, in_features: int) -> int:
    """LLM.int8 (Linear8bitLt, has_fp16_weights=False): int8 weight plus one fp32 scale (SCB) per output row."""
    return out_features * in_features + 4 * out_features


def _torch_dtype(name: str):
    import torch

    if name not in COMPUTE_DTYPES:
        raise UserError(f"unknown compute dtype {name!r}; use one of {', '.join(COMPUTE_DTYPES)}")
    return getattr(torch, name)


def load_blip2_config(config: Any = None):
    """A Blip2Config from: None (the shipped blip2-opt-2.7b architecture), a Blip2Config, a dict,
    a config.json path, a model folder, or a Hub id (known ids use the shipped architecture)."""
    from transformers import Blip2Config

    if config is None:
        config = ARCHITECTURE_JSON
    if isinstance(config, Blip2Config):
        return config
    if isinstance(config, dict):
        return Blip2Config(**config)
    if str(config) in KNOWN_ARCHITECTURES and not Path(str(config)).exists():
        config = KNOWN_ARCHITECTURES[str(config)]
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():  # transformers would hand back its default config (1.2B parameters) in silence
            raise UserError(f"{path.parent} holds no config.json, so it is no model folder saved with save_pretrained; "
                            "copy the whole model folder again, or pass a hub id such as Salesforce/blip2-opt-2.7b")
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get("model_type") != "blip-2":
            raise UserError(f"{path} is not a BLIP-2 config (model_type {raw.get('model_type')!r}, expected 'blip-2')")
        return Blip2Config(**raw)
    try:
        return Blip2Config.from_pretrained(str(config))
    except (OSError, ValueError) as e:
        raise UserError(
            f"no BLIP-2 config at {config!r} ({type(e).__name__}); pass a config.json, a model folder "
            f"or one of {', '.join(KNOWN_ARCHITECTURES)}"
        ) from None


def build_meta_model(config, checkpoint_keys: set[str] | None = None):
    """Blip2ForConditionalGeneration with every tensor on the meta device: shapes, no memory. Its output
    embedding is untied as transformers unties it when loading (`output_embedding_untied`)."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
        if output_embedding_untied(model, checkpoint_keys):
            name, head = _output_embedding_name(model), model.get_output_embeddings()
            head.weight = torch.nn.Parameter(torch.empty_like(head.weight), requires_grad=False)
            model.all_tied_weights_keys.pop(name, None)  # as tie_weights leaves it after loading
            model.language_model.all_tied_weights_keys.pop(name.removeprefix("language_model."), None)
    return model


def _output_embedding_name(model) -> str:
    head = model.get_output_embeddings()
    return next(f"{n}.weight" for n, m in model.named_modules() if m is head)


def output_embedding_untied(model, checkpoint_keys: set[str] | None) -> bool:
    """Whether loading the checkpoint leaves the output embedding a tensor of its own although the model
    ties it when built. transformers' `tie_weights` (from_pretrained) skips a tie when the checkpoint holds
    both tensors with different values; a tied checkpoint stores one. With the checkpoint's tensor names
    (a model folder) that is read off them. Without (a config only): untied when the config says so,
    `tie_word_embeddings: false`, which T5Config records as `scale_decoder_outputs` before tying T5
    anyway (transformers 5): that is Flan-T5, whose checkpoints carry their own lm_head."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embed.weight:
        return False
    target = _output_embedding_name(model)
    source = model.all_tied_weights_keys.get(target)
    if checkpoint_keys is not None:
        return source is not None and {target, source} <= checkpoint_keys
    text = model.config.text_config
    return text.tie_word_embeddings is False or getattr(text, "scale_decoder_outputs", True) is False


def checkpoint_tensor_names(config: Any) -> set[str] | None:
    """The tensor names of the safetensors checkpoint in a model folder (headers only), or None when
    `config` names no folder with one (a Hub id, a config.json alone, a dict, a Blip2Config)."""
    from safetensors import safe_open

    if not isinstance(config, (str, Path)) or str(config) in KNOWN_ARCHITECTURES and not Path(str(config)).exists():
        return None
    folder = Path(config)
    folder = folder if folder.is_dir() else folder.parent
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            return set(json.load(f)["weight_map"])
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return set(f.keys())
    return None


def bnb_modules_to_not_convert(model) -> list[str]:
    """What transformers' bitsandbytes quantizers (4- and 8-bit) pass to `replace_with_bnb_linear`
    as modules_to_not_convert, with `llm_int8_skip_modules` set as `load_blip2` sets it."""
    from transformers.quantizers.base import HfQuantizer

    skip = list(family_of(model.config).quantization_skip)  # what load_blip2 passes as llm_int8_skip_modules
    return sorted(HfQuantizer.get_modules_to_not_convert(model, skip, model._keep_in_fp32_modules))


def bnb_quantized_linears(model, modules_to_not_convert: list[str]) -> dict[str, Any]:
    """The modules `replace_with_bnb_linear` turns into Linear4bit / Linear8bitLt (same rule, no replacing)."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    return {
        name: module
        for name, module in model.named_modules()
        if should_convert_module(name, modules_to_not_convert) and (isinstance(module, Conv1D) or type(module) is nn.Linear)
    }


def fp32_patterns(model, dtype) -> list[str]:
    """Parameter-name patterns transformers loads in fp32 when asked for `dtype` (its `_keep_in_fp32_modules`
    apply for fp16 only; `_keep_in_fp32_modules_strict` for fp16 and bf16)."""
    import torch

    return sorted(k for k, v in model._get_dtype_plan(dtype).items() if v == torch.float32)


def _part_of(name: str, param, embed_weight, lm_head_weight) -> str:
    if param is embed_weight:
        return "language_model.embed_tokens"  # OPT's embed_tokens, T5's shared (its encoder's and decoder's)
    if param is lm_head_weight:
        return "language_model.lm_head"  # only reached when the output embedding is not tied
    head = name.split(".", 1)[0]
    if head != "language_model":
        return head
    if name.startswith("language_model.encoder.block."):
        return "language_model.encoder_layers"
    if name.startswith("language_model.decoder.block."):
        return "language_model.decoder_layers"
    if ".layers." in name:
        return "language_model.layers"
    if "embed_positions" in name:
        return "language_model.embed_positions"
    return "language_model.final_norm_etc"


PART_LABELS = {
    "vision_model": "vision_model",
    "query_tokens": "query_tokens",
    "qformer": "qformer",
    "language_projection": "language_projection",
    "language_model.embed_tokens": "LM token embedding",  # format_plan adds what is tied to it
    "language_model.lm_head": "LM lm_head (untied)",
    "language_model.embed_positions": "LM embed_positions",
    "language_model.layers": "LM decoder layers",  # OPT
    "language_model.encoder_layers": "LM encoder layers",  # T5
    "language_model.decoder_layers": "LM decoder layers",  # T5
    "language_model.final_norm_etc": "LM final norm etc.",
}
_LAYER_INDEX = re.compile(r"\.(?:layers|block)\.(\d+)\.")


def _lora_modules(model, lora_targets, lora_scope) -> tuple[str, dict[str, Any]]:
    """Linear modules peft would wrap. A str is a peft regex (re.fullmatch); names are restricted to `lora_scope`."""
    import torch.nn as nn

    if isinstance(lora_targets, str):
        regex = lora_targets
    else:
        regex = lora_target_regex(tuple(lora_targets), lora_scope)
    matched = {name: m for name, m in model.named_modules() if name and re.fullmatch(regex, name)}
    not_linear = [n for n, m in matched.items() if not isinstance(m, nn.Linear)]
    if not_linear:
        raise UserError(f"LoRA targets match modules that are not Linear layers: {', '.join(not_linear[:5])}")
    return regex, matched


def resolve_lora_targets(targets, family: Family) -> str | tuple[str, ...]:
    """TARGET_MODULES for `family`: "auto" or ("auto",) is the family's layer names (src.family.lora_targets);
    names are checked there; any other str is a peft regex and stays as it is."""
    if isinstance(targets, str) and targets != AUTO:
        return targets
    return lora_targets(targets, family)


def plan_memory(config: Any, *, lora: LoraSettings, compute_dtype: str = "bfloat16") -> dict:
    """Parameters and weight bytes of BLIP-2 per part and precision, plus LoRA and its training state.

    config: see `load_blip2_config` (default: the shipped Salesforce/blip2-opt-2.7b architecture); a
    model folder's checkpoint tensor names decide whether its output embedding loads untied.
    lora: the LoRA (its r, target_modules and scope; target_modules may be "auto", the model family's
    layers, or a peft regex string).
    compute_dtype: dtype of everything bitsandbytes leaves unquantised in the int8 / nf4 columns
    (`load_blip2` uses bfloat16 on GPUs that have it, else float16, or float32 for Flan-T5).
    """
    import torch
    import transformers

    if lora.r < 1:
        raise UserError(f"lora_r must be >= 1, got {lora.r}")
    cfg = load_blip2_config(config)
    family = family_of(cfg)
    model = build_meta_model(cfg, checkpoint_tensor_names(config))
    compute = _torch_dtype(compute_dtype)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": compute, "nf4": compute}

    not_convert = bnb_modules_to_not_convert(model)
    quantized = bnb_quantized_linears(model, not_convert)
    parts, unquantized_by_dtype = _bytes_per_part(model, quantized, dtypes)
    total_params = sum(p["params"] for p in parts.values())
    precisions = {}
    for precision in PRECISIONS:
        total = sum(p["bytes"][precision] for p in parts.values())
        precisions[precision] = {"dtype": str(dtypes[precision]).removeprefix("torch."), "bytes": total, "gib": total / GIB}
    for precision in ("int8", "nf4"):
        precisions[precision]["unquantized_params_by_dtype"] = unquantized_by_dtype[precision]

    requested = lora.target_modules
    auto = requested == AUTO or not isinstance(requested, str) and tuple(requested) == (AUTO,)
    lora = _lora_plan(model, lora.r, resolve_lora_targets(requested, family), lora.scope, auto=auto)
    # src.training.freeze_base keeps every frozen weight in the dtype it was loaded in
    qlora = {
        "weights_bytes": precisions["nf4"]["bytes"],
        "lora_bytes": lora["total_bytes"],
        "total_bytes": precisions["nf4"]["bytes"] + lora["total_bytes"],
        "activations": "not estimated (the language model's only: image features are computed under no_grad)",
    }

    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    largest = max(model.named_parameters(), key=lambda kv: kv[1].numel())
    return {
        "model": type(model).__name__,
        "family": family.name,
        "transformers_version": transformers.__version__,
        "compute_dtype": compute_dtype,
        "language_model_layers": cfg.text_config.num_hidden_layers,
        "total_params": total_params,
        "parts": parts,
        "tied_weights": dict(tied),
        "tied_params_counted_once": sum(model.get_parameter(k).numel() for k in tied),
        "untied_output_embedding": "language_model.lm_head" in parts,
        "bnb": {
            "modules_to_not_convert": not_convert,
            "quantized_linears": sorted(quantized),
            "quantized_linear_count": len(quantized),
            "quantized_params": sum(p["quantized_params"] for p in parts.values()),
            "fp32_patterns": {p: fp32_patterns(model, dtypes[p]) for p in PRECISIONS},
            "keep_in_fp32_modules": sorted(model._keep_in_fp32_modules),
        },
        "precisions": precisions,
        "lora": lora,
        "qlora_training": qlora,
        # load_blip2 puts every weight straight onto its device (device_map): from the memory-mapped
        # safetensors files, one tensor at a time, so host RAM holds about the largest one at once
        "host_ram": {"largest_tensor": largest[0], "largest_tensor_params": largest[1].numel(),
                     "largest_tensor_fp32_bytes": 4 * largest[1].numel()},
    }


def _bytes_per_part(model, quantized: dict[str, Any], dtypes: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """({part: params, quantised params, bytes per precision}, {"int8"/"nf4": unquantised params per dtype})."""
    import torch

    quantized_weights = {f"{name}.weight": module for name, module in quantized.items()}
    upcast = {p: [re.compile(k.replace("*", ".*")) for k in fp32_patterns(model, d)] for p, d in dtypes.items()}
    embed_weight = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings()
    lm_head_weight = lm_head.weight if lm_head is not None else None

    parts: dict[str, dict] = {}
    unquantized_by_dtype = {p: {} for p in ("int8", "nf4")}
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        part = parts.setdefault(
            _part_of(name, param, embed_weight, lm_head_weight),
            {"params": 0, "quantized_params": 0, "bytes": dict.fromkeys(PRECISIONS, 0)},
        )
        n = param.numel()
        part["params"] += n
        if layer := _LAYER_INDEX.search(name):
            part.setdefault("layer_indices", set()).add(int(layer.group(1)))
        module = quantized_weights.get(name)
        if module is not None:
            part["quantized_params"] += n
        for precision in PRECISIONS:
            if module is not None and precision == "int8":
                part["bytes"][precision] += int8_weight_bytes(module.out_features, module.in_features)
            elif module is not None and precision == "nf4":
                part["bytes"][precision] += nf4_weight_bytes(n)
            else:
                dtype = torch.float32 if any(p.search(name) for p in upcast[precision]) else dtypes[precision]
                part["bytes"][precision] += n * dtype.itemsize
                if precision in unquantized_by_dtype:
                    key = str(dtype).removeprefix("torch.")
                    unquantized_by_dtype[precision][key] = unquantized_by_dtype[precision].get(key, 0) + n
    for part in parts.values():
        if "layer_indices" in part:
            part["layers"] = len(part.pop("layer_indices"))
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    if buffers:
        parts["buffers"] = {"params": 0, "quantized_params": 0, "bytes": dict.fromkeys(PRECISIONS, buffers)}
    order = list(PART_LABELS) + ["buffers"]
    return dict(sorted(parts.items(), key=lambda kv: order.index(kv[0]))), unquantized_by_dtype


def _lora_plan(model, lora_r: int, lora_targets, lora_scope, auto: bool = False) -> dict:
    """The LoRA modules, parameters and fp32 training state (weights, gradients, AdamW moments)."""
    regex, lora_modules = _lora_modules(model, lora_targets, lora_scope)
    lora_params = sum(lora_r * (m.in_features + m.out_features) for m in lora_modules.values())
    lora = {
        "r": lora_r,
        "targets": lora_targets if isinstance(lora_targets, str) else list(lora_targets),
        "auto": auto,  # the targets are the model family's ("auto")
        "scope": lora_scope,
        "regex": regex,
        "modules": len(lora_modules),
        "params": lora_params,
        "param_bytes": lora_params * LORA_PARAM_BYTES,
        "grad_bytes": lora_params * LORA_GRAD_BYTES,
        "adamw_bytes": lora_params * ADAMW_STATE_BYTES,
    }
    lora["total_bytes"] = lora["param_bytes"] + lora["grad_bytes"] + lora["adamw_bytes"]
    return lora


def held_bytes(model) -> int:
    """Bytes of every tensor a loaded model holds: parameters and buffers (shared ones once), plus what
    bitsandbytes keeps beside them: the 4-bit quant_state and the int8 row scales (SCB)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    for module in model.modules():
        weight = module._parameters.get("weight")
        kind = type(weight).__name__  # class names, so this runs without importing bitsandbytes
        if kind == "Params4bit" and weight.quant_state is not None:
            s = weight.quant_state
            stats = [s.absmax, s.code] + ([s.offset, s.state2.absmax, s.state2.code] if s.nested else [])
            total += sum(t.numel() * t.element_size() for t in stats)
        elif kind == "Int8Params" and weight.SCB is not None:
            total += weight.SCB.numel() * weight.SCB.element_size()
    return total


def _gib(nbytes: float, unit: int = GIB) -> str:
    return f"{nbytes / unit:.3f}"


def _part_label(key: str, part: dict, plan: dict) -> str:
    label = PART_LABELS.get(key, key)
    if "layers" in part:
        label += f" ({part['layers']})"
    if key == "language_model.embed_tokens":  # what is tied to it: "lm_head" (OPT), "encoder/decoder embed_tokens" (T5)
        embed = next(iter(plan["tied_weights"].values()), None)
        owners: dict[str, list[str]] = {}
        for target, source in plan["tied_weights"].items():
            if source == embed:
                *path, module = target.removeprefix("language_model.").removesuffix(".weight").split(".")
                owners.setdefault(module, []).append(".".join(path))
        tied = ["/".join(o for o in paths if o) + (" " if any(paths) else "") + module for module, paths in owners.items()]
        label += f" (= tied {', '.join(tied)}, once)" if tied else ""
    return label


def format_plan(plan: dict) -> str:
    """A compact table (params, GiB per precision) and the notes that make the numbers readable."""
    family = FAMILIES[plan["family"]]
    compute = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[plan["compute_dtype"]]
    heads = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "int8": f"int8+{compute}", "nf4": f"nf4+{compute}"}
    # the tiny test model would print as zeros in GiB
    unit, unit_name = (GIB, "GiB") if plan["precisions"]["fp32"]["bytes"] >= GIB else (1024**2, "MiB")
    labels = {key: _part_label(key, part, plan) for key, part in plan["parts"].items()}
    width = max(len(label) for label in labels.values()) + 4
    lines = [
        f"***** BLIP-2 weight memory plan ({plan['model']} on {family.title}, transformers "
        f"{plan['transformers_version']}, {unit_name}) *****",
        f"{'part':<{width}}{'params':>15}" + "".join(f"{heads[p]:>11}" for p in PRECISIONS),
    ]
    for key, part in plan["parts"].items():
        row = f"{labels[key]:<{width}}{part['params']:>15,}"
        lines.append(row + "".join(f"{_gib(part['bytes'][p], unit):>11}" for p in PRECISIONS))
    lines.append(
        f"{'total':<{width}}{plan['total_params']:>15,}" + "".join(f"{_gib(plan['precisions'][p]['bytes'], unit):>11}" for p in PRECISIONS)
    )
    bnb = plan["bnb"]
    share = bnb["quantized_params"] / plan["total_params"]
    lines.append(
        f"int8/nf4 quantise {bnb['quantized_linear_count']} Linear weights ({bnb['quantized_params']:,} params, {share:.1%}); "
        f"only the language model's Linear layers are quantised; kept in {compute}: embeddings, norms, biases and "
        f"{', '.join(bnb['modules_to_not_convert'])}"
    )
    per_weight = nf4_weight_bytes(NF4_BLOCKSIZE * NF4_NESTED_BLOCKSIZE * 1024) / (NF4_BLOCKSIZE * NF4_NESTED_BLOCKSIZE * 1024)
    lines.append(
        "int8 = 1 B/weight + fp32 scale per output row; nf4 (double quant) = 4-bit codes + uint8 absmax per 64 "
        f"+ fp32 absmax per 16384 = {per_weight:.4f} B/weight, + 1.1 KB of lookup tables per layer"
    )
    fp16_up = ", ".join(bnb["fp32_patterns"]["fp16"]) or "nothing"
    line = f"fp32 upcast (transformers _keep_in_fp32_modules, fp16 loads only; a bf16 load runs them in bf16): {fp16_up}"
    if not family.fp16_ok:
        line += (f"; load_blip2 never loads {family.title} in fp16 (bf16, or fp32 on GPUs without bf16), so its "
                 "fp16 column is for comparison only")
    lines.append(line)
    if plan["tied_weights"]:
        lines.append(f"tied, counted once: {', '.join(f'{k} = {v}' for k, v in plan['tied_weights'].items())}")
    if plan["untied_output_embedding"]:
        lines.append("lm_head is a tensor of its own: the checkpoint stores it apart from the input embedding "
                     "(tie_word_embeddings false), and transformers then does not tie them")
    lora = plan["lora"]
    lines.append(
        f"LoRA r={lora['r']} on {lora['modules']} Linear modules ({lora['regex']}"
        f"{', auto: the ' + family.title + ' default' if lora['auto'] else ''}): {lora['params']:,} params; "
        f"fp32 params + grads + AdamW moments = {_gib(lora['total_bytes'], unit)} {unit_name}"
    )
    q = plan["qlora_training"]
    lines.append(
        f"QLoRA training, weights + LoRA state: nf4 language model + {compute} rest {_gib(q['weights_bytes'], unit)} + "
        f"{_gib(q['lora_bytes'], unit)} = {_gib(q['total_bytes'], unit)} {unit_name} (src.training.freeze_base casts "
        "nothing to fp32)"
    )
    host = plan["host_ram"]
    lines.append(f"host RAM while loading: beyond the Python process (torch and CUDA libraries, 2-3 GB), about one "
                 f"tensor at a time, streamed from the memory-mapped checkpoint to the device; the largest is "
                 f"{host['largest_tensor']} ({host['largest_tensor_params']:,} params, "
                 f"{host['largest_tensor_fp32_bytes'] / 2**20:,.0f} MiB in fp32)")
    lines.append("Activations, CUDA context and allocator overhead are not estimated. Training keeps no activation of "
                 "the vision tower or the Q-Former (their image features are computed under no_grad; "
                 "python -m bench.train_step compares the two steps on the twin).")
    return "\n".join(lines)
