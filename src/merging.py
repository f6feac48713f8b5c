"""A LoRA adapter merged into its base model: one plain BLIP-2 folder that loads without peft. A QLoRA
adapter merges onto the NF4 round trip of the base, the weights it was trained against (docs/checks.md)."""

import json
import re
from pathlib import Path

from .errors import UserError, again
from .files import read_json
from .modeling import GIB, NF4_BLOCKSIZE, bnb_quantized_linears, build_meta_model
from .prompts import PROMPTS, get_prompt

MERGE_CONFIG = "merge_config.json"  # the resolved settings, written last: marks a folder as a merged model
MERGE_DTYPES = ("bfloat16", "float16", "float32")
DEQUANTIZE_CHOICES = ("auto", "yes", "no")
# a final adapter's training config (finetune_vqav2_lora.py), and a checkpoint's (step-NNNNNN/)
TRAINING_CONFIGS = ("training_config.json", "config.json")


def read_training_config(adapter: str | Path) -> tuple[Path | None, dict | None]:
    """The training config saved next to the adapter (its path and contents), or (None, None)."""
    for name in TRAINING_CONFIGS:
        path = Path(adapter) / name
        if path.is_file():
            config = read_json(path, "training config", fix=again("adapter folder", download=False))
            if isinstance(config, dict) and "use_4bit" in config:
                return path, config
    return None, None


def base_was_4bit(dequantize: str, adapter: str | Path, training_file: Path | None, training: dict | None) -> bool:
    """Whether to merge onto the NF4-dequantised base: DEQUANTIZE "yes" / "no", or "auto": as the
    training config says the adapter was trained (use_4bit)."""
    if dequantize != "auto":
        recorded = training.get("use_4bit") if training else None
        if type(recorded) is bool and recorded != (dequantize == "yes"):
            onto = "the NF4-dequantised" if dequantize == "yes" else "an unquantised"
            print(f"warning: --dequantize={dequantize} merges onto {onto} base, but {training_file} says the adapter "
                  f"was trained on {'a 4-bit' if recorded else 'an unquantised'} base; --dequantize=auto merges as it "
                  "was trained", flush=True)
        return dequantize == "yes"
    if training is None:
        raise UserError(f"cannot tell whether the adapter in {adapter} was trained on a 4-bit base (no "
                        f"{' or '.join(TRAINING_CONFIGS)} with use_4bit next to it); pass --dequantize=yes for a "
                        "QLoRA adapter (4-bit base, the fine-tuning default) or --dequantize=no")
    if type(training["use_4bit"]) is not bool:
        raise UserError(f"{training_file}: use_4bit is {training['use_4bit']!r}, not true or false; fix it, or pass "
                        "--dequantize=yes (trained on a 4-bit base) or --dequantize=no")
    return training["use_4bit"]


def merge_device(device: str, model_id: str) -> tuple[str, str]:
    """Where the float32 merge runs, and why: `device` when given; else the GPU when its free memory holds the
    float32 model (the memory plan's fp32 weights) with 10% to spare, else the CPU."""
    import torch

    need = 4 * build_meta_model(model_id).num_parameters()
    takes = f"the float32 model takes {need / GIB:.1f} GiB"
    if device:
        return device, f"--device={device}; {takes}"
    if not torch.cuda.is_available():
        return "cpu", f"no GPU; {takes} of RAM"
    free = torch.cuda.mem_get_info()[0]
    if free >= 1.1 * need:
        return "cuda", f"{takes}, the GPU has {free / GIB:.1f} GiB free"
    return "cpu", f"{takes}, more than the GPU's {free / GIB:.1f} GiB free"


def nf4_round_trip(model, dtype) -> None:
    """Replace, in the float32 `model`, every weight load_blip2(..., "4bit") quantises by bitsandbytes' NF4
    round trip of it loaded in `dtype` (what the 4-bit layers computed with), in float32."""
    import bitsandbytes.functional as F

    for layer in bnb_quantized_linears(model).values():
        packed, state = F.quantize_4bit(layer.weight.data.to(dtype), blocksize=NF4_BLOCKSIZE, compress_statistics=True,
                                        quant_type="nf4")
        layer.weight.data = F.dequantize_4bit(packed, state).float()


def merge_lora(model):
    """The base model with each LoRA update (B @ A * alpha / r) added into its layer's weight and the peft
    wrappers gone. safe_merge: an adapter whose merge gives NaN is refused, not saved."""
    try:
        return model.merge_and_unload(safe_merge=True)
    except ValueError as e:
        raise UserError(f"merging the adapter failed ({str(e).splitlines()[0][:200]}); its weights are broken: "
                        "retrain it with `python finetune_vqav2_lora.py`") from None


def cast_for_saving(model, dtype) -> dict[str, int]:
    """Cast `model` to `dtype`, except what transformers loads in float32 when asked for `dtype` (its dtype plan:
    for float16 the Q-Former, query tokens and T5's `wo`; nothing for bfloat16); returns {that module: bytes}."""
    import torch

    keep = {name for name, kept in model._get_dtype_plan(dtype).items() if kept == torch.float32}
    kept: dict[str, int] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            hit = sorted(keep & set(name.split(".")))
            tensor.data = tensor.data.to(torch.float32 if hit else dtype)
            for module in hit[:1]:
                kept[module] = kept.get(module, 0) + 4 * tensor.numel()
    return kept


CARD = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"  # README.md of a merged folder (Jinja2)
# the training config's settings a model card names
CARD_SETTINGS = ("model_id", "dataset", "train_steps", "step", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                 "lora_scope", "lr", "use_4bit", "vqa_prompt")


def model_card(*, model_id: str, adapter: str, folder: str, training_file, training: dict | None, dequantized: bool,
               dtype: str, kept_fp32: dict[str, int]) -> str:
    """README.md of a merged folder: what it was made from, in which precision, and how to load it."""
    import jinja2

    settings = None if training is None else ", ".join(f"{k}={training[k]!r}" for k in CARD_SETTINGS if k in training)
    name = (training or {}).get("vqa_prompt")
    prompt = f"`{name}`: `{get_prompt(name)}`" if isinstance(name, str) and name in PROMPTS else None
    kept = ", ".join(f"`{module}` {size / 2**20:,.2f} MiB" for module, size in sorted(kept_fp32.items()))
    template = jinja2.Template(CARD.read_text(encoding="utf-8"), keep_trailing_newline=True,
                               undefined=jinja2.StrictUndefined)  # a name the template misses fails, as in the report
    return template.render(model_id=model_id, adapter=adapter, folder=folder, training_file=training_file,
                           training=settings, dequantized=dequantized, dtype=dtype, prompt=prompt, kept=kept)


# what a merge writes into its folder, for a merged model made before merge_config.json listed its files
_MERGE_WROTE = re.compile(r".*\.(safetensors|json|bin|model)|README\.md|merges\.txt|vocab\.txt")


def not_the_merges(entry: Path) -> bool:
    """keep() for replacing a merged folder (src.files.replace_folder): an entry that the merge which made the
    folder did not write (a user's notes, an eval/ folder of results) stays."""
    try:
        written = json.loads((entry.parent / MERGE_CONFIG).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return not _MERGE_WROTE.fullmatch(entry.name)
    return entry.name not in written and entry.name != MERGE_CONFIG
