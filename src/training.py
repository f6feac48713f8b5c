"""QLoRA fine-tuning (README step 4): examples, a resumable data order, LoRA, the optimizer step and
self-describing checkpoints, shared by finetune_vqav2_lora.py and bench/gpu_check.py so both run one step."""

import json
import math
import os
import random
import shutil
from collections import Counter
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from .samples import VQASample, training_answer
from .errors import UserError
from .images import load_image
from .family import OPT, Family, LoraSettings, family_of, lora_target_regex, lora_targets  # noqa: F401 (LoraSettings for callers)
from .files import DISK_FULL, give_default_permissions, read_jsonl, replace_folder, safetensors_problem, write_json
from .modeling import blip2_core
from .prompts import format_prompt

IGNORE_INDEX = -100
CHECKPOINT_PREFIX = "step-"
TRAINING_STATE = "training_state.pt"


# --- examples ------------------------------------------------------------------------------------

def encode_example(tokenizer, prompt: str, answer: str, end_id: int, family: Family = OPT) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one example for the model family: the prompt tokenized alone, as when answering,
    and labels on the answer and `end_id` only (layout per family: docs/notes.md)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    if not family.decoder_only:
        return prompt_ids, tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_id]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [end_id]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate_examples(tokenizer, num_query_tokens: int, image_token_id: int, encoded: Sequence[tuple[list[int], list[int]]],
                     family: Family = OPT):
    """(input ids, attention mask, labels) of a batch, image tokens first as the processor puts them; OPT
    padded left (generation continues the last token), Flan-T5 right with labels padded to their own width."""
    width = max(len(ids) for ids, _ in encoded)
    label_width = max(len(labs) for _, labs in encoded)
    input_ids, attention, labels = [], [], []
    for ids, labs in encoded:
        pad = width - len(ids)
        if family.decoder_only:
            input_ids.append([image_token_id] * num_query_tokens + [tokenizer.pad_token_id] * pad + ids)
            attention.append([1] * num_query_tokens + [0] * pad + [1] * len(ids))
            labels.append([IGNORE_INDEX] * (num_query_tokens + pad) + labs)
        else:
            input_ids.append([image_token_id] * num_query_tokens + ids + [tokenizer.pad_token_id] * pad)
            attention.append([1] * (num_query_tokens + len(ids)) + [0] * pad)
            labels.append(labs + [IGNORE_INDEX] * (label_width - len(labs)))
    return (torch.tensor(input_ids), torch.tensor(attention), torch.tensor(labels))


def micro_batch_indices(n_samples: int, seed: int, micro_batch: int, index: int, world_size: int, rank: int) -> list[int]:
    """Sample indices of micro-batch `index` for process `rank`: the global batch (micro_batch x
    world_size) comes from a seeded permutation per epoch, so any step can be recomputed on resume."""
    global_batch = micro_batch * world_size
    per_epoch = n_samples // global_batch
    if per_epoch == 0:
        raise UserError(f"only {n_samples} training samples for a global batch of {global_batch}; "
                        "lower --per_device_batch or use more data")
    epoch, pos = divmod(index, per_epoch)
    perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed + epoch))
    start = pos * global_batch + rank * micro_batch
    return perm[start:start + micro_batch].tolist()


def train_batch(index: int, samples: list[VQASample], processor, model_config, end_id: int, prompt: str, seed: int,
                micro_batch: int, world_size: int, rank: int) -> dict:
    """Micro-batch `index` of this process, the DataLoader's collate_fn over the indices still to read: a resumed
    run starts by index arithmetic, reading no earlier batch (docs/notes.md). An unreadable image gives {"error"}."""
    batch = [samples[i] for i in micro_batch_indices(len(samples), seed, micro_batch, index, world_size, rank)]
    try:
        images = [load_image(s.image_path) for s in batch]
    except UserError as e:  # handed back as data: raised in a worker it would arrive wrapped in a traceback
        return {"error": str(e)}
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    tok, family = processor.tokenizer, family_of(model_config)
    encoded = [encode_example(tok, format_prompt(prompt, s.question), training_answer(s), end_id, family) for s in batch]
    input_ids, attention_mask, labels = collate_examples(tok, model_config.num_query_tokens, model_config.image_token_id,
                                                         encoded, family)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# --- LoRA ----------------------------------------------------------------------------------------

def freeze_base(model, gradient_checkpointing: bool):
    """Freeze every base weight in its dtype (no fp32 cast, no input-embedding hooks: docs/notes.md)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model.disable_input_require_grads()
    return model


def add_lora(model, lora: LoraSettings, gradient_checkpointing: bool):
    """The frozen base wrapped in peft with `lora`'s adapters (targets "auto": the family's for the scope)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(lora.target_modules, family_of(blip2_core(model).config), lora.scope)
    model = freeze_base(model, gradient_checkpointing)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=lora_target_regex(targets, lora.scope))
    try:
        model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"LoRA found no layer to adapt for TARGET_MODULES={list(lora.target_modules)} inside "
                        f"{lora.scope!r} ({str(e).splitlines()[0][:160]}); use --target_modules=auto (the model family's "
                        "own) or names of its Linear layers") from None
    # peft adds the input-embedding hooks itself to an unquantised model with checkpointing on: off again
    model.get_base_model().disable_input_require_grads()
    return model


def set_train_mode(model):
    """Train mode, but eval mode (no dropout) for the frozen image encoder: its features are evaluation's."""
    model.train()
    core = blip2_core(model)
    for frozen in (core.vision_model, core.qformer, core.language_projection):
        frozen.eval()
    return model


def training_loss(model, batch: dict):
    """The loss of one micro-batch (answer tokens only), the frozen image encoder under no_grad and no KV
    cache (docs/notes.md); `model` may be wrapped (DDP, peft)."""
    core = blip2_core(getattr(model, "module", model))
    encoder = (core.vision_model, core.qformer, core.language_projection)
    with torch.set_grad_enabled(any(p.requires_grad for part in encoder for p in part.parameters())):
        image = core.get_image_features(pixel_values=batch["pixel_values"], return_dict=True)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 pixel_values=None, mm_encoder_outputs={"image": image}, use_cache=False).loss


# --- the optimizer step ------------------------------------------------------------------------

def make_optimizer(model, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW over the trainable (LoRA) parameters; linear warmup, then cosine decay to 0 at `total_steps`."""
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)


class NonFiniteLoss(UserError):
    """The loss of an optimizer step was nan or inf (too high a learning rate, or bad data)."""

    def __init__(self, loss: float):
        super().__init__(f"the training loss became {loss}; stopped before the optimizer step")
        self.loss = loss


class StepResult(NamedTuple):
    loss: float  # mean over micro-batches and processes
    grad_norm: float | None  # before clipping; None on a skipped step
    skipped: bool  # fp16 loss scaling found inf/nan gradients: no update, the schedule did not move


def training_step(model, micro_batches, accelerator, optimizer, scheduler, max_grad_norm: float) -> StepResult:
    """One optimizer step over `micro_batches` (as many as the accelerator accumulates): a non-finite loss
    raises NonFiniteLoss before anything steps; fp16 overflow skips the update (docs/notes.md)."""
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in micro_batches:
        if "error" in batch:  # train_batch could not read an image
            raise UserError(f"{batch['error']} (a training image; fix or remove it, then rerun to resume "
                            "from the last checkpoint)")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = training_loss(model, batch)
            accelerator.backward(loss)
        total += loss.detach()
        count += 1
    if count != accelerator.gradient_accumulation_steps or not accelerator.sync_gradients:
        raise ValueError(f"{count} micro-batches for an accelerator accumulating "
                         f"{accelerator.gradient_accumulation_steps}; the gradients were not synchronised")
    mean_loss = accelerator.reduce(total / count, reduction="mean").item()
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(mean_loss)
    grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    skipped = bool(accelerator.optimizer_step_was_skipped)
    if not skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(mean_loss, None if skipped else float(grad_norm), skipped)


def describe_wrapped(wrapped: list[str]) -> str:
    """'q_proj x32, v_proj x32 (language_model.model.decoder.layers.*)'"""
    counts = Counter(name.rsplit(".", 1)[-1] for name in wrapped)
    common = os.path.commonprefix(wrapped)
    common = common.rsplit(".", 1)[0] if "." in common else ""  # "language_" of language_model and _projection: none
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) + (f" (under {common}.*)" if common else "")


# --- checkpoints ---------------------------------------------------------------------------------

def checkpoint_dirs(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temporary or half-written one is never listed)."""
    steps = {d: d.name[len(CHECKPOINT_PREFIX):] for d in ckpt_root.glob(f"{CHECKPOINT_PREFIX}*") if d.is_dir()}
    return sorted((d for d, n in steps.items() if n.isdecimal()), key=lambda d: int(steps[d]))


def checkpoint_problem(d: Path) -> str | None:
    """Why checkpoint `d` cannot be resumed from, or None: a file missing, or one that does not read back whole
    (safetensors checks its header covers the file, a zip its end: a cut-short file never reads)."""
    for name in ("adapter_model.safetensors", "adapter_config.json", TRAINING_STATE, "config.json"):
        if not (d / name).exists():
            return f"{name} missing"
    for name in ("adapter_config.json", "config.json"):
        try:
            json.loads((d / name).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            return f"{name} unreadable ({type(e).__name__})"
    problem = safetensors_problem(d / "adapter_model.safetensors")
    if problem:
        return f"adapter_model.safetensors {problem}"
    try:
        torch.load(d / TRAINING_STATE, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file cannot be resumed from
        return f"{TRAINING_STATE} unreadable ({type(e).__name__})"
    return None


def rng_state() -> dict:
    """This process's random state (torch, CUDA, Python): what it continues from after a resume."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": list(random.getstate()[1])}


def _write_adapter(model, folder: Path, config_name: str, config: dict) -> None:
    """The LoRA weights and the resolved config beside them, as a checkpoint and the final adapter both hold them;
    no peft hub lookup for embedding layers BLIP-2 never trains (offline it times out)."""
    model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    write_json(folder / config_name, config)


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, config: dict, keep: int, *,
                    rng_states: list[dict] | None = None, scaler=None) -> Path:
    """adapter, optimizer, scheduler, step, every rank's RNG, fp16 scaler and config, written to a temporary
    folder and renamed into place, so a kill leaves earlier checkpoints intact (docs/notes.md)."""
    final = ckpt_root / f"{CHECKPOINT_PREFIX}{step:06d}"
    with saving_folder(final, f"checkpoint step {step}") as tmp:
        _write_adapter(model, tmp, "config.json", {**config, "step": step})
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_states or [rng_state()], "scaler": scaler.state_dict() if scaler else None},
                   tmp / TRAINING_STATE)
    for old in checkpoint_dirs(ckpt_root)[:-keep]:  # keep >= 1 (src.preflight)
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def saving_folder(final: Path, what: str, kept: str = "earlier checkpoints are intact: free some space and rerun the "
                  "same command, it resumes from the last complete checkpoint", keep=lambda entry: False):
    """A new hidden folder for the block to fill, then put in place of `final` (src.files.replace_folder keeps the old
    entries `keep` names); a save that fails for lack of space is one line ending with `kept`, `final` untouched."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    try:
        tmp.mkdir(parents=True)
        yield tmp
        give_default_permissions(tmp)  # safetensors writes 0600
    except Exception as e:
        full = getattr(e, "errno", None) in DISK_FULL or "No space" in str(e)
        with suppress(OSError):  # under 1 MiB left (measured before tmp's files go): it failed for lack of space
            full = full or shutil.disk_usage(tmp.parent).free < 2**20
        shutil.rmtree(tmp, ignore_errors=True)
        if not full:
            raise
        raise UserError(f"the disk is full: saving {what} into {tmp.parent} failed ({type(e).__name__}); {kept}") from None
    replace_folder(tmp, final, keep)


def latest_checkpoint(ckpt_root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose files verify, and a note for each newer one that had to be skipped."""
    skipped = []
    found = checkpoint_dirs(ckpt_root)
    for d in reversed(found):
        problem = checkpoint_problem(d)
        if problem is None:
            return d, skipped
        skipped.append(f"{d} is incomplete or damaged ({problem}); falling back to an earlier checkpoint")
    if found:
        skipped.append(f"no checkpoint in {ckpt_root} could be trusted; starting from step 0")
    return None, skipped


def load_checkpoint(d: Path, model, optimizer, scheduler, *, rank: int = 0, scaler=None) -> int:
    """Restore adapter, optimizer, scheduler, fp16 scaler and rank `rank`'s RNG from a verified checkpoint; its step."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(d / "adapter_model.safetensors")))
    state = torch.load(d / TRAINING_STATE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"][rank]  # resume refuses a checkpoint of another world size
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((3, tuple(rng["python"]), None))
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def save_final_adapter(adapter_dir: Path, model, processor, config: dict, log_path: Path,
                       draw_loss: Callable[[list[dict], Path], None] | None = None) -> None:
    """adapter + processor + resolved config + train_log.jsonl (+ loss_curve.png by `draw_loss(rows, path)`),
    built in a temporary folder and swapped in, so <adapter_dir> is always the old or the new adapter."""
    with saving_folder(adapter_dir, "the final adapter") as tmp:
        _write_adapter(model, tmp, "training_config.json", config)
        processor.save_pretrained(tmp)
        shutil.copyfile(log_path, tmp / "train_log.jsonl")
        rows = read_jsonl(log_path)
        if rows and draw_loss:
            draw_loss(rows, tmp / "loss_curve.png")
