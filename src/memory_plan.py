"""How much memory BLIP-2's weights take at each precision, and what QLoRA adds, counted on the meta device without
loading a weight; `finetune_vqav2_lora.py --memory_plan_only=True` prints it (method: docs/details.md)."""

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


def nf4_weight_bytes(numel: int) -> int:
    """Bytes bitsandbytes holds for one NF4 weight, as load_blip2 quantises it: packed 4-bit codes plus its quant_state
    (double quantisation: a uint8 absmax per 64 weights, an fp32 one per 256 blocks, two small lookup tables)."""
    packed = (numel + 1) // 2
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
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


def resolve_lora_targets(targets, family: Family, scope: str = "language_model") -> str | tuple[str, ...]:
    """TARGET_MODULES for `family`: "auto" or ("auto",) is the family's layer names for `scope`
    (src.family.lora_targets); names are checked there; any other str is a peft regex and stays as it is."""
    if isinstance(targets, str) and targets != AUTO:
        return targets
    return lora_targets(targets, family, scope)


def plan_memory(config: Any, *, lora: LoraSettings, compute_dtype: str = "bfloat16") -> dict:
    """Parameters and weight bytes of BLIP-2 (`config` as `load_blip2_config` takes it) per part and precision, plus
    `lora` and its training state; `compute_dtype` is what bitsandbytes leaves unquantised in the int8 / nf4 columns."""
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
    parts = _bytes_per_part(model, quantized, dtypes)
    total_params = sum(p["params"] for p in parts.values())
    precisions = {}
    for precision in PRECISIONS:
        total = sum(p["bytes"][precision] for p in parts.values())
        precisions[precision] = {"dtype": str(dtypes[precision]).removeprefix("torch."), "bytes": total}

    requested = lora.target_modules
    auto = requested == AUTO or not isinstance(requested, str) and tuple(requested) == (AUTO,)
    lora = _lora_plan(model, lora.r, resolve_lora_targets(requested, family, lora.scope), lora.scope, auto=auto)
    # src.training.freeze_base keeps every frozen weight in the dtype it was loaded in
    qlora = {
        "weights_bytes": precisions["nf4"]["bytes"],
        "lora_bytes": lora["total_bytes"],
        "total_bytes": precisions["nf4"]["bytes"] + lora["total_bytes"],
    }

    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    largest = max(model.named_parameters(), key=lambda kv: kv[1].numel())
    return {
        "model": type(model).__name__,
        "family": family.name,
        "transformers_version": transformers.__version__,
        "compute_dtype": compute_dtype,
        "total_params": total_params,
        "parts": parts,
        "tied_weights": dict(tied),
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


def _bytes_per_part(model, quantized: dict[str, Any], dtypes: dict) -> dict[str, dict]:
    """{part: params, quantised params, bytes per precision}."""
    import torch

    quantized_weights = {f"{name}.weight": module for name, module in quantized.items()}
    upcast = {p: [re.compile(k.replace("*", ".*")) for k in fp32_patterns(model, d)] for p, d in dtypes.items()}
    embed_weight = model.get_input_embeddings().weight
    lm_head = model.get_output_embeddings()
    lm_head_weight = lm_head.weight if lm_head is not None else None

    parts: dict[str, dict] = {}
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
    for part in parts.values():
        if "layer_indices" in part:
            part["layers"] = len(part.pop("layer_indices"))
    buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    if buffers:
        parts["buffers"] = {"params": 0, "quantized_params": 0, "bytes": dict.fromkeys(PRECISIONS, buffers)}
    order = list(PART_LABELS) + ["buffers"]
    return dict(sorted(parts.items(), key=lambda kv: order.index(kv[0])))


def _lora_plan(model, lora_r: int, lora_targets, lora_scope, auto: bool = False) -> dict:
    """The LoRA modules, parameters and fp32 training state (weights, gradients, AdamW moments)."""
    regex, lora_modules = _lora_modules(model, lora_targets, lora_scope)
    lora_params = sum(lora_r * (m.in_features + m.out_features) for m in lora_modules.values())
    return {
        "r": lora_r,
        "targets": lora_targets if isinstance(lora_targets, str) else list(lora_targets),
        "auto": auto,  # the targets are the model family's ("auto")
        "scope": lora_scope,
        "regex": regex,
        "modules": len(lora_modules),
        "parts": sorted({name.split(".")[0] for name in lora_modules}),  # e.g. ["language_model", "qformer"]
        "params": lora_params,
        "total_bytes": lora_params * (LORA_PARAM_BYTES + LORA_GRAD_BYTES + ADAMW_STATE_BYTES),
    }


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
    encoder = {"vision_model": "vision tower", "qformer": "Q-Former", "language_projection": "projection"}
    adapted = [label for part, label in encoder.items() if part in lora["parts"]]
    lines.append("Activations, CUDA context and allocator overhead are not estimated. " + (
        f"The image encoder runs with gradients (LoRA in its {', '.join(adapted)}): training keeps its activations "
        "from the first adapted part on" if adapted else "Training keeps no activation of the vision tower or the "
        "Q-Former (their image features are computed under no_grad; python -m bench.train_step compares the two "
        "steps on the twin)") + ".")
    return "\n".join(lines)
