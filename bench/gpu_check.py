"""GPU check of the full-size blip2-opt-2.7b: 4-bit load memory, QLoRA step time and memory, and
evaluation throughput at batch 1 vs 32 (4-bit and bf16), all through the project's own code.

The weights' values change neither speed nor memory, so nothing is downloaded: the script builds the
architecture shipped in src/blip2_opt_2.7b_architecture.json with random weights directly on the GPU
in bf16, saves it (with a processor: the tiny model's tokenizer, 32 query tokens, 224x224 images) to a
temporary folder and loads it back through `src.modeling.load_blip2`:

  load     `load_blip2(dir, "4bit")`: peak and resident GPU memory
  train    `src.training.training_step`, the fine-tuning script's optimizer step, on the fine-tuning
           script's LoRA (`bench.finetune_lora()`) with gradient checkpointing,
           mixed precision through accelerate, AdamW and gradient clipping; per-device batch
           TRAIN_BATCHES; image + PROMPT_TOKENS + ANSWER_TOKENS + eos per sequence laid out by
           `src.training.collate_examples`; a few warm-up steps, then the mean step time; for each of
           TRAIN_PATHS: the step as it is (vision tower under no_grad) and as it was (full_graph: the
           vision tower in the autograd graph, bench/train_step.py), so the saving shows on the GPU
  eval     `src.inference.generate_batch` (the evaluation's path) with the vqa_beam5 preset forced to
           exactly NEW_TOKENS new tokens (random weights would stop anywhere), batch 1 vs 32, one image
           per question, for the 4-bit model and the bf16 one (`load_blip2(dir, "none")`)

  profile  with PROFILE=True: PROFILE_STEPS QLoRA steps and one evaluation batch per quantization under
           torch.profiler, written as tables (no trace file): the top operators by self time, the device's
           busy/idle share, kernel launches and host-device syncs per run (aten::item and friends)

Each section stops when its time budget is spent and reports what it measured. Results: JSON and a
markdown table on stdout, OUTPUT_DIR/gpu_check.json and OUTPUT_DIR/gpu_results.md, and the gpu_check
section of bench/RESULTS.md.

Run from the repository root, after `pip install -r requirements.txt` (a CUDA build of torch, and
bitsandbytes), on an NVIDIA GPU with 16 GB or more (about 7 minutes):

    python -m bench.gpu_check --smoke=True        # first, on any machine: CPU, shrunken architecture, about a minute
    bash bench/gpu_check.sh                       # then on the GPU (python -m bench.gpu_check with a hard time limit)
    bash bench/gpu_check.sh --profile=True        # the same with the profile tables (where a step's time goes)
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides, config_keys
from src.errors import UserError, run_main

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
SMOKE = False  # CPU run on a shrunken architecture (2 layers per tower, width 64), 4-bit via bitsandbytes' CPU backend
WORK_DIR = ""  # where the random model is saved (empty: a temporary folder, removed at the end)
TRAIN_BATCHES = [4, 8]  # per-device batch sizes of the QLoRA step
PROMPT_TOKENS = 16  # text tokens before the answer ("</s>Question: ... Answer:")
ANSWER_TOKENS = 3  # answer tokens (eos comes on top)
TRAIN_WARMUP_STEPS = 2  # untimed steps per batch size
TRAIN_TIMED_STEPS = 5  # timed steps per batch size
GRADIENT_CHECKPOINTING = True  # as in the fine-tuning script; it decides most of the activation memory
TRAIN_PATHS = ["no_grad_tower", "full_graph"]  # the training step now, and before the vision tower left the graph (bench/train_step.py)
LR = 1e-4  # AdamW learning rate (no effect on time or memory)
MAX_GRAD_NORM = 1.0  # gradient clipping, as in the fine-tuning script
EVAL_BATCHES = [1, 32]  # evaluation batch sizes (questions per generate call)
EVAL_QUESTIONS = 96  # questions timed per batch size of 32 and more (after one warm-up batch)
EVAL_QUESTIONS_BATCH1 = 12  # questions timed at batch sizes below 32
EVAL_QUANTIZATIONS = ["4bit", "none"]  # load_blip2 quantization settings timed in the eval section
NEW_TOKENS = 10  # forced answer length (min_new_tokens = max_new_tokens)
SECTION_BUDGET_S = 75.0  # a timed loop stops starting new work after this many seconds
TOTAL_BUDGET_S = 420.0  # sections not yet started are skipped after this many seconds (7 min)
SEED = 0  # random weights and inputs
PROFILE = False  # also run PROFILE_STEPS QLoRA steps and one evaluation batch under torch.profiler (a table, no trace)
PROFILE_STEPS = 3  # profiled optimizer steps (after the timed ones, at the first TRAIN_BATCHES size)
PROFILE_TOP = 12  # operators listed per profiled section
OUTPUT_DIR = "outputs/bench_gpu_check"  # gpu_check.json and config.json
WRITE_RESULTS = True  # replace the gpu_check section of bench/RESULTS.md (GPU runs only)
DEBUG = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

_SECTION = "gpu_check"
_GOAL_TRAIN_PEAK_BYTES = 10e9  # QLoRA at batch 4 in at most 10 GB
_GOAL_EVAL_SPEEDUP = 10.0  # batched evaluation at least 10x batch 1
_QUESTIONS = ["what is the man holding?", "what color is the bus?", "how many people are in the picture?",
             "is this a kitchen?", "what sport is being played?", "where is the cat sitting?",
             "what is on the table?", "is it raining?"]
_START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - _START


def gib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f}"


# --- the model ---------------------------------------------------------------------------------------

def architecture(smoke: bool):
    """The shipped blip2-opt-2.7b config; with smoke, 2 layers per tower and width 64 (vocabulary kept)."""
    from src.memory_plan import load_blip2_config

    config = load_blip2_config(None)
    if smoke:
        for sub in (config.vision_config, config.qformer_config, config.text_config):
            sub.num_hidden_layers = 2
            sub.num_attention_heads = 4
        config.vision_config.hidden_size, config.vision_config.intermediate_size = 64, 128
        config.qformer_config.hidden_size, config.qformer_config.intermediate_size = 64, 128
        config.qformer_config.encoder_hidden_size = 64
        config.text_config.hidden_size = config.text_config.word_embed_proj_dim = 64
        config.text_config.ffn_dim = 128
    return config


def save_random_model(outdir: Path, device: str, smoke: bool) -> dict:
    """Random weights of the architecture, made on `device` in bf16 (fp32 on CPU), saved with a processor."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from src.modeling import compute_dtype
    from src.tiny_model import IMAGE_TOKEN, build_tiny_blip2

    with tempfile.TemporaryDirectory() as tiny:
        build_tiny_blip2(tiny, pretrain_steps=0)  # only its tokenizer and processor are used
        processor = Blip2Processor.from_pretrained(tiny)
    config = architecture(smoke)
    size = config.vision_config.image_size
    processor.num_query_tokens = config.num_query_tokens
    processor.image_processor.size = {"height": size, "width": size}
    tok = processor.tokenizer
    # the prompt's image tokens are the tokenizer's <image>; every other id it makes is < 640 < vocab
    config.image_token_index = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    for key in ("pad_token_id", "bos_token_id"):
        setattr(config.text_config, key, getattr(tok, key))
    config.text_config.eos_token_id = tok.convert_tokens_to_ids("Ċ")  # the newline, as 50118 in the real model
    dtype = compute_dtype(device)
    torch.manual_seed(SEED)
    t = time.perf_counter()
    with torch.device(device):
        model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(config.text_config, key))
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
            "saved_bytes": size_bytes}


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


def eval_throughput(model, processor, quantization: str, device: str) -> list[dict]:
    """Questions per second through generate_batch at each EVAL_BATCHES size, one random image per question."""
    import torch

    from src.inference import generate_batch
    from src.prompts import format_prompt, get_decoding

    decoding = {**get_decoding("vqa_beam5"), "min_new_tokens": NEW_TOKENS, "max_new_tokens": NEW_TOKENS}
    size = processor.image_processor.size["height"]
    rows = []
    for batch in EVAL_BATCHES:
        if elapsed() > TOTAL_BUDGET_S:
            print(f"eval {quantization} batch {batch}: skipped (total budget spent)")
            continue
        prompts = [format_prompt("vqa_opt", _QUESTIONS[i % len(_QUESTIONS)]) for i in range(batch)]
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
               "samples_per_s": done / seconds, "new_tokens": NEW_TOKENS, **peak(device)}
        rows.append(row)
        print(f"eval {quantization} batch {batch}: {done} questions in {seconds:.2f} s = "
              f"{row['samples_per_s']:.2f} samples/s, peak {gib(row['peak_allocated'])} GiB", flush=True)
    if PROFILE and EVAL_BATCHES and elapsed() <= TOTAL_BUDGET_S:
        batch = max(EVAL_BATCHES)
        prompts = [format_prompt("vqa_opt", _QUESTIONS[i % len(_QUESTIONS)]) for i in range(batch)]
        pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(SEED))
        _PROFILES[f"evaluation {quantization}, batch {batch}"] = profiled(
            lambda: generate_batch(model, processor, pixel_values, prompts, decoding), 1, device)
    base = next((r["samples_per_s"] for r in rows if r["batch"] == min(EVAL_BATCHES)), None)
    for r in rows:
        r["speedup_vs_smallest_batch"] = r["samples_per_s"] / base if base else None
    return rows


def train_batch(processor, image_token_id: int, batch: int, size: int, device: str) -> dict:
    """A micro-batch laid out as the fine-tuning script lays it out, with random token ids."""
    import torch

    from src.training import IGNORE_INDEX, collate_examples

    g = torch.Generator().manual_seed(SEED + batch)
    tok = processor.tokenizer
    low, high = 4, tok.convert_tokens_to_ids("<image>")  # ordinary tokens: above the specials, below <image>
    encoded = []
    for _ in range(batch):
        prompt = [tok.bos_token_id] + torch.randint(low, high, (PROMPT_TOKENS - 1,), generator=g).tolist()
        answer = torch.randint(low, high, (ANSWER_TOKENS,), generator=g).tolist() + [tok.convert_tokens_to_ids("Ċ")]
        encoded.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    input_ids, attention_mask, labels = collate_examples(tok, processor.num_query_tokens, image_token_id, encoded)
    pixel_values = torch.randn(batch, 3, size, size, generator=g)
    return {k: v.to(device) for k, v in {"pixel_values": pixel_values, "input_ids": input_ids,
                                         "attention_mask": attention_mask, "labels": labels}.items()}


def qlora_training(model, processor, device: str) -> tuple[list[dict], dict]:
    """Optimizer steps of the fine-tuning script (one micro-batch each) at every TRAIN_BATCHES size."""
    from src.modeling import mixed_precision
    from src.modeling import make_accelerator
    from bench.train_step import train_path
    from bench import finetune_lora
    from src.training import add_lora, lora_summary, make_optimizer, set_train_mode, training_step

    image_token_id = model.config.image_token_id
    lora = finetune_lora()
    model = set_train_mode(add_lora(model, lora, gradient_checkpointing=GRADIENT_CHECKPOINTING))
    trainable, total, wrapped = lora_summary(model)
    steps = len(TRAIN_PATHS) * len(TRAIN_BATCHES) * (TRAIN_WARMUP_STEPS + TRAIN_TIMED_STEPS)
    optimizer, scheduler = make_optimizer(model, LR, 0.0, 0, steps)
    accelerator = make_accelerator(mixed_precision=mixed_precision(device))
    model, optimizer = accelerator.prepare(model, optimizer)
    info = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.target_modules),
            "scope": lora.scope, "lr": LR, "gradient_checkpointing": GRADIENT_CHECKPOINTING,
            "mixed_precision": accelerator.mixed_precision, "trainable_params": trainable, "all_params": total,
            "wrapped_modules": len(wrapped)}
    print(f"LoRA: {trainable:,} trainable of {total:,} parameters on {len(wrapped)} modules", flush=True)
    size = processor.image_processor.size["height"]
    rows = []
    for path, batch in [(p, b) for p in TRAIN_PATHS for b in TRAIN_BATCHES]:
        if elapsed() > TOTAL_BUDGET_S:
            print(f"train {path} batch {batch}: skipped (total budget spent)")
            continue
        with train_path(accelerator.unwrap_model(model), path):
            rows.append(timed_steps(model, processor, image_token_id, batch, size, device, accelerator, optimizer,
                                    scheduler, path))
    if PROFILE and TRAIN_BATCHES and elapsed() <= TOTAL_BUDGET_S:
        inputs = train_batch(processor, image_token_id, TRAIN_BATCHES[0], size, device)
        info["profile"] = profiled(lambda: training_step(model, [inputs], accelerator, optimizer, scheduler,
                                                         MAX_GRAD_NORM), PROFILE_STEPS, device)
        info["profile"]["what"] = f"QLoRA step, per-device batch {TRAIN_BATCHES[0]}"
    accelerator.free_memory(model, optimizer)
    return rows, info


def timed_steps(model, processor, image_token_id: int, batch: int, size: int, device: str, accelerator, optimizer,
                scheduler, path: str) -> dict:
    """Warm-up and timed optimizer steps at one batch size on one training path."""
    from src.training import training_step

    inputs = train_batch(processor, image_token_id, batch, size, device)
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
           "timed_steps": len(times), "step_s": step_s, "samples_per_s": batch / step_s,
           "loss_first_last": [losses[0], losses[-1]], **peak(device)}
    print(f"train {path} batch {batch}: {row['seq_len']} tokens, {step_s:.3f} s/step over {len(times)} steps, "
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
    lines = [
        "## gpu_check: full-size blip2-opt-2.7b (random weights): 4-bit load, QLoRA step, batched evaluation",
        "",
        f"- date: {results['date']}; device: {results['device']}; Python {v['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, bitsandbytes {v['bitsandbytes']}, peft {v['peft']}, "
        f"accelerate {v['accelerate']}",
        f"- command: `{results['command']}`" + (" (SMOKE: shrunken architecture on CPU; the figures mean nothing)"
                                                  if results["smoke"] else ""),
        f"- model: {m['architecture']}, {m['params']:,} parameters, random {m['dtype']} weights built on the device "
        f"in {m['build_s']:.1f} s, saved ({m['saved_bytes'] / 2**30:.2f} GiB) in {m['save_s']:.1f} s, then loaded "
        "with `src.modeling.load_blip2`; GiB = 2^30 bytes, from torch.cuda.max_memory_allocated / max_memory_reserved",
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
            f"AdamW, clip {MAX_GRAD_NORM}; `src.training.training_step`; sequence = "
            f"image tokens + {PROMPT_TOKENS} prompt + {ANSWER_TOKENS} answer + eos):",
            "",
            "| step (bench/train_step.py) | per-device batch | tokens | s/step | samples/s | peak allocated GiB | peak reserved GiB | goal: batch 4 <= 10 GB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["train"]:
            goal = ""
            if r["per_device_batch"] == 4 and r["peak_allocated"] is not None and r.get("path", "no_grad_tower") == "no_grad_tower":
                goal = "met" if r["peak_allocated"] <= _GOAL_TRAIN_PEAK_BYTES else "**missed**"
            lines.append(f"| {r.get('path', 'no_grad_tower')} | {r['per_device_batch']} | {r['seq_len']} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
                         f"{gib(r['peak_allocated'])} | {gib(r['peak_reserved'])} | {goal} |")
    if results["eval"]:
        lines += [
            "",
            f"Evaluation through `src.inference.generate_batch`, vqa_beam5 (5 beams, length penalty -1) forced to "
            f"{NEW_TOKENS} new tokens, one random 224x224 image per question (image preprocessing not timed):",
            "",
            "| quantization | batch | questions | seconds | samples/s | x batch 1 | peak allocated GiB | goal: >= 10x |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["eval"]:
            x = r.get("speedup_vs_smallest_batch")
            goal = "" if r["batch"] == min(EVAL_BATCHES) or x is None else ("met" if x >= _GOAL_EVAL_SPEEDUP else "**missed**")
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

    config = apply_overrides(globals())
    device = "cpu" if SMOKE else "cuda"
    if not SMOKE and not torch.cuda.is_available():
        raise UserError("no CUDA GPU here; run the CPU smoke test with python -m bench.gpu_check --smoke=True")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("bitsandbytes is not installed; pip install -r requirements.txt") from None
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
        "config": config, "load": [], "train": [], "eval": [], "skipped": [],
    }
    print(f"***** gpu_check on {results['device']}: {json.dumps(results['versions'])} *****", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=WORK_DIR or None) as tmp:
        model_dir = Path(tmp) / "blip2-random"
        info = save_random_model(model_dir, device, SMOKE)
        info["architecture"] = "blip2-opt-2.7b" + (" shrunken for the smoke test (2 layers per tower, width 64)"
                                                   if SMOKE else " (src/blip2_opt_2.7b_architecture.json)")
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
            results["eval"] += eval_throughput(model, processor, quantization, device)
            write_outputs(results, out_dir)
            results["profile"] = {**results.get("profile", {}), **_PROFILES}
            if quantization == "4bit":  # train on the loaded 4-bit model, as the fine-tuning script does
                if elapsed() > TOTAL_BUDGET_S:
                    results["skipped"].append("QLoRA training")
                else:
                    results["train"], results["lora"] = qlora_training(model, processor, device)
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

        write_section(_SECTION, text)
        print(f"wrote the {_SECTION} section of bench/RESULTS.md")
    print(f"wrote {out_dir}/gpu_check.json and gpu_results.md")


_DEFAULTS = {k.lower(): globals()[k] for k in config_keys(globals())}

if __name__ == "__main__":
    run_main(main)
