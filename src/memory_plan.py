"""How much memory BLIP-2's weights take as a run loads them, and what QLoRA adds, counted on the meta device
without loading a weight; `finetune_vqav2_lora.py --memory_plan_only=True` prints it (method: docs/details.md)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .errors import UserError
from .family import AUTO, FAMILIES, Family, LoraSettings, family_of, lora_target_regex, lora_targets
from .files import read_json

_HERE = Path(__file__).parent
ARCHITECTURE_JSON = _HERE / "blip2_opt_2.7b_architecture.json"  # the default model's (DEFAULT_MODEL_ID)
# Hub ids whose architecture ships with the repo, so a plan never needs the network (sources: docs/checkpoints.md)
KNOWN_ARCHITECTURES = {
    "Salesforce/blip2-opt-2.7b": ARCHITECTURE_JSON,
    "Salesforce/blip2-opt-6.7b": _HERE / "blip2_opt_6.7b_architecture.json",
    "Salesforce/blip2-flan-t5-xl": _HERE / "blip2_flan_t5_xl_architecture.json",
    "Salesforce/blip2-flan-t5-xxl": _HERE / "blip2_flan_t5_xxl_architecture.json",
}

# bitsandbytes 4-bit storage (bnb.functional.quantize_4bit, Linear4bit's defaults)
NF4_BLOCKSIZE = 64  # weights per absmax
NF4_NESTED_BLOCKSIZE = 256  # absmax values per second-level fp32 absmax (double quantisation)
NF4_TABLE_BYTES = 16 * 4 + 256 * 4 + 4  # per layer, fp32: the NF4 code, the absmax' 8-bit map, their mean
LORA_STATE_BYTES = 4 + 4 + 8  # per LoRA parameter, fp32 as peft keeps it: weight, gradient, AdamW's two moments
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # a compute dtype's column
GIB = 1024**3


def nf4_weight_bytes(numel: int) -> int:
    """Bytes of one NF4 weight with double quantisation: packed 4-bit codes, a uint8 absmax per 64 weights,
    an fp32 absmax per 256 blocks, and the tables."""
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    return (numel + 1) // 2 + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCKSIZE) + NF4_TABLE_BYTES


def int8_weight_bytes(out_features: int, in_features: int) -> int:
    """LLM.int8 (Linear8bitLt, has_fp16_weights=False): int8 weight plus one fp32 scale (SCB) per output row."""
    return out_features * in_features + 4 * out_features


def _shipped(config: Any) -> Any:
    """The architecture file shipped for a known Hub id (None: the default model's), else `config` itself."""
    if config is None:
        return ARCHITECTURE_JSON
    return KNOWN_ARCHITECTURES.get(str(config), config) if not Path(str(config)).exists() else config


def load_blip2_config(config: Any = None):
    """A Blip2Config from a Blip2Config, a model folder (src.preflight.check_model_dir checked it), a Hub id
    (known ids: the shipped architecture, no network) or None (the default model)."""
    from transformers import Blip2Config

    if isinstance(config, Blip2Config):
        return config
    try:
        return Blip2Config.from_pretrained(str(_shipped(config)))
    except (OSError, ValueError) as e:
        raise UserError(f"no BLIP-2 config at {config!r} ({type(e).__name__}); pass a model folder "
                        f"or one of {', '.join(KNOWN_ARCHITECTURES)}") from None


def checkpoint_tensor_names(config: Any) -> set[str] | None:
    """The tensor names of a model folder's safetensors checkpoint (headers only), or None without one."""
    from safetensors import safe_open

    if not isinstance(config, (str, Path)):
        return None
    folder = Path(_shipped(config))
    if (folder / "model.safetensors.index.json").is_file():
        return set(read_json(folder / "model.safetensors.index.json", "checkpoint index")["weight_map"])
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return set(f.keys())
    return None


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
    """Whether loading leaves the output embedding a tensor of its own although the model ties it when built: read
    off the checkpoint's tensor names, else off `tie_word_embeddings: false` (Flan-T5; docs/details.md)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embed.weight:
        return False
    target = _output_embedding_name(model)
    source = model.all_tied_weights_keys.get(target)
    if checkpoint_keys is not None:
        return source is not None and {target, source} <= checkpoint_keys
    text = model.config.text_config
    return text.tie_word_embeddings is False or getattr(text, "scale_decoder_outputs", True) is False


def bnb_modules_to_not_convert(model) -> list[str]:
    """What transformers' bitsandbytes quantizers pass to `replace_with_bnb_linear` as modules_to_not_convert,
    with `llm_int8_skip_modules` set as `load_blip2` sets it."""
    from transformers.quantizers.base import HfQuantizer

    skip = list(family_of(model.config).quantization_skip)
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


def _part_of(name: str, param, model) -> str:
    """The part of BLIP-2 a parameter counts to: a top-level module, or a piece of the language model."""
    if param is model.get_input_embeddings().weight:
        return "language_model.embed_tokens"  # OPT's embed_tokens, T5's shared (its encoder's and decoder's)
    head = model.get_output_embeddings()
    if head is not None and param is head.weight:
        return "language_model.lm_head"  # only reached when the output embedding is not tied
    if not name.startswith("language_model."):
        return name.split(".", 1)[0]
    for piece, part in ((".encoder.block.", "encoder_layers"), (".decoder.block.", "decoder_layers"),
                        (".layers.", "layers"), ("embed_positions", "embed_positions")):
        if piece in name:
            return f"language_model.{part}"
    return "language_model.final_norm_etc"


_LAYER_INDEX = re.compile(r"\.(?:layers|block)\.(\d+)\.")


def plan_memory(config: Any, *, lora: LoraSettings, compute_dtype: str = "bfloat16") -> dict:
    """Parameters and weight bytes of BLIP-2 (`config` as `load_blip2_config` takes it) per part and precision, plus
    `lora` and its training state; `compute_dtype` is what bitsandbytes leaves unquantised in the int8 / nf4 columns."""
    import torch

    cfg = load_blip2_config(config)
    family = family_of(cfg)
    model = build_meta_model(cfg, checkpoint_tensor_names(config))
    compute = getattr(torch, compute_dtype)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": compute, "nf4": compute}
    parts = _bytes_per_part(model, bnb_quantized_linears(model, bnb_modules_to_not_convert(model)), dtypes)
    lora_plan = _lora_plan(model, lora, family, parts)
    precisions = {p: {"bytes": sum(part["bytes"][p] for part in parts.values())} for p in PRECISIONS}
    largest = max(model.named_parameters(), key=lambda kv: kv[1].numel())
    return {
        "model": type(model).__name__,
        "family": family.name,
        "compute_dtype": compute_dtype,
        "total_params": sum(p["params"] for p in parts.values()),
        "parts": parts,
        "tied_weights": dict(model.all_tied_weights_keys),
        "untied_output_embedding": "language_model.lm_head" in parts,
        "precisions": precisions,
        "lora": lora_plan,
        # src.training.freeze_base keeps every frozen weight in the dtype it was loaded in
        "qlora_training": {"weights_bytes": precisions["nf4"]["bytes"], "lora_bytes": lora_plan["total_bytes"],
                           "total_bytes": precisions["nf4"]["bytes"] + lora_plan["total_bytes"]},
        # load_blip2 streams one tensor at a time from the memory-mapped checkpoint onto the device (device_map)
        "host_ram": {"largest_tensor": largest[0], "largest_tensor_params": largest[1].numel()},
    }


def _bytes_per_part(model, quantized: dict[str, Any], dtypes: dict) -> dict[str, dict]:
    """{part: params, layers, bytes per precision}; what transformers loads in fp32 (its dtype plan) counts 4 bytes."""
    import torch

    quantized_weights = {f"{name}.weight": module for name, module in quantized.items()}
    upcast = {p: [re.compile(k.replace("*", ".*")) for k, v in model._get_dtype_plan(d).items() if v == torch.float32]
              for p, d in dtypes.items()}
    parts: dict[str, dict] = {}
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        part = parts.setdefault(_part_of(name, param, model), {"params": 0, "bytes": dict.fromkeys(PRECISIONS, 0)})
        n = param.numel()
        part["params"] += n
        if layer := _LAYER_INDEX.search(name):
            part.setdefault("layer_indices", set()).add(int(layer.group(1)))
        module = quantized_weights.get(name)
        for precision, dtype in dtypes.items():
            if module is not None and precision == "int8":
                part["bytes"][precision] += int8_weight_bytes(module.out_features, module.in_features)
            elif module is not None and precision == "nf4":
                part["bytes"][precision] += nf4_weight_bytes(n)
            else:
                part["bytes"][precision] += n * (4 if any(p.search(name) for p in upcast[precision]) else dtype.itemsize)
    for part in parts.values():
        if "layer_indices" in part:
            part["layers"] = len(part.pop("layer_indices"))
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    if buffers:
        parts["buffers"] = {"params": 0, "bytes": dict.fromkeys(PRECISIONS, buffers)}
    return parts


def _lora_plan(model, lora: LoraSettings, family: Family, parts: dict) -> dict:
    """The Linear modules peft wraps for `lora` (as src.training.add_lora names them), their parameters (also
    per part) and fp32 training state."""
    import torch.nn as nn

    targets = lora_targets(lora.target_modules, family, lora.scope)
    regex = lora_target_regex(targets, lora.scope)
    modules = {name: m for name, m in model.named_modules() if name and re.fullmatch(regex, name)}
    not_linear = [n for n, m in modules.items() if not isinstance(m, nn.Linear)]
    if not_linear:
        raise UserError(f"LoRA targets match modules that are not Linear layers: {', '.join(not_linear[:5])}")
    for name, m in modules.items():
        part = parts[_part_of(f"{name}.weight", m.weight, model)]
        part["lora_params"] = part.get("lora_params", 0) + lora.r * (m.in_features + m.out_features)
    params = sum(part.get("lora_params", 0) for part in parts.values())
    return {
        "r": lora.r,
        "targets": list(targets),
        "auto": lora.target_modules in (AUTO, (AUTO,)),  # the targets are the model family's
        "scope": lora.scope,
        "regex": regex,
        "modules": len(modules),
        "parts": sorted({name.split(".")[0] for name in modules}),  # e.g. ["language_model", "qformer"]
        "params": params,
        "total_bytes": params * LORA_STATE_BYTES,
    }


def format_plan(plan: dict, quantization: str) -> str:
    """The weights of each part as `quantization` ("4bit" or "none") loads them, the LoRA parameters training adds
    to each part, and what the weights and the LoRA state take together."""
    family, compute = FAMILIES[plan["family"]], SHORT[plan["compute_dtype"]]
    column = "nf4" if quantization == "4bit" else compute
    load = f"nf4 language model + {compute} rest" if column == "nf4" else compute
    unit, unit_name = (GIB, "GiB") if plan["precisions"]["fp32"]["bytes"] >= GIB else (2**20, "MiB")  # the twin: MiB
    rows = [(key.replace("language_model.", "LM ").replace("_", " ") + (f" ({p['layers']})" if "layers" in p else ""),
             p["params"], p["bytes"][column], p.get("lora_params", 0)) for key, p in plan["parts"].items()]
    lora = plan["lora"]
    rows.append(("total", plan["total_params"], plan["precisions"][column]["bytes"], lora["params"]))
    width = max(len(row[0]) for row in rows) + 2
    lines = [f"***** BLIP-2 weight memory ({plan['model']} on {family.title}; {load}; {unit_name}) *****",
             f"{'part':<{width}}{'params':>15}{'weights':>10}{'LoRA params':>14}"]
    lines += [f"{label:<{width}}{n:>15,}{nbytes / unit:>10.3f}{lora_n:>14,}" for label, n, nbytes, lora_n in rows]
    if plan["tied_weights"]:
        lines.append(f"tied, counted once: {', '.join(f'{k} = {v}' for k, v in plan['tied_weights'].items())}")
    weights = plan["precisions"][column]["bytes"]
    lines.append(
        f"LoRA r={lora['r']} on {lora['modules']} Linear modules ({lora['regex']}"
        f"{', auto: the ' + family.title + ' default' if lora['auto'] else ''}): {lora['params']:,} params; "
        f"fp32 params + grads + AdamW moments = {lora['total_bytes'] / unit:.3f} {unit_name}")
    lines.append(f"training, weights + LoRA state: {weights / unit:.3f} + {lora['total_bytes'] / unit:.3f} = "
                 f"{(weights + lora['total_bytes']) / unit:.3f} {unit_name}")
    host = plan["host_ram"]
    lines.append(f"host RAM while loading: the Python process (torch and CUDA libraries, 2-3 GB) and about one tensor "
                 f"at a time; the largest is {host['largest_tensor']} ({host['largest_tensor_params']:,} params, "
                 f"{4 * host['largest_tensor_params'] / 2**20:,.0f} MiB in fp32)")
    adapted = [label for part, label in (("vision_model", "vision tower"), ("qformer", "Q-Former"),
                                         ("language_projection", "projection")) if part in lora["parts"]]
    lines.append("Activations, CUDA context and allocator overhead are not estimated" + (
        f"; the image encoder runs with gradients (LoRA in its {', '.join(adapted)})" if adapted else "") + ".")
    return "\n".join(lines)
