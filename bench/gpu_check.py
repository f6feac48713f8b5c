"""GPU check of a full-size BLIP-2 checkpoint (MODEL_ID: blip2-opt-2.7b by default, or blip2-opt-6.7b,
blip2-flan-t5-xl, blip2-flan-t5-xxl): 4-bit load memory, QLoRA step time and memory, and evaluation
throughput at batch 1 vs 32 (4-bit and bf16), all through the project's own code.

The weights' values change neither speed nor memory, so nothing is downloaded: the script builds the
architecture `src.modeling.load_blip2_config(MODEL_ID)` gives (for a known id, the config shipped in
src/, e.g. src/blip2_opt_2.7b_architecture.json; or a model folder's config.json) with random weights
directly on the GPU in the family's compute dtype (src/family.py: OPT or Flan-T5), saves it (with a
processor: the tokenizer of the family's offline twin, the checkpoint's query tokens and image size) to a
temporary folder and loads it back through `src.modeling.load_blip2`:

  load     `load_blip2(dir, "4bit")`: peak and resident GPU memory
  train    `src.training.training_step`, the fine-tuning script's optimizer step, on the fine-tuning
           script's LoRA (`bench.finetune_lora()`, "auto" targets resolved for the family) with gradient
           checkpointing, mixed precision through accelerate, AdamW and gradient clipping; per-device batch
           TRAIN_BATCHES; random ids, PROMPT_TOKENS of prompt and ANSWER_TOKENS + the end token of answer per
           example, laid out by `src.training.encode_example` and `collate_examples` for the family (OPT:
           image, prompt, answer in one sequence; Flan-T5: image and prompt into the encoder, the answer as
           the decoder's labels); a few warm-up steps, then the mean step time; for each of TRAIN_PATHS: the
           step as it is (vision tower under no_grad) and as it was (full_graph: the vision tower in the
           autograd graph, bench/train_step.py), so the saving shows on the GPU
  eval     `src.inference.generate_batch` (the evaluation's path) with the family's VQA prompt (vqa_opt or
           vqa_t5) and decoding preset (vqa_beam5, vqa_beam5_t5) forced to exactly NEW_TOKENS new tokens (random weights
           would stop anywhere), batch 1 vs 32, one image per question, for the 4-bit model and the bf16 one
           (`load_blip2(dir, "none")`)

  profile  with PROFILE=True: PROFILE_STEPS QLoRA steps and one evaluation batch per quantization under
           torch.profiler, written as tables (no trace file): the top operators by self time, the device's
           busy/idle share, kernel launches and host-device syncs per run (aten::item and friends)

Each section stops when its time budget is spent and reports what it measured. The goals (QLoRA at batch 4
in at most 10 GB, batched evaluation at least 10x batch 1) are blip2-opt-2.7b's; other checkpoints report
them as not set. Results: JSON (with model_id and family) and a markdown table on stdout,
OUTPUT_DIR/gpu_check.json and OUTPUT_DIR/gpu_results.md, and one section of bench/RESULTS.md per
checkpoint: gpu_check for blip2-opt-2.7b, gpu_check_flan_t5_xl for blip2-flan-t5-xl, and so on (pass
another --output_dir to keep each checkpoint's JSON too).

Run from the repository root, after `pip install -r requirements.txt` (a CUDA build of torch, and
bitsandbytes), on an NVIDIA GPU (blip2-opt-2.7b: 16 GB or more, about 7 minutes; the larger checkpoints
need more memory and time, see `python -m bench.memory_plan`):

    python -m bench.gpu_check --smoke=True        # first, on any machine: CPU, shrunken architecture, about a minute
    bash bench/gpu_check.sh                       # then on the GPU (python -m bench.gpu_check with a hard time limit)
    bash bench/gpu_check.sh --profile=True        # the same with the profile tables (where a step's time goes)

    python -m bench.gpu_check --smoke=True --model_id=Salesforce/blip2-flan-t5-xl   # the Flan-T5 check, shrunken, on CPU
    bash bench/gpu_check.sh --model_id=Salesforce/blip2-flan-t5-xl                  # Flan-T5-XL on the GPU
    bash bench/gpu_check.sh --model_id=Salesforce/blip2-flan-t5-xxl                 # Flan-T5-XXL (about 12B parameters)
    bash bench/gpu_check.sh --model_id=Salesforce/blip2-opt-6.7b                    # OPT-6.7B
    bash bench/gpu_check.sh --model_id=path/to/model_folder                         # the architecture in its config.json
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides, script_settings
from src.errors import UserError, run_main

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # the architecture: a known checkpoint id (src.modeling.KNOWN_ARCHITECTURES) or a model folder
SMOKE: bool = False  # CPU run on a shrunken architecture (2 layers per tower, width 64), 4-bit via bitsandbytes' CPU backend
WORK_DIR: str = ""  # where the random model is saved (empty: a temporary folder, removed at the end)
TRAIN_BATCHES: list = [4, 8]  # per-device batch sizes of the QLoRA step
PROMPT_TOKENS: int = 16  # prompt tokens with the tokenizer's own specials (OPT "</s>Question: ... Answer:"; Flan-T5 "Question: ... Short answer:</s>")
ANSWER_TOKENS: int = 3  # answer tokens (the end token comes on top: OPT's newline, Flan-T5's </s>)
TRAIN_WARMUP_STEPS: int = 2  # untimed steps per batch size
TRAIN_TIMED_STEPS: int = 5  # timed steps per batch size
GRADIENT_CHECKPOINTING: bool = True  # as in the fine-tuning script; it decides most of the activation memory
TRAIN_PATHS: list = ["no_grad_tower", "full_graph"]  # the training step now, and before the vision tower left the graph (bench/train_step.py)
LR: float = 1e-4  # AdamW learning rate (no effect on time or memory)
MAX_GRAD_NORM: float = 1.0  # gradient clipping, as in the fine-tuning script
EVAL_BATCHES: list = [1, 32]  # evaluation batch sizes (questions per generate call)
EVAL_QUESTIONS: int = 96  # questions timed per batch size of 32 and more (after one warm-up batch)
EVAL_QUESTIONS_BATCH1: int = 12  # questions timed at batch sizes below 32
EVAL_QUANTIZATIONS: list = ["4bit", "none"]  # load_blip2 quantization settings timed in the eval section
NEW_TOKENS: int = 10  # forced answer length (min_new_tokens = max_new_tokens)
SECTION_BUDGET_S: float = 75.0  # a timed loop stops starting new work after this many seconds
TOTAL_BUDGET_S: float = 420.0  # sections not yet started are skipped after this many seconds (7 min)
SEED: int = 0  # random weights and inputs
PROFILE: bool = False  # also run PROFILE_STEPS QLoRA steps and one evaluation batch under torch.profiler (a table, no trace)
PROFILE_STEPS: int = 3  # profiled optimizer steps (after the timed ones, at the first TRAIN_BATCHES size)
PROFILE_TOP: int = 12  # operators listed per profiled section
OUTPUT_DIR: str = "outputs/bench_gpu_check"  # gpu_check.json and config.json
WRITE_RESULTS: bool = True  # replace this checkpoint's section of bench/RESULTS.md (gpu_check, gpu_check_flan_t5_xl, ...; GPU runs only)
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

# the course's goals are the default checkpoint's; the others have none set (reported as "not set")
_GOALS = {"Salesforce/blip2-opt-2.7b": {"train_batch": 4, "train_peak_bytes": 10e9,  # QLoRA at batch 4 in at most 10 GB
                                        "eval_speedup": 10.0}}  # batched evaluation at least 10x batch 1
_QUESTIONS = ["what is the man holding?", "what color is the bus?", "how many people are in the picture?",
             "is this a kitchen?", "what sport is being played?", "where is the cat sitting?",
             "what is on the table?", "is it raining?"]
_START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - _START


def gib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f}"


def tokens_text(row: dict, decoder_only: bool) -> str:
    """A training sequence's length: OPT's one sequence "52"; Flan-T5's encoder + decoder "51 + 4"."""
    return str(row["seq_len"]) if decoder_only else f"{row['seq_len']} + {row['label_len']}"


# --- the model ---------------------------------------------------------------------------------------

def model_source(model_id: str) -> tuple[str, str]:
    """(what load_blip2_config reads, where the architecture comes from in words) for MODEL_ID: a known
    checkpoint id (its config shipped in src/) or a model folder / config.json (nothing is downloaded)."""
    from src.modeling import KNOWN_ARCHITECTURES

    path = Path(model_id).expanduser()
    if model_id in KNOWN_ARCHITECTURES and not path.exists():
        return model_id, f"src/{KNOWN_ARCHITECTURES[model_id].name}"
    if path.is_dir() and (path / "config.json").is_file() or path.is_file():
        return str(path), str(path / "config.json" if path.is_dir() else path)
    raise UserError(f"--model_id={model_id}: neither a known checkpoint ({', '.join(KNOWN_ARCHITECTURES)}) nor a "
                    "model folder or config.json here; the check builds the architecture with random weights and "
                    "downloads nothing")


def model_name(model_id: str) -> str:
    """'blip2-flan-t5-xl' for Salesforce/blip2-flan-t5-xl; a folder's name for a folder."""
    path = Path(model_id)
    return (path.parent if path.name == "config.json" else path).name or model_id


def results_section(model_id: str) -> str:
    """The bench/RESULTS.md section: gpu_check for the default checkpoint, gpu_check_flan_t5_xl for
    Salesforce/blip2-flan-t5-xl and so on, so that one checkpoint's results never replace another's."""
    from src.modeling import DEFAULT_MODEL_ID

    if model_id == DEFAULT_MODEL_ID:
        return "gpu_check"
    name = model_name(model_id).lower().removeprefix("blip2-")
    return "gpu_check_" + (re.sub(r"[^a-z0-9]+", "_", name).strip("_") or "model")


def architecture(model_id: str, smoke: bool):
    """The checkpoint's config; with smoke, 2 layers per tower (2 + 2 in T5) and width 64 (vocabulary kept)."""
    from src.family import family_of
    from src.modeling import load_blip2_config

    config = load_blip2_config(model_id)
    family = family_of(config)
    if smoke:
        for sub in (config.vision_config, config.qformer_config):
            sub.num_hidden_layers = 2
            sub.num_attention_heads = 4
        config.vision_config.hidden_size, config.vision_config.intermediate_size = 64, 128
        config.qformer_config.hidden_size, config.qformer_config.intermediate_size = 64, 128
        config.qformer_config.encoder_hidden_size = 64
        text = config.text_config
        if family.decoder_only:  # OPT
            text.num_hidden_layers, text.num_attention_heads = 2, 4
            text.hidden_size = text.word_embed_proj_dim = 64
            text.ffn_dim = 128
        else:  # T5: d_kv is the head width (d_model / num_heads in T5, not implied)
            text.d_model, text.d_ff, text.d_kv, text.num_heads = 64, 128, 16, 4
            text.num_layers = text.num_decoder_layers = 2
    return config, family


def twin_end_id(tokenizer, family) -> int:
    """The token an answer ends on, in the twin's tokenizer: OPT's newline (as 50118 in the real model),
    Flan-T5's </s> (1)."""
    return tokenizer.convert_tokens_to_ids("Ċ") if family.decoder_only else tokenizer.eos_token_id


def save_random_model(outdir: Path, config, family, device: str) -> dict:
    """Random weights of the architecture, made on `device` in the family's compute dtype (bf16 on a recent
    GPU, fp32 on CPU), saved with a processor whose tokenizer is the family's twin's, its ids set in the config
    as the real checkpoint sets them."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from src.modeling import compute_dtype
    from twin import IMAGE_TOKEN, build_tiny_blip2

    with tempfile.TemporaryDirectory() as tiny:
        build_tiny_blip2(tiny, pretrain_steps=0, family=family.name)  # only its tokenizer and processor are used
        processor = Blip2Processor.from_pretrained(tiny)
    size = config.vision_config.image_size
    processor.num_query_tokens = config.num_query_tokens
    processor.image_processor.size = {"height": size, "width": size}
    tok = processor.tokenizer
    # the prompt's image tokens are the tokenizer's <image>, its last id; every id it makes is below the vocabulary
    config.image_token_index = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if config.image_token_index >= config.text_config.vocab_size:
        raise UserError(f"--model_id={MODEL_ID}: its vocabulary ({config.text_config.vocab_size}) is smaller than the "
                        f"{family.title} twin's tokenizer ({len(tok)} tokens)")
    text = config.text_config
    if family.decoder_only:  # OPT: starts on </s>, stops on the newline
        ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": twin_end_id(tok, family)}
    else:  # Flan-T5: pad 0, </s> 1; the decoder starts on <pad>
        ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": twin_end_id(tok, family),
               "decoder_start_token_id": tok.pad_token_id}
    for key, value in ids.items():
        setattr(text, key, value)
    dtype = compute_dtype(device, family)
    torch.manual_seed(SEED)
    t = time.perf_counter()
    with torch.device(device):
        model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    n_params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    model.save_pretrained(outdir)
    processor.save_pretrained(outdir)
    save_s = time.perf_counter() - t
    del model
    free_memory(device)
    size_bytes = sum(f.stat().st_size for f in outdir.glob("*.safetensors"))
    return {"params": n_params, "dtype": str(dtype).removeprefix("torch."), "build_s": build_s, "save_s": save_s,
            "saved_bytes": size_bytes, "family_title": family.title, "special_ids": ids,
            "image_token_index": config.image_token_index, "num_query_tokens": config.num_query_tokens,
            "image_size": size}


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {"peak_allocated": None, "peak_reserved": None, "allocated": None}
    torch.cuda.synchronize()
    return {"peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
            "allocated": torch.cuda.memory_allocated()}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- the sections ------------------------------------------------------------------------------------

def load(model_dir: Path, quantization: str, device: str) -> tuple:
    from src.modeling import load_blip2

    free_memory(device)
    before = peak(device)["allocated"]  # what an earlier section left on the GPU (should be ~0)
    reset_peak(device)
    t = time.perf_counter()
    model, processor = load_blip2(str(model_dir), quantization, device=device)
    sync(device)
    row = {"quantization": quantization, "seconds": time.perf_counter() - t, "allocated_before": before, **peak(device)}
    print(f"load {quantization}: {row['seconds']:.1f} s, peak {gib(row['peak_allocated'])} GiB, "
          f"resident {gib(row['allocated'])} GiB", flush=True)
    return model, processor, row


_PROFILES: dict[str, dict] = {}  # profiled evaluation batches, by name


def eval_throughput(model, processor, family, quantization: str, device: str) -> list[dict]:
    """Questions per second through generate_batch at each EVAL_BATCHES size, one random image per question,
    with the family's VQA prompt and decoding preset."""
    import torch

    from src.inference import generate_batch
    from src.prompts import format_prompt, get_decoding

    decoding = {**{k: v for k, v in get_decoding(family.vqa_decoding).items() if k != "min_length"},
                "min_new_tokens": NEW_TOKENS, "max_new_tokens": NEW_TOKENS}
    size = processor.image_processor.size["height"]
    rows = []
    for batch in EVAL_BATCHES:
        if elapsed() > TOTAL_BUDGET_S:
            print(f"eval {quantization} batch {batch}: skipped (total budget spent)")
            continue
        prompts = [format_prompt(family.vqa_prompt, _QUESTIONS[i % len(_QUESTIONS)]) for i in range(batch)]
        pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(SEED))
        target = EVAL_QUESTIONS if batch >= 32 else EVAL_QUESTIONS_BATCH1
        generate_batch(model, processor, pixel_values, prompts, decoding)  # warm-up
        reset_peak(device)
        done, seconds = 0, 0.0
        while done < target and seconds < SECTION_BUDGET_S:
            sync(device)
            t = time.perf_counter()
            answers = generate_batch(model, processor, pixel_values, prompts, decoding)
            sync(device)
            seconds += time.perf_counter() - t
            done += len(answers)
        row = {"quantization": quantization, "batch": batch, "questions": done, "seconds": seconds,
               "samples_per_s": done / seconds, "new_tokens": NEW_TOKENS, "prompt": family.vqa_prompt,
               "decoding": family.vqa_decoding, **peak(device)}
        rows.append(row)
        print(f"eval {quantization} batch {batch}: {done} questions in {seconds:.2f} s = "
              f"{row['samples_per_s']:.2f} samples/s, peak {gib(row['peak_allocated'])} GiB", flush=True)
    if PROFILE and EVAL_BATCHES and elapsed() <= TOTAL_BUDGET_S:
        batch = max(EVAL_BATCHES)
        prompts = [format_prompt(family.vqa_prompt, _QUESTIONS[i % len(_QUESTIONS)]) for i in range(batch)]
        pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(SEED))
        _PROFILES[f"evaluation {quantization}, batch {batch}"] = profiled(
            lambda: generate_batch(model, processor, pixel_values, prompts, decoding), 1, device)
    base = next((r["samples_per_s"] for r in rows if r["batch"] == min(EVAL_BATCHES)), None)
    for r in rows:
        r["speedup_vs_smallest_batch"] = r["samples_per_s"] / base if base else None
    return rows


class RandomIdTokenizer:
    """Reads text written as token ids ("17 230 9") back to those ids, adding the real tokenizer's
    specials (OPT: </s> in front; Flan-T5: </s> at the end), so that `src.training.encode_example` lays
    random ids out exactly as it lays out a tokenized question and answer."""

    def __init__(self, tokenizer):
        full, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
        cut = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
        self.prefix, self.suffix = full[:cut], full[cut + len(bare):]
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [int(w) for w in text.split()]
        return {"input_ids": self.prefix + ids + self.suffix if add_special_tokens else ids}


PATHS = ("full_graph", "no_grad_tower")


def full_graph_loss(model, batch: dict):
    """The loss as training computed it before: the whole model, pixel values included."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 pixel_values=batch["pixel_values"], use_cache=False).loss


@contextlib.contextmanager
def train_path(model, path: str):
    """Make `src.training.training_step` take `path` inside the block (model: the peft model)."""
    import src.training as training

    if path not in PATHS:
        raise UserError(f"unknown training path {path!r}; use one of {', '.join(PATHS)}")
    if path == "no_grad_tower":
        yield
        return
    base = model.get_base_model()
    base.enable_input_require_grads()
    saved, training.training_loss = training.training_loss, full_graph_loss
    try:
        yield
    finally:
        training.training_loss = saved
        base.disable_input_require_grads()


def train_batch(processor, image_token_id: int, batch: int, size: int, device: str, family=None,
                end_id: int | None = None) -> dict:
    """A micro-batch laid out as the fine-tuning script lays it out for the family (encode_example,
    collate_examples; default OPT), with random ordinary token ids, the answer ending on `end_id` (default:
    the twin tokenizer's end token, OPT's newline or Flan-T5's </s>). bench/train_step.py uses it too."""
    import torch

    from src.family import OPT
    from src.training import collate_examples, encode_example

    family = family or OPT
    if end_id is None:
        end_id = twin_end_id(processor.tokenizer, family)

    g = torch.Generator().manual_seed(SEED + batch)
    tok = RandomIdTokenizer(processor.tokenizer)
    # ordinary tokens: above the specials, below <image> (the last id)
    low, high = 4, processor.tokenizer.convert_tokens_to_ids("<image>")
    n_prompt = PROMPT_TOKENS - len(tok.prefix) - len(tok.suffix)
    if n_prompt < 1:
        raise UserError(f"--prompt_tokens={PROMPT_TOKENS}: the tokenizer's own specials take "
                        f"{len(tok.prefix) + len(tok.suffix)}; use at least {len(tok.prefix) + len(tok.suffix) + 1}")

    def words(n: int) -> str:
        return " ".join(map(str, torch.randint(low, high, (n,), generator=g).tolist()))

    encoded = [encode_example(tok, words(n_prompt), words(ANSWER_TOKENS), end_id, family) for _ in range(batch)]
    input_ids, attention_mask, labels = collate_examples(tok, processor.num_query_tokens, image_token_id, encoded,
                                                         family)
    pixel_values = torch.randn(batch, 3, size, size, generator=g)
    return {k: v.to(device) for k, v in {"pixel_values": pixel_values, "input_ids": input_ids,
                                         "attention_mask": attention_mask, "labels": labels}.items()}


def qlora_training(model, processor, family, device: str) -> tuple[list[dict], dict]:
    """Optimizer steps of the fine-tuning script (one micro-batch each) at every TRAIN_BATCHES size."""
    import dataclasses

    from bench import finetune_lora
    from src.family import lora_targets
    from src.modeling import end_token_id, make_accelerator, mixed_precision
    from src.training import add_lora, describe_wrapped, make_optimizer, set_train_mode, training_step

    image_token_id = model.config.image_token_id
    end_id = end_token_id(model)  # what the fine-tuning target ends with: OPT's newline, Flan-T5's </s>
    lora = finetune_lora()
    lora = dataclasses.replace(lora, target_modules=lora_targets(lora.target_modules, family, lora.scope))
    model = set_train_mode(add_lora(model, lora, gradient_checkpointing=GRADIENT_CHECKPOINTING))
    trainable, total = model.get_nb_trainable_parameters()
    wrapped = model.base_model.targeted_module_names
    steps = len(TRAIN_PATHS) * len(TRAIN_BATCHES) * (TRAIN_WARMUP_STEPS + TRAIN_TIMED_STEPS)
    optimizer, scheduler = make_optimizer(model, LR, 0.0, 0, steps)
    accelerator = make_accelerator(mixed_precision=mixed_precision(device, family))
    model, optimizer = accelerator.prepare(model, optimizer)
    info = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.target_modules),
            "scope": lora.scope, "lr": LR, "gradient_checkpointing": GRADIENT_CHECKPOINTING,
            "mixed_precision": accelerator.mixed_precision, "trainable_params": trainable, "all_params": total,
            "wrapped_modules": len(wrapped), "wrapped": describe_wrapped(wrapped), "end_token_id": end_id}
    print(f"LoRA: {trainable:,} trainable of {total:,} parameters on {len(wrapped)} modules: {info['wrapped']}",
          flush=True)
    size = processor.image_processor.size["height"]
    rows = []
    for path, batch in [(p, b) for p in TRAIN_PATHS for b in TRAIN_BATCHES]:
        if elapsed() > TOTAL_BUDGET_S:
            print(f"train {path} batch {batch}: skipped (total budget spent)")
            continue
        with train_path(accelerator.unwrap_model(model), path):
            rows.append(timed_steps(model, processor, family, image_token_id, end_id, batch, size, device, accelerator,
                                    optimizer, scheduler, path))
    if PROFILE and TRAIN_BATCHES and elapsed() <= TOTAL_BUDGET_S:
        inputs = train_batch(processor, image_token_id, TRAIN_BATCHES[0], size, device, family, end_id)
        info["profile"] = profiled(lambda: training_step(model, [inputs], accelerator, optimizer, scheduler,
                                                         MAX_GRAD_NORM), PROFILE_STEPS, device)
        info["profile"]["what"] = f"QLoRA step, per-device batch {TRAIN_BATCHES[0]}"
    accelerator.free_memory(model, optimizer)
    return rows, info


def timed_steps(model, processor, family, image_token_id: int, end_id: int, batch: int, size: int, device: str,
                accelerator, optimizer, scheduler, path: str) -> dict:
    """Warm-up and timed optimizer steps at one batch size on one training path."""
    from src.training import training_step

    inputs = train_batch(processor, image_token_id, batch, size, device, family, end_id)
    free_memory(device)
    reset_peak(device)
    times, losses = [], []
    start = time.perf_counter()
    for step in range(TRAIN_WARMUP_STEPS + TRAIN_TIMED_STEPS):
        if step >= TRAIN_WARMUP_STEPS + 1 and time.perf_counter() - start > SECTION_BUDGET_S:
            break
        sync(device)
        t = time.perf_counter()
        loss = training_step(model, [inputs], accelerator, optimizer, scheduler, MAX_GRAD_NORM).loss
        sync(device)
        losses.append(loss)
        if step >= TRAIN_WARMUP_STEPS:
            times.append(time.perf_counter() - t)
    step_s = sum(times) / len(times) if times else float("nan")
    row = {"path": path, "per_device_batch": batch, "seq_len": int(inputs["input_ids"].shape[1]),
           "label_len": int(inputs["labels"].shape[1]),
           "timed_steps": len(times), "step_s": step_s, "samples_per_s": batch / step_s,
           "loss_first_last": [losses[0], losses[-1]], **peak(device)}
    print(f"train {path} batch {batch}: {tokens_text(row, family.decoder_only)} tokens, {step_s:.3f} s/step over "
          f"{len(times)} steps, "
          f"peak {gib(row['peak_allocated'])} GiB allocated / {gib(row['peak_reserved'])} GiB reserved, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return row


# --- profiling -----------------------------------------------------------------------------------------

_LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
# a tensor's value read on the host (.item(), float(t): aten::_local_scalar_dense; aten::item only wraps it),
# and explicit waits; on a CPU run these are host reads, not device syncs
_SYNC = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def profiled(run, n: int, device: str) -> dict:
    """`run()` n times under torch.profiler: wall time, the top operators by self time (CPU and, on CUDA, the
    device), how many kernel launches and host-device syncs each run makes, and the device's idle share."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync(device)
    with profile(activities=activities, record_shapes=False) as prof:
        t = time.perf_counter()
        for _ in range(n):
            run()
        sync(device)
        wall = time.perf_counter() - t
    events = prof.key_averages()
    cuda = device.startswith("cuda")

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) or 0.0)

    top = sorted(events, key=lambda e: device_us(e) if cuda else e.self_cpu_time_total, reverse=True)[:PROFILE_TOP]
    kernels_us = sum(device_us(e) for e in events if e.device_type == torch.autograd.DeviceType.CUDA) if cuda else None
    return {
        "runs": n, "wall_s_per_run": wall / n,
        "device_busy_share": None if kernels_us is None else min(1.0, kernels_us / 1e6 / wall),
        "launches_per_run": sum(e.count for e in events if e.key in _LAUNCH) / n,
        "syncs_per_run": sum(e.count for e in events if e.key in _SYNC) / n,
        "top": [{"op": e.key[:60], "calls_per_run": e.count / n, "self_cpu_ms_per_run": e.self_cpu_time_total / 1e3 / n,
                 "self_device_ms_per_run": device_us(e) / 1e3 / n if cuda else None} for e in top],
    }


def profile_markdown(name: str, p: dict) -> list[str]:
    share = p["device_busy_share"]
    busy = "n/a (CPU run)" if share is None else f"{100 * share:.0f}%, idle {100 * (1 - share):.0f}%"
    lines = ["", f"Profile, {name}: {p['wall_s_per_run'] * 1e3:.1f} ms per run over {p['runs']} run(s); device busy "
                 f"{busy}; {p['launches_per_run']:.0f} kernel launches and {p['syncs_per_run']:.0f} host-device syncs "
                 "per run",
             "", "| operator | calls/run | self CPU ms/run | self device ms/run |", "| --- | ---: | ---: | ---: |"]
    for r in p["top"]:
        dev = "n/a" if r["self_device_ms_per_run"] is None else f"{r['self_device_ms_per_run']:.2f}"
        lines.append(f"| `{r['op']}` | {r['calls_per_run']:.0f} | {r['self_cpu_ms_per_run']:.2f} | {dev} |")
    return lines


# --- reporting ---------------------------------------------------------------------------------------

def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bnb, "peft": peft.__version__, "accelerate": accelerate.__version__}


def markdown(results: dict) -> str:
    v = results["versions"]
    m = results["model"]
    from src.modeling import KNOWN_ARCHITECTURES

    decoder_only = results["family"] == "opt"
    goals = results["goals"]
    size = "full-size " if results["model_id"] in KNOWN_ARCHITECTURES else "the architecture of "
    lines = [
        f"## {results['section']}: {size}{model_name(results['model_id'])} (random weights): 4-bit load, "
        "QLoRA step, batched evaluation",
        "",
        f"- date: {results['date']}; device: {results['device']}; Python {v['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, bitsandbytes {v['bitsandbytes']}, peft {v['peft']}, "
        f"accelerate {v['accelerate']}",
        f"- command: `{results['command']}`" + (" (SMOKE: shrunken architecture on CPU; the figures mean nothing)"
                                                  if results["smoke"] else ""),
        f"- model: {m['architecture']}, BLIP-2 on {m['family_title']}, {m['params']:,} parameters, random {m['dtype']} "
        "weights built on the device "
        f"in {m['build_s']:.1f} s, saved ({m['saved_bytes'] / 2**30:.2f} GiB) in {m['save_s']:.1f} s, then loaded "
        "with `src.modeling.load_blip2`; GiB = 2^30 bytes, from torch.cuda.max_memory_allocated / max_memory_reserved",
    ]
    if goals is None:
        (owner, g), = _GOALS.items()
        lines.append(f"- goals: none set for {model_name(results['model_id'])} (the course's goals, QLoRA at batch "
                     f"{g['train_batch']} in at most {g['train_peak_bytes'] / 1e9:g} GB and batched evaluation at least "
                     f"{g['eval_speedup']:g}x batch 1, are {model_name(owner)}'s)")
    lines += [
        "",
        "| load_blip2 | seconds | peak allocated GiB | resident GiB | allocated before GiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results["load"]:
        lines.append(f"| {r['quantization']} | {r['seconds']:.1f} | {gib(r['peak_allocated'])} | {gib(r['allocated'])} | "
                     f"{gib(r['allocated_before'])} |")
    lora = results.get("lora") or {}
    if results["train"]:
        lines += [
            "",
            f"QLoRA step (4-bit base; LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')} "
            f"on {', '.join(lora.get('targets', []))} in {lora.get('scope')}, {lora.get('trainable_params', 0):,} trainable; "
            f"gradient checkpointing {lora.get('gradient_checkpointing')}, {lora.get('mixed_precision')} mixed precision, "
            f"AdamW, clip {MAX_GRAD_NORM}; `src.training.training_step`; "
            + (f"sequence = image tokens + {PROMPT_TOKENS} prompt + {ANSWER_TOKENS} answer + end token):" if decoder_only else
               f"tokens = encoder (image tokens + {PROMPT_TOKENS} prompt) + decoder labels ({ANSWER_TOKENS} answer + </s>)):"),
            "",
            "| step (bench/train_step.py) | per-device batch | tokens | s/step | samples/s | peak allocated GiB | peak reserved GiB | "
            + (f"goal: batch {goals['train_batch']} <= {goals['train_peak_bytes'] / 1e9:g} GB |" if goals else "goal |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["train"]:
            goal = "" if goals else "not set"
            if goals and r["per_device_batch"] == goals["train_batch"] and r["peak_allocated"] is not None \
                    and r.get("path", "no_grad_tower") == "no_grad_tower":
                goal = "met" if r["peak_allocated"] <= goals["train_peak_bytes"] else "**missed**"
            lines.append(f"| {r.get('path', 'no_grad_tower')} | {r['per_device_batch']} | {tokens_text(r, decoder_only)} | "
                         f"{r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
                         f"{gib(r['peak_allocated'])} | {gib(r['peak_reserved'])} | {goal} |")
    if results["eval"]:
        lines += [
            "",
            f"Evaluation through `src.inference.generate_batch`, prompt {m['vqa_prompt']}, {m['vqa_decoding']} "
            f"({m['decoding_text']}) forced to {NEW_TOKENS} new tokens, one random {m['image_size']}x{m['image_size']} "
            "image per question (image preprocessing not timed):",
            "",
            "| quantization | batch | questions | seconds | samples/s | x batch 1 | peak allocated GiB | "
            + (f"goal: >= {goals['eval_speedup']:g}x |" if goals else "goal |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["eval"]:
            x = r.get("speedup_vs_smallest_batch")
            if r["batch"] == min(EVAL_BATCHES) or x is None:
                goal = ""
            else:
                goal = "not set" if not goals else ("met" if x >= goals["eval_speedup"] else "**missed**")
            lines.append(f"| {r['quantization']} | {r['batch']} | {r['questions']} | {r['seconds']:.2f} | "
                         f"{r['samples_per_s']:.2f} | {'n/a' if x is None else f'{x:.1f}'} | {gib(r['peak_allocated'])} | {goal} |")
    for name, p in (results.get("profile") or {}).items():
        lines += profile_markdown(name, p)
    if results.get("skipped"):
        lines += ["", f"- not measured (time budget): {', '.join(results['skipped'])}"]
    lines += ["", f"- total wall time {results['total_s']:.0f} s"]
    return "\n".join(lines)


def write_outputs(results: dict, out_dir: Path) -> None:
    """JSON and markdown, rewritten after every section: a killed run keeps what it measured."""
    from src.files import write_json

    results["total_s"] = elapsed()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "gpu_check.json", results)
    (out_dir / "gpu_results.md").write_text(markdown(results) + "\n", encoding="utf-8")


def command_value(value) -> str:
    """How to write a setting on the command line: a list of words as a,b; of numbers as [4,8]."""
    if isinstance(value, list):
        if all(isinstance(x, str) for x in value):
            return ",".join(value)
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def main() -> None:
    import torch

    from src.preflight import check_value
    from src.prompts import get_decoding

    config = apply_overrides(globals(), check=check_value)
    source, where = model_source(MODEL_ID)  # before any work: an unknown id stops here
    device = "cpu" if SMOKE else "cuda"
    if not SMOKE and not torch.cuda.is_available():
        raise UserError("no CUDA GPU here; run the CPU smoke test with python -m bench.gpu_check --smoke=True")
    if versions()["bitsandbytes"] is None:
        raise UserError("bitsandbytes is not installed; pip install -r requirements.txt")
    command = ("python -m bench.gpu_check --smoke=True" if SMOKE else "bash bench/gpu_check.sh") + "".join(
        f" --{k}={command_value(v)}" for k, v in config.items() if k != "smoke" and v != _DEFAULTS[k])
    if SMOKE:  # seconds, not minutes, on a CPU (unless set on the command line)
        for key, value in (("EVAL_QUESTIONS", 32), ("EVAL_QUESTIONS_BATCH1", 2), ("TRAIN_TIMED_STEPS", 2)):
            if config[key.lower()] == _DEFAULTS[key.lower()]:
                globals()[key] = config[key.lower()] = value
    from src.config import write_config

    out_dir = REPO / OUTPUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, out_dir / "config.json")
    results = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "versions": versions(), "smoke": SMOKE,
        "command": command,
        "model_id": MODEL_ID, "section": results_section(MODEL_ID), "goals": _GOALS.get(MODEL_ID),
        "config": config, "load": [], "train": [], "eval": [], "skipped": [],
    }
    arch, family = architecture(source, SMOKE)
    results["family"] = family.name
    print(f"***** gpu_check of {MODEL_ID} (BLIP-2 on {family.title}) on {results['device']}: "
          f"{json.dumps(results['versions'])} *****", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=WORK_DIR or None) as tmp:
        model_dir = Path(tmp) / "blip2-random"
        info = save_random_model(model_dir, arch, family, device)
        shrunk = "2 layers per tower" if family.decoder_only else "2 layers per tower, T5 2 encoder + 2 decoder"
        info["architecture"] = model_name(MODEL_ID) + (f" ({where}) shrunken for the smoke test ({shrunk}, width 64)"
                                                       if SMOKE else f" ({where})")
        decoding = get_decoding(family.vqa_decoding)
        info.update(vqa_prompt=family.vqa_prompt, vqa_decoding=family.vqa_decoding,
                    decoding_text=f"{decoding.get('num_beams', 1)} beams, length penalty {decoding.get('length_penalty', 1.0):g}")
        results["model"] = info
        print(f"random model: {info['params']:,} parameters, {info['saved_bytes'] / 2**30:.2f} GiB saved; "
              f"built {info['build_s']:.1f} s, saved {info['save_s']:.1f} s", flush=True)
        write_outputs(results, out_dir)

        for quantization in EVAL_QUANTIZATIONS:
            if elapsed() > TOTAL_BUDGET_S:
                results["skipped"].append(f"{quantization} load and evaluation")
                continue
            model, processor, row = load(model_dir, quantization, device)
            results["load"].append(row)
            results["eval"] += eval_throughput(model, processor, family, quantization, device)
            write_outputs(results, out_dir)
            results["profile"] = {**results.get("profile", {}), **_PROFILES}
            if quantization == "4bit":  # train on the loaded 4-bit model, as the fine-tuning script does
                if elapsed() > TOTAL_BUDGET_S:
                    results["skipped"].append("QLoRA training")
                else:
                    results["train"], results["lora"] = qlora_training(model, processor, family, device)
                    if "profile" in results["lora"]:
                        p = results["lora"].pop("profile")
                        results["profile"][p.pop("what")] = p
                    write_outputs(results, out_dir)
            del model
            free_memory(device)
        if "4bit" not in EVAL_QUANTIZATIONS:
            results["skipped"].append("QLoRA training (needs 4bit in EVAL_QUANTIZATIONS)")

    write_outputs(results, out_dir)
    text = markdown(results)
    print("\n" + json.dumps({k: results[k] for k in ("load", "train", "eval")}, indent=1))
    print("\n" + text)
    if WRITE_RESULTS and not SMOKE:
        from bench.results_md import write_section

        write_section(results["section"], text)
        print(f"wrote the {results['section']} section of bench/RESULTS.md")
    print(f"wrote {out_dir}/gpu_check.json and gpu_results.md")


_DEFAULTS = {k.lower(): v for k, v in script_settings(__file__).items()}

if __name__ == "__main__":
    run_main(main)
