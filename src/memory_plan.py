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
LM_HEAD = "language_model.lm_head.weight"  # BLIP-2's output embedding, OPT's and T5's


def nf4_weight_bytes(numel: int) -> int:
    """Bytes of one NF4 weight with double quantisation: 4-bit codes, uint8 absmax per block, fp32 ones, tables."""
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    return (numel + 1) // 2 + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCKSIZE) + NF4_TABLE_BYTES


def load_blip2_config(config: Any = None):
    """A Blip2Config from a Blip2Config, a model folder (src.preflight.check_model_dir checked it), a Hub id
    (known ids: the shipped architecture, no network) or None (the default model)."""
    from transformers import Blip2Config

    if isinstance(config, Blip2Config):
        return config
    source = ARCHITECTURE_JSON if config is None else config
    if not Path(str(source)).exists():  # a known Hub id: the architecture shipped here, no network
        source = KNOWN_ARCHITECTURES.get(str(config), config)
    try:
        return Blip2Config.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise UserError(f"no BLIP-2 config at {config!r} ({type(e).__name__}); pass a model folder "
                        f"or one of {', '.join(KNOWN_ARCHITECTURES)}") from None


def build_meta_model(config: Any = None):
    """Blip2ForConditionalGeneration of `config` (as load_blip2_config takes it) on the meta device: shapes, no
    memory; its output embedding untied where loading unties it (`_loading_unties`)."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(load_blip2_config(config))
        if _loading_unties(model, config):
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(torch.empty_like(head.weight), requires_grad=False)
            model.all_tied_weights_keys.pop(LM_HEAD, None)  # as tie_weights leaves it after loading
            model.language_model.all_tied_weights_keys.pop(LM_HEAD.removeprefix("language_model."), None)
    return model


def _loading_unties(model, config: Any) -> bool:
    """Whether loading leaves the output embedding a tensor of its own although the model ties it when built: read
    off a model folder's safetensors tensor names, else off `tie_word_embeddings: false` (Flan-T5; docs/details.md)."""
    from safetensors import safe_open

    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        return False
    folder = Path(config) if isinstance(config, (str, Path)) else None  # a model folder, or a Hub id
    if folder and (folder / "model.safetensors.index.json").is_file():
        names = set(read_json(folder / "model.safetensors.index.json", "checkpoint index")["weight_map"])
    elif folder and (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            names = set(f.keys())
    else:
        text = model.config.text_config
        return text.tie_word_embeddings is False or getattr(text, "scale_decoder_outputs", True) is False
    source = model.all_tied_weights_keys.get(LM_HEAD)
    return source is not None and {LM_HEAD, source} <= names


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


def _part_of(name: str, param, model) -> str:
    """The part of BLIP-2 a parameter counts to: a top-level module, or a piece of the language model."""
    if param is model.get_input_embeddings().weight:
        return "language_model.embed_tokens"  # OPT's embed_tokens, T5's shared (its encoder's and decoder's)
    if param is model.get_output_embeddings().weight:
        return "language_model.lm_head"  # only reached when the output embedding is not tied
    if not name.startswith("language_model."):
        return name.split(".", 1)[0]
    pieces = {".encoder.block.": "encoder_layers", ".decoder.block.": "decoder_layers", ".layers.": "layers",
              "embed_positions": "embed_positions"}
    return "language_model." + next((part for piece, part in pieces.items() if piece in name), "final_norm_etc")


_LAYER_INDEX = re.compile(r"\.(?:layers|block)\.(\d+)\.")


def plan_memory(config: Any, *, lora: LoraSettings, compute_dtype: str = "bfloat16") -> dict:
    """Parameters and weight bytes of BLIP-2 (`config` as `load_blip2_config` takes it) per part and precision, plus
    `lora` and its training state; `compute_dtype` is what bitsandbytes leaves unquantised in the int8 / nf4 columns."""
    model = build_meta_model(config)
    family = family_of(model.config)
    parts = _bytes_per_part(model, compute_dtype)
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


def _bytes_per_part(model, compute_dtype: str) -> dict[str, dict]:
    """{part: params, layers, bytes per precision}; what transformers loads in fp32 (its dtype plan) counts 4 bytes."""
    import torch

    compute = getattr(torch, compute_dtype)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": compute, "nf4": compute}
    quantized = {f"{name}.weight": module for name, module in bnb_quantized_linears(model).items()}
    upcast = {p: [re.compile(k.replace("*", ".*")) for k, v in model._get_dtype_plan(d).items() if v == torch.float32]
              for p, d in dtypes.items()}
    parts: dict[str, dict] = {}
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        part = parts.setdefault(_part_of(name, param, model),
                                {"params": 0, "bytes": dict.fromkeys(PRECISIONS, 0), "layer_indices": set()})
        n = param.numel()
        part["params"] += n
        if layer := _LAYER_INDEX.search(name):
            part["layer_indices"].add(int(layer.group(1)))
        module = quantized.get(name)
        for precision, dtype in dtypes.items():
            nbytes = n * (4 if any(u.search(name) for u in upcast[precision]) else dtype.itemsize)
            if module is not None:  # LLM.int8: an int8 weight and an fp32 scale (SCB) per output row
                nbytes = {"int8": n + 4 * module.out_features, "nf4": nf4_weight_bytes(n)}.get(precision, nbytes)
            part["bytes"][precision] += nbytes
    for part in parts.values():
        if layers := part.pop("layer_indices"):
            part["layers"] = len(layers)
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
