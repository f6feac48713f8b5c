"""Weight memory of BLIP-2 as a run loads it, and what QLoRA adds, counted on the meta device without loading a
weight (method: docs/details.md); with --model_id, one model's table, else every public checkpoint and
Salesforce/blip2-opt-2.7b against its model card.

    python -m bench.memory_plan --model_id=Salesforce/blip2-flan-t5-xl   # one model (a Hub id or a model folder)
    python -m bench.memory_plan --model_id=outputs/tiny-blip2 --lora_scope=qformer --use_4bit=False

With --model_id it prints the weights of each part as the fine-tuning script would load them on this machine
(4-bit by default), the LoRA parameters its settings add to each part (--lora_r, --lora_scope and
--target_modules change them here) and what weights and LoRA state take together; a known Hub id needs no
network. Without it, one row per checkpoint whose architecture ships with the repo (blip2-opt-2.7b, -opt-6.7b,
-flan-t5-xl, -flan-t5-xxl: parameters, bf16 and NF4 weight memory, QLoRA weights + LoRA state, LoRA
size), then the plan for blip2-opt-2.7b with every precision side by side (no weights, no GPU),
reproduces the model card's table ("float16/bfloat16 7.21 GB, int8 3.61 GB, int4 1.8 GB",
largest layer 490.94 MB) the way `accelerate estimate-memory` computes it, explains the
difference line by line with numbers that add up exactly, and replaces this script's section
of bench/RESULTS.md.

    python -m bench.memory_plan                        # about 15 s on CPU, no download
    python -m bench.memory_plan --write_results=False  # print only
    python -m bench.memory_plan --gpu_check=True       # on a CUDA machine: also load a 2-layers-per-tower model with
                                                       # the real shapes in bf16 / 8-bit / 4-bit and measure it

The plans are for the fine-tuning script's LoRA (its settings block, `bench.finetune_lora()`; TARGET_MODULES
"auto" is each model family's layers).

A GPU check's figures go to outputs/bench_memory_plan/gpu_check.json; later runs add them to RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

from bench import finetune_lora
from bench.results_md import write_section
from src.config import apply_overrides
from src.errors import UserError, run_main
from src.family import AUTO, FAMILIES, Family, LoraSettings, family_of, lora_target_regex, lora_targets
from src.files import read_json, write_json
from src.modeling import (GIB, KNOWN_ARCHITECTURES, NF4_BLOCKSIZE, bnb_modules_to_not_convert, bnb_quantized_linears,
                          build_meta_model, compute_dtype, default_device, load_blip2, load_blip2_config)
from src.preflight import check_model_dir, check_value

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
MODEL_ID: str = ""  # a Hub id or model folder: print only its table, as the fine-tuning script would load it
                    # ("" = every shipped checkpoint, the model card and RESULTS.md)
USE_4BIT: bool = True  # with MODEL_ID: the fine-tuning script's USE_4BIT (False: every weight in the compute dtype)
LORA_R: int | None = None  # with MODEL_ID: the LoRA rank (None = the fine-tuning script's LORA_R)
LORA_SCOPE: str = ""  # with MODEL_ID: where the LoRA goes ("" = the fine-tuning script's LORA_SCOPE)
TARGET_MODULES: str = ""  # with MODEL_ID: comma-separated layer names or "auto" ("" = the script's TARGET_MODULES)
COMPUTE_DTYPE: str = "auto"  # dtype of what bitsandbytes leaves unquantised; "auto" = with MODEL_ID what the
                             # fine-tuning script would use on this machine, else bfloat16 (load_blip2 on a bf16 GPU)
GPU_CHECK: bool = False  # on CUDA: load a BLIP-2 with the real layer shapes (2 layers per tower) and measure it
GPU_CHECK_DIR: str = "outputs/bench_memory_plan"  # the GPU check's sample model and gpu_check.json (read back by CPU runs)
WRITE_RESULTS: bool = True  # replace this script's section of bench/RESULTS.md
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

_RESULTS_MD = REPO / "bench" / "RESULTS.md"

# bitsandbytes 4-bit storage beside NF4_BLOCKSIZE (bnb.functional.quantize_4bit, Linear4bit's defaults)
NF4_NESTED_BLOCKSIZE = 256  # absmax values per second-level fp32 absmax (double quantisation)
NF4_TABLE_BYTES = 16 * 4 + 256 * 4 + 4  # per layer, fp32: the NF4 code, the absmax' 8-bit map, their mean
LORA_STATE_BYTES = 4 + 4 + 8  # per LoRA parameter, fp32 as peft keeps it: weight, gradient, AdamW's two moments
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # a compute dtype's column


def nf4_weight_bytes(numel: int) -> int:
    """Bytes of one NF4 weight with double quantisation: 4-bit codes, uint8 absmax per block, fp32 ones, tables."""
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    return (numel + 1) // 2 + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCKSIZE) + NF4_TABLE_BYTES


def fp32_patterns(model, compute_dtype: str) -> dict[str, list[str]]:
    """Per precision column, the parameter-name patterns transformers loads in fp32 when asked for its dtype (the
    model's _get_dtype_plan); int8 and nf4 leave what they do not quantise in `compute_dtype`."""
    import torch

    compute = getattr(torch, compute_dtype)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": compute, "nf4": compute}
    return {p: sorted(k for k, v in model._get_dtype_plan(d).items() if v == torch.float32) for p, d in dtypes.items()}


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
    itemsize = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": compute.itemsize, "nf4": compute.itemsize}
    quantized = {f"{name}.weight": module for name, module in bnb_quantized_linears(model).items()}
    patterns = fp32_patterns(model, compute_dtype)
    upcast = {p: [re.compile(k.replace("*", ".*")) for k in keys] for p, keys in patterns.items()}
    parts: dict[str, dict] = {}
    for name, param in model.named_parameters():  # shared (tied) parameters come once
        part = parts.setdefault(_part_of(name, param, model),
                                {"params": 0, "bytes": dict.fromkeys(PRECISIONS, 0), "layer_indices": set()})
        n = param.numel()
        part["params"] += n
        if layer := _LAYER_INDEX.search(name):
            part["layer_indices"].add(int(layer.group(1)))
        module = quantized.get(name)
        for precision, size in itemsize.items():
            nbytes = n * (4 if any(u.search(name) for u in upcast[precision]) else size)
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


def _unit(plan: dict) -> tuple[int, str]:
    """GiB, or MiB for a model whose weights would print as zeros in GiB (the twin)."""
    return (GIB, "GiB") if plan["precisions"]["fp32"]["bytes"] >= GIB else (2**20, "MiB")


def _lora_line(plan: dict, unit: int, unit_name: str) -> str:
    lora, family = plan["lora"], FAMILIES[plan["family"]]
    return (f"LoRA r={lora['r']} on {lora['modules']} Linear modules ({lora['regex']}"
            f"{', auto: the ' + family.title + ' default' if lora['auto'] else ''}): {lora['params']:,} params; "
            f"fp32 params + grads + AdamW moments = {lora['total_bytes'] / unit:.3f} {unit_name}")


def format_plan(plan: dict, quantization: str) -> str:
    """The weights of each part as `quantization` ("4bit" or "none") loads them, the LoRA parameters training adds
    to each part, and what the weights and the LoRA state take together."""
    family, compute = FAMILIES[plan["family"]], SHORT[plan["compute_dtype"]]
    column = "nf4" if quantization == "4bit" else compute
    load = f"nf4 language model + {compute} rest" if column == "nf4" else compute
    unit, unit_name = _unit(plan)
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
    lines.append(_lora_line(plan, unit, unit_name))
    weights = plan["precisions"][column]["bytes"]
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


def model_table() -> str:
    """MODEL_ID's table as the fine-tuning script would load it on this machine, with its LoRA (LORA_R, LORA_SCOPE
    and TARGET_MODULES here replace its values)."""
    check_model_dir(MODEL_ID)  # a folder with no BLIP-2 model: one line (a Hub id: its architecture, below)
    lora = finetune_lora()
    targets = tuple(TARGET_MODULES.split(",")) if TARGET_MODULES else lora.target_modules
    lora = dataclasses.replace(lora, r=LORA_R or lora.r, scope=LORA_SCOPE or lora.scope, target_modules=targets)
    dtype = COMPUTE_DTYPE
    if dtype == "auto":  # what load_blip2 computes in on this machine
        dtype = str(compute_dtype(default_device(), family_of(load_blip2_config(MODEL_ID)))).removeprefix("torch.")
    return format_plan(plan_memory(MODEL_ID, lora=lora, compute_dtype=dtype), "4bit" if USE_4BIT else "none")


# The "Memory requirements" table of the Salesforce/blip2-opt-2.7b model card (made with `accelerate estimate-memory`)
MODEL_CARD = {  # dtype: (largest layer or residual group, total size, training using Adam)
    "float32": ("490.94 MB", "14.43 GB", "57.72 GB"),
    "float16/bfloat16": ("245.47 MB", "7.21 GB", "28.86 GB"),
    "int8": ("122.73 MB", "3.61 GB", "14.43 GB"),
    "int4": ("61.37 MB", "1.8 GB", "7.21 GB"),
}
_CARD_DIVISOR = {"float32": 1, "float16/bfloat16": 2, "int8": 4, "int4": 8}  # accelerate's gather_data
_CARD_VS_PLAN = {"float32": "fp32", "float16/bfloat16": "bf16", "int8": "int8", "int4": "nf4"}
OPT_DEFAULT_VOCAB = 50272  # OPTConfig's default, what the Hub config meant before it listed vocab_size 50304


def accelerate_estimate(config) -> dict:
    """What `accelerate estimate-memory` measures, minus the Hub: AutoModel.from_config in fp32 under
    accelerate's init_empty_weights, then calculate_maximum_sizes (accelerate/commands/estimate.py)."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModel

    with init_empty_weights():
        model = AutoModel.from_config(config, dtype=torch.float32)
    total, (largest, largest_names) = calculate_maximum_sizes(model)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return {
        "model": type(model).__name__,
        "fp32_bytes": total,
        "params_counted": total // 4,
        "largest_bytes": largest,
        "largest_names": largest_names,
        "still_tied": head is not None and head.weight is embed,
        "embedding_params": embed.numel(),
    }


def bnb_details(config, compute_dtype: str = "bfloat16") -> dict:
    """What transformers quantises, skips and loads in fp32 for BLIP-2 `config` (the plan's rules, the
    transformers functions it asks), per precision column."""
    model = build_meta_model(config)
    not_convert = bnb_modules_to_not_convert(model)
    quantized = bnb_quantized_linears(model)
    return {
        "modules_to_not_convert": not_convert,
        "quantized_linears": sorted(quantized),
        "quantized_linear_count": len(quantized),
        "quantized_params": sum(m.weight.numel() for m in quantized.values()),
        "fp32_patterns": fp32_patterns(model, compute_dtype),
        "keep_in_fp32_modules": sorted(model._keep_in_fp32_modules),
    }


PART_LABELS = {
    "vision_model": "vision_model",
    "query_tokens": "query_tokens",
    "qformer": "qformer",
    "language_projection": "language_projection",
    "language_model.embed_tokens": "LM token embedding",  # format_full_plan adds what is tied to it
    "language_model.lm_head": "LM lm_head (untied)",
    "language_model.embed_positions": "LM embed_positions",
    "language_model.layers": "LM decoder layers",  # OPT
    "language_model.encoder_layers": "LM encoder layers",  # T5
    "language_model.decoder_layers": "LM decoder layers",  # T5
    "language_model.final_norm_etc": "LM final norm etc.",
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


def format_full_plan(plan: dict) -> str:
    """Every precision column of `plan` (with its "bnb" details) and the notes that make the numbers readable."""
    import transformers

    family = FAMILIES[plan["family"]]
    compute = SHORT[plan["compute_dtype"]]
    heads = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "int8": f"int8+{compute}", "nf4": f"nf4+{compute}"}
    unit, unit_name = _unit(plan)
    order = [*PART_LABELS, "buffers"]
    parts = dict(sorted(plan["parts"].items(), key=lambda kv: order.index(kv[0])))
    labels = {key: _part_label(key, part, plan) for key, part in parts.items()}
    width = max(len(label) for label in labels.values()) + 4
    lines = [
        f"***** BLIP-2 weight memory plan ({plan['model']} on {family.title}, transformers "
        f"{transformers.__version__}, {unit_name}) *****",
        f"{'part':<{width}}{'params':>15}" + "".join(f"{heads[p]:>11}" for p in PRECISIONS),
    ]
    for key, part in parts.items():
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
    lines.append(_lora_line(plan, unit, unit_name))
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
                 f"{4 * host['largest_tensor_params'] / 2**20:,.0f} MiB in fp32)")
    encoder = {"vision_model": "vision tower", "qformer": "Q-Former", "language_projection": "projection"}
    adapted = [label for part, label in encoder.items() if part in lora["parts"]]
    lines.append("Activations, CUDA context and allocator overhead are not estimated. " + (
        f"The image encoder runs with gradients (LoRA in its {', '.join(adapted)}): training keeps its activations "
        "from the first adapted part on" if adapted else "Training keeps no activation of the vision tower or the "
        "Q-Former (their image features are computed under no_grad; python -m bench.train_step compares the two "
        "steps on the twin)") + ".")
    return "\n".join(lines)


def unquantized_params_by_dtype(plan: dict, precision: str) -> dict[str, int]:
    """Parameters of blip2-opt-2.7b that the int8 / nf4 column leaves unquantised, per dtype transformers loads them in."""
    quantized = {f"{name}.weight" for name in plan["bnb"]["quantized_linears"]}
    upcast = [re.compile(k.replace("*", ".*")) for k in plan["bnb"]["fp32_patterns"][precision]]
    kept: dict[str, int] = {}
    for name, param in build_meta_model(None).named_parameters():  # tied ones once
        if name not in quantized:
            dtype = "float32" if any(u.search(name) for u in upcast) else plan["compute_dtype"]
            kept[dtype] = kept.get(dtype, 0) + param.numel()
    return kept


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


def card_row(estimate: dict, card_dtype: str) -> tuple[str, str, str]:
    """The card's three strings, as accelerate formats them (convert_bytes: 1024-based 'MB'/'GB')."""
    from accelerate.utils import convert_bytes

    d = _CARD_DIVISOR[card_dtype]
    total = estimate["fp32_bytes"] / d
    return convert_bytes(estimate["largest_bytes"] / d), convert_bytes(total), convert_bytes(4 * total)


def difference_terms(plan: dict, card: dict, card_dtype: str) -> list[tuple[str, float]]:
    """card bytes - plan bytes, split into causes that add up exactly."""
    precision = _CARD_VS_PLAN[card_dtype]
    rate = 4 / _CARD_DIVISOR[card_dtype]  # bytes per parameter the card assumes for every parameter
    vocab_rows = plan["parts"]["language_model.embed_tokens"]["params"] - card["embedding_params"]
    terms = [
        (f"tied embedding counted a second time ({card['embedding_params']:,} params)", card["embedding_params"] * rate),
        (f"card's vocabulary {OPT_DEFAULT_VOCAB:,} vs 50,304 today ({vocab_rows:,} params fewer)", -vocab_rows * rate),
    ]
    p = plan["precisions"][precision]
    if precision in ("int8", "nf4"):
        quantized = plan["bnb"]["quantized_params"]
        kept = unquantized_params_by_dtype(plan, precision)
        sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
        kept_cost = sum(n * (sizes[d] - rate) for d, n in kept.items())
        stats = p["bytes"] - quantized * rate - sum(n * sizes[d] for d, n in kept.items())
        terms.append((f"{sum(kept.values()):,} params transformers keeps unquantised ({', '.join(kept)}) instead of {rate:g} B",
                      -kept_cost))
        what = "fp32 row scales" if precision == "int8" else "absmax, second-level absmax and lookup tables"
        terms.append((f"quantisation statistics: {what}", -stats))
    return terms


def build_sample_model(outdir: Path, layers: int = 2) -> Path:
    """Salesforce/blip2-opt-2.7b's architecture with `layers` layers per tower (every tensor shape of the real
    model, full vocabulary), random bf16 weights and the tiny model's processor, so load_blip2 can load it."""
    import tempfile

    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from twin import build_tiny_blip2

    config = load_blip2_config(None)
    for sub in (config.vision_config, config.qformer_config, config.text_config):
        sub.num_hidden_layers = layers
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(outdir)
    with tempfile.TemporaryDirectory() as tiny:
        build_tiny_blip2(tiny)
        Blip2Processor.from_pretrained(tiny).save_pretrained(outdir)
    return outdir


def gpu_check(workdir: Path) -> dict:
    """Load the sample model with load_blip2 in bf16, 8-bit and 4-bit; compare the GPU memory it takes with the plan."""
    import gc

    import torch

    if not torch.cuda.is_available():
        raise UserError("--gpu_check=True needs a CUDA GPU; run without it for the plan and the model-card comparison")
    sample = build_sample_model(workdir / "sample-blip2")
    rows = []
    for quantization in ("none", "8bit", "4bit"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model, _ = load_blip2(str(sample), quantization=quantization, device="cuda")
        torch.cuda.synchronize()
        dtype = str(model.dtype).removeprefix("torch.")
        plan = plan_memory(sample, lora=finetune_lora(), compute_dtype=dtype)
        column = {"none": {"bfloat16": "bf16", "float16": "fp16"}[dtype], "8bit": "int8", "4bit": "nf4"}[quantization]
        rows.append({
            "quantization": quantization,
            "dtype": dtype,
            "params": plan["total_params"],
            "planned_bytes": plan["precisions"][column]["bytes"],
            "tensor_bytes": held_bytes(model),
            "allocated_bytes": torch.cuda.memory_allocated() - before,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated() - before,
        })
        del model
    import bitsandbytes
    import transformers

    return {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(0),
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}",
        "command": "python -m bench.memory_plan --gpu_check=True",
        "model": "blip2-opt-2.7b architecture, 2 layers per tower, random bf16 weights",
        "rows": rows,
    }


def gpu_check_lines(check: dict) -> list[str]:
    lines = [
        f"Measured on {check['device']} ({check['date']}; {check['versions']}; `{check['command']}`): {check['model']}, loaded with "
        "`load_blip2`; planned = `plan_memory` for the same config, tensors = every parameter, buffer and bitsandbytes "
        "statistic the loaded model holds, allocated = `torch.cuda.memory_allocated()` growth.",
        "",
        "| load | params | planned MiB | tensors MiB | allocated MiB | peak during load MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in check["rows"]:
        mib = 1024**2
        lines.append(f"| {r['quantization']} ({r['dtype']}) | {r['params']:,} | {r['planned_bytes'] / mib:.2f} | "
                     f"{r['tensor_bytes'] / mib:.2f} | {r['allocated_bytes'] / mib:.2f} | {r['peak_allocated_bytes'] / mib:.2f} |")
    return lines


def checkpoint_table(lora) -> list[str]:
    """Markdown rows: every shipped architecture's size and memory at COMPUTE_DTYPE, with the script's LoRA."""
    compute = SHORT[COMPUTE_DTYPE]
    rows = [f"| checkpoint | family | params | bf16 GiB | NF4 + {compute} weights GiB | QLoRA weights + LoRA state GiB "
            f"| LoRA params (r={lora.r}, {', '.join(lora.target_modules)}) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for model_id in KNOWN_ARCHITECTURES:
        plan = plan_memory(model_id, lora=lora, compute_dtype=COMPUTE_DTYPE)
        p, q, lo = plan["precisions"], plan["qlora_training"], plan["lora"]
        rows.append(f"| {model_id} | {plan['family']} | {plan['total_params'] / 1e9:.3f}B | {p['bf16']['bytes'] / GIB:.2f} | "
                    f"{p['nf4']['bytes'] / GIB:.2f} | {q['total_bytes'] / GIB:.2f} | {lo['params']:,} on {lo['modules']} "
                    f"({', '.join(lo['targets'])}) |")
    return rows


def card_table(plan: dict, estimates: dict[str, dict]) -> tuple[list[str], bool]:
    """Markdown rows: the model card, accelerate's method at both vocabularies, this plan; and whether
    accelerate's method at the card's vocabulary gives every string of the card."""
    card = estimates[f"{OPT_DEFAULT_VOCAB:,} (card)"]
    rows = ["| dtype | model card | accelerate method, vocab 50,272 | accelerate method, vocab 50,304 | this plan (what transformers loads) |",
            "| --- | --- | --- | --- | --- |"]
    reproduced = True
    for dtype, (largest, total, train) in MODEL_CARD.items():
        old = card_row(card, dtype)
        new = card_row(estimates["50,304 (today)"], dtype)
        reproduced &= old == (largest, total, train)
        ours = plan["precisions"][_CARD_VS_PLAN[dtype]]["bytes"]
        rows.append(f"| {dtype} | {total} (largest {largest}, Adam {train}) | {old[1]} (largest {old[0]}, Adam {old[2]}) "
                    f"| {new[1]} (largest {new[0]}) | {ours / GIB:.3f} GiB ({_CARD_VS_PLAN[dtype]}"
                    f"{'+' + COMPUTE_DTYPE if _CARD_VS_PLAN[dtype] in ('int8', 'nf4') else ''}) |")
    return rows, reproduced


def explanations(plan: dict, card: dict) -> list[str]:
    """One line per dtype: card - plan, split into terms that add up exactly (checked)."""
    explain = []
    for dtype in MODEL_CARD:
        card_bytes = card["fp32_bytes"] / _CARD_DIVISOR[dtype]
        ours = plan["precisions"][_CARD_VS_PLAN[dtype]]["bytes"]
        terms = difference_terms(plan, card, dtype)
        assert abs(sum(v for _, v in terms) - (card_bytes - ours)) < 1, (dtype, terms)
        explain.append(f"- **{dtype}**: card {card_bytes / GIB:.3f} GiB - plan {ours / GIB:.3f} GiB = "
                       f"{(card_bytes - ours) / GIB:+.3f} GiB = "
                       + " ".join(f"{v / GIB:+.4f} ({label})" for label, v in terms))
    return explain


def card_notes(plan: dict, estimates: dict[str, dict], reproduced: bool) -> list[str]:
    card, today = estimates[f"{OPT_DEFAULT_VOCAB:,} (card)"], estimates["50,304 (today)"]
    n = plan["total_params"]
    counted = card["params_counted"]
    return [
        f"- `accelerate estimate-memory` builds `AutoModel.from_config` = `{card['model']}` in fp32 under accelerate's "
        "`init_empty_weights`, which re-wraps every parameter as it is registered, so tying `lm_head.weight = "
        f"embed_tokens.weight` leaves two Parameter objects (still tied there: {card['still_tied']}); "
        "`calculate_maximum_sizes` then counts both: "
        f"{counted:,} params = {n - (plan['parts']['language_model.embed_tokens']['params'] - card['embedding_params']):,} "
        f"+ {card['embedding_params']:,} (embedding again) at the card's vocabulary.",
        f"- Card reproduced exactly (every string of its table) with vocabulary {OPT_DEFAULT_VOCAB:,}: {reproduced}. With "
        f"today's 50,304 the same method gives {card_row(today, 'float16/bfloat16')[1]} in 16 bit "
        f"and a largest layer of {card_row(today, 'float32')[0]}; the card's 490.94 MB is {OPT_DEFAULT_VOCAB:,} x 2560 x 4 B "
        "(the embedding), so the table predates the config's `vocab_size: 50304` / `image_token_index: 50265`.",
        "- accelerate's 'MB'/'GB' are MiB/GiB (divides by 1024). Its int8/int4 rows are the fp32 size / 4 and / 8: every "
        "parameter at 1 or 0.5 byte, no scales. transformers (get_modules_to_not_convert + replace_with_bnb_linear) "
        "quantises only `nn.Linear` weights outside the skip list "
        f"({', '.join(plan['bnb']['modules_to_not_convert'])}): `load_blip2` quantises only the language model, so the "
        f"ViT-g, Q-Former, query tokens, projection, token and position embeddings, the tied lm_head, layer norms and "
        f"biases stay in {COMPUTE_DTYPE} (fp32 for the Q-Former and query tokens when loading in float16), and "
        "bitsandbytes adds its statistics.",
        f"- The card's 'Training using Adam' is 4 x the row's size, i.e. full fine-tuning; QLoRA trains "
        f"{plan['lora']['params']:,} LoRA parameters: {plan['qlora_training']['total_bytes'] / GIB:.3f} GiB of weights "
        "and optimiser state before activations (src.training.freeze_base casts no frozen weight to fp32).",
    ]


def results_section(command: str, body: list[str], check_json: Path) -> str:
    """This script's section of bench/RESULTS.md."""
    import accelerate
    import peft
    import torch
    import transformers

    lines = [
        "## memory_plan: weight memory of the BLIP-2 checkpoints; Salesforce/blip2-opt-2.7b vs its model card",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, accelerate {accelerate.__version__}, peft {peft.__version__}; "
        "meta device, no weights, no GPU",
        f"- command: `{command}`",
        "",
        *body,
    ]
    if check_json.exists():
        lines += ["", *gpu_check_lines(read_json(check_json, "GPU check"))]
    return "\n".join(lines)


def main() -> None:
    global COMPUTE_DTYPE
    defaults = {k.lower(): v for k, v in globals().items() if k.isupper() and not k.startswith("_")}
    config = apply_overrides(globals(), check=check_value)
    if MODEL_ID:  # one model's table, nothing written
        print(model_table())
        return
    COMPUTE_DTYPE = "bfloat16" if COMPUTE_DTYPE == "auto" else COMPUTE_DTYPE
    check_json = REPO / GPU_CHECK_DIR / "gpu_check.json"
    if GPU_CHECK:
        check = gpu_check(REPO / GPU_CHECK_DIR)
        write_json(check_json, check)
        print("\n".join(gpu_check_lines(check)) + f"\nwrote {check_json.relative_to(REPO)}\n")

    lora = finetune_lora()  # the fine-tuning script's LoRA
    checkpoints = checkpoint_table(lora)
    print("Every shipped checkpoint (weights only; activations not estimated):\n" + "\n".join(checkpoints) + "\n")
    plan = plan_memory(None, lora=lora, compute_dtype=COMPUTE_DTYPE)  # Salesforce/blip2-opt-2.7b
    plan["bnb"] = bnb_details(None, COMPUTE_DTYPE)
    table = format_full_plan(plan)
    print(table)

    card_era = load_blip2_config(None)
    card_era.text_config.vocab_size = OPT_DEFAULT_VOCAB
    estimates = {"50,304 (today)": accelerate_estimate(load_blip2_config(None)),
                 f"{OPT_DEFAULT_VOCAB:,} (card)": accelerate_estimate(card_era)}
    card = estimates[f"{OPT_DEFAULT_VOCAB:,} (card)"]
    if card["still_tied"]:
        raise UserError("accelerate's init_empty_weights kept lm_head tied here; the double-counting explanation no longer holds")
    rows, reproduced = card_table(plan, estimates)
    explain = explanations(plan, card)
    notes = card_notes(plan, estimates, reproduced)
    print("\nModel card vs this plan:\n" + "\n".join(rows) + "\n\nWhy they differ (card - plan, in GiB):\n"
          + "\n".join(explain) + "\n" + "\n".join(notes))
    if not reproduced:
        raise UserError("the accelerate method no longer reproduces the model card's table; see the rows above")

    if WRITE_RESULTS:
        command = "python -m bench.memory_plan" + "".join(f" --{k}={v}" for k, v in config.items() if v != defaults[k])
        body = ["Every shipped checkpoint, weights only (activations, CUDA context and allocator overhead not "
                "estimated; QLoRA = NF4 language model + the rest in " + COMPUTE_DTYPE + ", plus fp32 LoRA weights, "
                "gradients and AdamW moments):", "", *checkpoints, "",
                "Salesforce/blip2-opt-2.7b in full, and against its model card:", "",
                "```", table, "```", "", *rows, "", "Why they differ (card - plan, GiB; the terms add up exactly):", "",
                *explain, "", *notes]
        write_section("memory_plan", results_section(command, body, check_json), _RESULTS_MD)
        print(f"wrote the memory_plan section of {_RESULTS_MD.relative_to(REPO)}")


if __name__ == "__main__":
    run_main(main)
