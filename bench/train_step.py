"""The QLoRA step on the offline twin, before and after the frozen vision tower left the autograd graph.

  full_graph      what training did before: `enable_input_require_grads` hooks on every sub-model's
                  input embeddings (the vision tower's included) and the whole model run with
                  `pixel_values`, so autograd keeps every vision-tower activation and the backward pass
                  runs down to the patch embedding
  no_grad_tower   what `src.training.training_loss` does now: the vision tower, Q-Former and projection
                  under `torch.no_grad()`, their features passed in as `mm_encoder_outputs`

Each path runs in its own process (a clean peak resident memory) on the same micro-batches, through
`src.training.training_step` with the fine-tuning script's LoRA, 4-bit base and gradient checkpointing.
Reported per path: seconds per step (the fastest of REPEATS rounds of TIMED_STEPS), the bytes autograd saved
for backward in one forward (`torch.autograd.graph.saved_tensors_hooks`), how many of them came from the
vision tower, the peak resident memory of the process, and the largest difference of the LoRA gradients
after the first backward against the other path (they must be equal). The table goes to stdout and, with
WRITE_RESULTS, to the train_step section of bench/RESULTS.md.

    python -m bench.train_step                                  # about a minute on 2 CPU cores
    python -m bench.train_step --batch=4 --write_results=False  # print only

On a GPU, bench/gpu_check.py measures the same two paths on the full-size architecture (TRAIN_PATHS).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides
from src.errors import UserError, run_main

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
MODEL_DIR: str = "tests/artifacts/tiny-blip2"  # a saved twin; built into a temporary folder when missing
QUANTIZATION: str = "4bit"  # load_blip2 quantization of the base, as in the fine-tuning script
BATCH: int = 8  # micro-batch size
TIMED_STEPS: int = 5  # optimizer steps per timing round
REPEATS: int = 3  # timing rounds per path; the fastest is reported (the machine may be shared)
TORCH_THREADS: int = 1  # torch intra-op threads (0: torch's default)
WRITE_RESULTS: bool = True  # replace the train_step section of bench/RESULTS.md
ONE_PATH: str = ""  # internal: measure only this path in this process and print its JSON
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

_SECTION = "train_step"


@contextlib.contextmanager
def count_saved_tensors(vision_model):
    """Bytes autograd saves for backward inside the block: {"all": n, "vision": n}."""
    import torch

    counts = {"all": 0, "vision": 0}
    inside = [0]
    hooks = [vision_model.register_forward_pre_hook(lambda *a: inside.__setitem__(0, inside[0] + 1)),
             vision_model.register_forward_hook(lambda *a: inside.__setitem__(0, inside[0] - 1))]
    seen = set()

    def pack(t):
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.device.type != "meta" and key not in seen:  # a tensor saved by several ops counts once
            seen.add(key)
            n = t.numel() * t.element_size()
            counts["all"] += n
            if inside[0]:
                counts["vision"] += n
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield counts
    finally:
        for h in hooks:
            h.remove()


def lora_grads(model) -> dict:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def measure(model_dir: str, path: str) -> dict:
    """One path, in this process."""
    import torch

    from bench.gpu_check import train_batch, train_path
    from src.modeling import blip2_core, load_blip2
    from src.modeling import make_accelerator
    from bench import finetune_lora
    from src.training import add_lora, make_optimizer, set_train_mode, training_step

    if TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    model, processor = load_blip2(model_dir, QUANTIZATION, device="cpu")
    lora = finetune_lora()
    model = set_train_mode(add_lora(model, lora, gradient_checkpointing=True))
    size = processor.image_processor.size["height"]
    inputs = train_batch(processor, model.config.image_token_id, BATCH, size, "cpu")
    steps = 1 + REPEATS * TIMED_STEPS
    optimizer, scheduler = make_optimizer(model, 1e-4, 0.0, 0, steps)
    accelerator = make_accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    with train_path(model, path):
        import src.training as training

        with count_saved_tensors(blip2_core(model).vision_model) as saved:  # one forward, then its backward
            loss = training.training_loss(model, inputs)
        accelerator.backward(loss)
        grads = lora_grads(model)
        optimizer.zero_grad(set_to_none=True)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rounds = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            for _ in range(TIMED_STEPS):
                training_step(model, [inputs], accelerator, optimizer, scheduler, 1.0)
            rounds.append((time.perf_counter() - t) / TIMED_STEPS)
    grad_file = Path(tempfile.gettempdir()) / f"train_step_grads_{os.getpid()}.pt"
    torch.save(grads, grad_file)
    return {"path": path, "step_s": min(rounds), "rounds_s": rounds, "saved_bytes": saved["all"],
            "saved_vision_bytes": saved["vision"], "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_before_steps_kib": rss_before, "loss": float(loss), "seq_len": int(inputs["input_ids"].shape[1]),
            "grads_file": str(grad_file)}


def run_path(model_dir: str, path: str) -> dict:
    cmd = [sys.executable, "-m", "bench.train_step", f"--one_path={path}", f"--model_dir={model_dir}",
           f"--quantization={QUANTIZATION}", f"--batch={BATCH}", f"--timed_steps={TIMED_STEPS}",
           f"--repeats={REPEATS}", f"--torch_threads={TORCH_THREADS}", "--write_results=False"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"the {path} run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], max_diff: float, device: str) -> str:
    mib = 2**20
    lines = [
        "## train_step: the QLoRA step on the twin, before and after the vision tower left the autograd graph",
        "",
        f"- date: {datetime.date.today().isoformat()}; {device}; `python -m bench.train_step` "
        f"(batch {BATCH}, {rows[0]['seq_len']} tokens, {QUANTIZATION} base, the fine-tuning script's LoRA, "
        f"gradient checkpointing; fastest of {REPEATS} x {TIMED_STEPS} steps; {TORCH_THREADS or 'default'} torch thread(s))",
        f"- LoRA gradients after one backward, largest difference between the paths: {max_diff:.2e}",
        "",
        "| path | s/step | saved for backward MiB | of it, vision tower MiB | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['path']} | {r['step_s']:.3f} | {r['saved_bytes'] / mib:.1f} | "
                     f"{r['saved_vision_bytes'] / mib:.1f} | {r['peak_rss_kib'] / 1024:.0f} |")
    before, after = rows
    lines += ["", f"- no_grad_tower / full_graph: step time x{after['step_s'] / before['step_s']:.2f}, "
                  f"saved activations x{after['saved_bytes'] / max(before['saved_bytes'], 1):.2f}. On the real model "
                  "the vision tower is the 39-layer ViT-g at 224x224 (bench/gpu_check.py, TRAIN_PATHS)."]
    return "\n".join(lines)


def main() -> None:
    import torch

    from bench.gpu_check import PATHS

    from src.preflight import check_value

    apply_overrides(globals(), check=check_value)
    if ONE_PATH:
        print(json.dumps(measure(MODEL_DIR, ONE_PATH)))
        return
    with tempfile.TemporaryDirectory(prefix="train_step_") as tmp:
        model_dir = REPO / MODEL_DIR
        if not (model_dir / "config.json").is_file():
            from twin import build_tiny_blip2

            print(f"{MODEL_DIR} has no twin: building one in {tmp} (about 3 minutes)", flush=True)
            model_dir = Path(tmp) / "tiny-blip2"
            build_tiny_blip2(str(model_dir))
        rows = [run_path(str(model_dir), p) for p in PATHS]
    grads = []
    for r in rows:
        f = Path(r.pop("grads_file"))
        grads.append(torch.load(f))
        f.unlink()
    if grads[0].keys() != grads[1].keys():
        raise UserError("the two paths trained different parameters")
    max_diff = max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0])
    from bench.eval_throughput import cpu_model

    text = markdown(rows, max_diff, f"CPU {cpu_model()} ({os.cpu_count()} cores)")
    print(text)
    if max_diff > 1e-4:
        raise UserError(f"the LoRA gradients differ between the paths by {max_diff:.2e}")
    if WRITE_RESULTS:
        from bench.results_md import write_section

        write_section(_SECTION, text)
        print(f"wrote the {_SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    run_main(main)
