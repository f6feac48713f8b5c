"""Evaluation throughput on CPU: one question at a time (the HF-notebook way) vs our batched path.

Builds the tiny BLIP-2 (`python -m twin`) in a temporary folder, takes the same N easy-VQA val
questions for every configuration (all the questions of randomly drawn images, as a whole-split
evaluation sees them: about 10 questions per 64x64 image) and times, for each decoding preset:

  one_at_a_time       processor + `model.generate` per question, batch 1
  run_vqa_workers0    src.evaluation.run_vqa (the evaluation scripts' path), EVAL_BATCH, no DataLoader workers
  run_vqa_workersN    the same with NUM_WORKERS DataLoader workers decoding images
  grouped_shared      generate_batch loop over the same image-grouped batches, shared images encoded once
                      (no DataLoader, no JSONL: the control for the next two rows)
  grouped_unshared    the same batches, every question encoding its own copy of its image
                      (image_index=None): the shared-image gain is grouped_unshared / grouped_shared
  length_sorted       batches of questions sorted by prompt length (less padding, images rarely shared)

Every configuration runs REPEATS times round robin and keeps its fastest wall time (the machine is
shared). Every batched configuration must give exactly the one-at-a-time answers; any difference is
printed as MISMATCH and the run fails. One torch thread by default (TORCH_THREADS): the tiny model's
matrices (hidden size 64) are too small to split, and with two OpenMP threads on a busy 2-core machine
each small op waits for the descheduled thread (one question at a time measured about 10x slower). The table goes to stdout, results.json to OUTPUT_DIR and, with
WRITE_RESULTS, the marked eval_throughput section of bench/RESULTS.md.

    python -m bench.eval_throughput                                                  # 256 questions, beam 5 + greedy
    python -m bench.eval_throughput --n_questions=32 --decodings=greedy --write_results=False   # smoke run, seconds
"""

from __future__ import annotations

import datetime
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from bench.results_md import write_section
from src.config import apply_overrides, script_settings
from src.errors import UserError, run_main

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
N_QUESTIONS: int = 256  # questions answered by every configuration
SEED: int = 1234  # which images' questions are taken
DATASET: str = "easy_vqa"  # "easy_vqa" (about 10 questions per image) or "tiny"
DATA_DIR: str = "data"  # dataset folder (relative to the repo)
MODEL_DIR: str = ""  # a saved BLIP-2 folder; empty: build the tiny model in a temporary folder
EVAL_BATCH: int = 32  # questions per batch in the batched configurations
NUM_WORKERS: int = 2  # DataLoader workers of the run_vqa_workersN configuration
VQA_PROMPT: str = "vqa_opt"  # prompt registry name
DECODINGS: list = ["vqa_beam5", "greedy"]  # decoding presets, one table each
LENGTH_SORTED: bool = True  # also time batches sorted by prompt length
REPEATS: int = 3  # runs of every configuration (round robin); the fastest wall time is reported
TORCH_THREADS: int = 1  # torch intra-op threads (0: torch's default); see the note below
OUTPUT_DIR: str = "outputs/bench_eval_throughput"  # results.json and config.json
WRITE_RESULTS: bool = True  # replace the eval_throughput section of bench/RESULTS.md
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

_RESULTS_MD = REPO / "bench" / "RESULTS.md"
_SECTION = "eval_throughput"  # the marked section of RESULTS.md this script owns


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def questions_of_images(samples: list, n: int, seed: int) -> list:
    """All the questions of images drawn at random, until n questions (the last image may be cut)."""
    by_image: dict[str, list] = {}
    for s in samples:
        by_image.setdefault(s.image_path, []).append(s)
    images = sorted(by_image)
    random.Random(seed).shuffle(images)
    chosen: list = []
    for path in images:
        chosen += sorted(by_image[path], key=lambda s: s.question_id)
        if len(chosen) >= n:
            break
    return chosen[:n]


# --- the configurations: each returns {question_id: answer} -----------------------------------------

def one_at_a_time(model, processor, samples, prompt: str, decoding: dict) -> dict[int, str]:
    """The naive way: processor + model.generate, one question (and its image) at a time."""
    import torch

    from src.images import load_image
    from src.modeling import blip2_core
    from src.prompts import first_line, format_prompt

    vision = blip2_core(model).vision_model.embeddings.patch_embedding.weight  # where pixel values must go
    device, dtype = vision.device, vision.dtype
    answers = {}
    with torch.no_grad():
        for s in samples:
            enc = processor(images=[load_image(s.image_path)], text=[format_prompt(prompt, s.question)],
                            return_tensors="pt").to(device)
            enc["pixel_values"] = enc["pixel_values"].to(dtype)
            out = model.generate(**enc, **decoding)
            answers[s.question_id] = first_line(
                processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def through_run_vqa(model, processor, samples, prompt: str, decoding_name: str, batch: int, workers: int,
                    out_path: Path) -> dict[int, str]:
    """The evaluation scripts' path: src.evaluation.run_vqa writing JSONL rows (their raw_answer is what
    generate returned; their answer is the cleaned one that is scored)."""
    from src.evaluation import read_rows, run_vqa
    from src.prompts import generation_record
    from src.modeling import make_accelerator

    out_path.unlink(missing_ok=True)
    record = {"model_id": "bench", "adapter": None, **generation_record(prompt, decoding_name)}
    run_vqa(samples, out_path, model=model, processor=processor, accelerator=make_accelerator(), record=record,
            batch_size=batch, num_workers=workers, desc=f"run_vqa w{workers}")
    return {qid: row["raw_answer"] for qid, row in read_rows(out_path).items()}


def batched_loop(model, processor, batches: list[list], prompt: str, decoding: dict, share_images: bool) -> dict[int, str]:
    """generate_batch over given batches; share_images=False gives every question its own image copy."""
    from src.images import load_image
    from src.inference import generate_batch
    from src.prompts import format_prompt

    answers = {}
    for batch in batches:
        paths = list(dict.fromkeys(s.image_path for s in batch))
        pixel_values = processor.image_processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
        index = [paths.index(s.image_path) for s in batch]
        prompts = [format_prompt(prompt, s.question) for s in batch]
        if share_images:
            out = generate_batch(model, processor, pixel_values, prompts, decoding, image_index=index)
        else:
            out = generate_batch(model, processor, pixel_values[index], prompts, decoding, image_index=None)
        answers.update((s.question_id, a) for s, a in zip(batch, out))
    return answers


def image_grouped_batches(samples, batch: int) -> list[list]:
    """run_vqa's order: by image, then question id."""
    from src.files import iter_chunks

    return list(iter_chunks(sorted(samples, key=lambda s: (s.image_path, s.question_id)), batch))


def length_sorted_batches(samples, processor, prompt: str, batch: int) -> list[list]:
    from src.files import iter_chunks
    from src.prompts import format_prompt

    lengths = {s.question_id: len(processor.tokenizer(format_prompt(prompt, s.question))["input_ids"]) for s in samples}
    return list(iter_chunks(sorted(samples, key=lambda s: (lengths[s.question_id], s.question_id)), batch))


def padding_share(batches: list[list], processor, prompt: str) -> float:
    """Padding tokens / prompt tokens over the batches (image tokens not counted)."""
    from src.prompts import format_prompt

    pad = total = 0
    for b in batches:
        lens = [len(processor.tokenizer(format_prompt(prompt, s.question))["input_ids"]) for s in b]
        pad += len(lens) * max(lens) - sum(lens)
        total += len(lens) * max(lens)
    return pad / total


def cpu_seconds() -> float:
    """user + sys CPU time of this process and its finished children (the DataLoader workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kwargs):
    t, c = time.perf_counter(), cpu_seconds()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, cpu_seconds() - c, out


def compare(reference: dict[int, str], answers: dict[int, str]) -> list[int]:
    """Question ids whose answer differs from the reference (or is missing)."""
    return [qid for qid in reference if answers.get(qid) != reference[qid]]


def run_decoding(model, processor, samples, decoding_name: str, work: Path) -> list[dict]:
    """Every configuration REPEATS times, round robin (so a burst of load elsewhere hits all of them);
    each keeps its fastest wall time and the CPU time of that run."""
    from src.prompts import get_decoding

    decoding = get_decoding(decoding_name)
    grouped = image_grouped_batches(samples, EVAL_BATCH)
    by_length = length_sorted_batches(samples, processor, VQA_PROMPT, EVAL_BATCH)

    def images_per_batch(batches):
        return sum(len({s.image_path for s in b}) for b in batches) / len(batches)

    configs = [("one_at_a_time", "batch 1, processor + model.generate",
                lambda: one_at_a_time(model, processor, samples, VQA_PROMPT, decoding))]
    for workers in dict.fromkeys((0, NUM_WORKERS)):
        configs.append((f"run_vqa_workers{workers}", f"batch {EVAL_BATCH}, {workers} DataLoader workers",
                        lambda w=workers: through_run_vqa(model, processor, samples, VQA_PROMPT, decoding_name,
                                                          EVAL_BATCH, w, work / f"{decoding_name}_w{w}.jsonl")))
    configs.append(("grouped_shared", f"batch {EVAL_BATCH}, {images_per_batch(grouped):.1f} distinct images/batch "
                    f"encoded once, padding {100 * padding_share(grouped, processor, VQA_PROMPT):.0f}%",
                    lambda: batched_loop(model, processor, grouped, VQA_PROMPT, decoding, True)))
    configs.append(("grouped_unshared", f"batch {EVAL_BATCH}, every question encodes its image",
                    lambda: batched_loop(model, processor, grouped, VQA_PROMPT, decoding, False)))
    if LENGTH_SORTED:
        configs.append(("length_sorted", f"batch {EVAL_BATCH}, {images_per_batch(by_length):.1f} distinct "
                        f"images/batch, padding {100 * padding_share(by_length, processor, VQA_PROMPT):.0f}%",
                        lambda: batched_loop(model, processor, by_length, VQA_PROMPT, decoding, True)))

    print(f"--- {decoding_name}: {decoding}", flush=True)
    # warm-up outside the timings (first-call allocations, lazy imports)
    batched_loop(model, processor, grouped[:1], VQA_PROMPT, decoding, True)
    one_at_a_time(model, processor, samples[:2], VQA_PROMPT, decoding)
    n = len(samples)
    rows = {name: {"config": name, "note": note, "seconds_all": [], "mismatches": []} for name, note, _ in configs}
    reference = None
    for rep in range(REPEATS):
        for name, note, fn in configs:
            seconds, cpu, answers = timed(fn)
            reference = answers if reference is None else reference
            row = rows[name]
            row["mismatches"] = sorted(set(row["mismatches"]) | set(compare(reference, answers)))
            if not row["seconds_all"] or seconds < min(row["seconds_all"]):
                row["seconds"], row["cpu_seconds"] = seconds, cpu
            row["seconds_all"].append(seconds)
            print(f"  [{rep + 1}/{REPEATS}] {name:<18} {seconds:8.2f} s wall {cpu:8.2f} s CPU "
                  f"{n / seconds:8.1f} samples/s", flush=True)
    rows = list(rows.values())
    base, base_cpu = rows[0]["seconds"], rows[0]["cpu_seconds"]
    for r in rows:
        r["samples_per_s"] = n / r["seconds"]
        r["ratio_vs_one_at_a_time"] = base / r["seconds"]
        r["cpu_ratio_vs_one_at_a_time"] = base_cpu / r["cpu_seconds"]
        r["answers_equal"] = not r["mismatches"]
    return rows


def format_table(decoding_name: str, rows: list[dict]) -> str:
    lines = [f"| config ({decoding_name}) | seconds (best of {REPEATS}) | CPU s | samples/s | x one-at-a-time | "
             "x one-at-a-time by CPU s | all answers equal | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        equal = "reference" if r["config"] == "one_at_a_time" else (
            "yes" if r["answers_equal"] else f"**MISMATCH** ({len(r['mismatches'])} questions)")
        lines.append(f"| {r['config']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['samples_per_s']:.1f} | "
                     f"{r['ratio_vs_one_at_a_time']:.1f} | {r['cpu_ratio_vs_one_at_a_time']:.1f} | {equal} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    import torch

    from src.config import write_config
    from src.data import load_samples
    from src.files import write_json
    from src.modeling import load_blip2
    from src.preflight import check_value
    from src.prompts import get_decoding

    defaults = {k.lower(): v for k, v in script_settings(__file__).items()}
    config = apply_overrides(globals(), check=check_value)
    if min(N_QUESTIONS, EVAL_BATCH, REPEATS) < 1 or NUM_WORKERS < 0:
        raise UserError("--n_questions, --eval_batch and --repeats must be at least 1, --num_workers at least 0")
    for name in DECODINGS:
        get_decoding(name)
    if TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    out_dir = REPO / OUTPUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)  # DATA_DIR and the dataset's image paths are relative to the repo

    samples = questions_of_images(load_samples(DATASET, "val", DATA_DIR), N_QUESTIONS, SEED)
    n_images = len({s.image_path for s in samples})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        work = Path(tmp)
        model_dir = MODEL_DIR
        if not model_dir:
            from twin import build_tiny_blip2

            model_dir = str(build_tiny_blip2(work / "tiny-blip2"))
        model, processor = load_blip2(model_dir, "none", device="cpu")
        print(f"***** eval_throughput: {len(samples)} {DATASET} val questions on {n_images} images, "
              f"batch {EVAL_BATCH}, {os.cpu_count()} cores ({cpu_model()}), torch threads {torch.get_num_threads()}, "
              f"1-min load average {load_before[0]:.2f} *****", flush=True)
        results = {name: run_decoding(model, processor, samples, name, work) for name in DECODINGS}
    load_after = os.getloadavg()

    tables = [format_table(name, rows) for name, rows in results.items()]
    print("\n" + "\n\n".join(tables))
    mismatched = [(name, r["config"], r["mismatches"]) for name, rows in results.items() for r in rows if r["mismatches"]]
    for name, cfg, qids in mismatched:
        print(f"MISMATCH: {cfg} ({name}) differs from one-at-a-time on {len(qids)} questions, e.g. {qids[:5]}")
    write_json(out_dir / "results.json", {"config": config, "n_images": n_images, "results": results,
                                          "load_average_before_after": [load_before[0], load_after[0]]})
    write_config(config, out_dir / "config.json")

    if WRITE_RESULTS:
        command = "python -m bench.eval_throughput" + "".join(
            f" --{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
            for k, v in config.items() if v != defaults[k])
        write_section(_SECTION, results_section(command, results, tables, samples, n_images,
                                                (load_before[0], load_after[0])))
        print(f"wrote the {_SECTION} section of {_RESULTS_MD.relative_to(REPO)}")
    if mismatched:
        raise UserError("batched answers differ from one-at-a-time answers (see MISMATCH above)")


def results_section(command: str, results: dict[str, list[dict]], tables: list[str], samples: list, n_images: int,
                    load_average: tuple[float, float]) -> str:
    """This script's section of bench/RESULTS.md: the setting, one table per decoding, a summary line each."""
    import torch
    import transformers

    lines = [
        "## eval_throughput: one question at a time vs batched evaluation (tiny BLIP-2, CPU)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} cores ({cpu_model()}), "
        f"torch threads {torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; 1-minute load average {load_average[0]:.2f} before, "
        f"{load_average[1]:.2f} after (the machine is shared: other work inflates wall times)",
        f"- command: `{command}`",
        f"- questions: {len(samples)} {DATASET} val questions, all those of {n_images} randomly drawn images "
        f"(seed {SEED}); model: {'the tiny BLIP-2 (python -m twin), fp32' if not MODEL_DIR else MODEL_DIR}; "
        f"prompt {VQA_PROMPT}",
        "- one_at_a_time: processor + `model.generate` per question; run_vqa_*: `src.evaluation.run_vqa` "
        "(image-grouped batches, shared images encoded once, JSONL rows); grouped_shared / grouped_unshared: "
        "a bare `generate_batch` loop over the same batches with each image encoded once / once per question; "
        "length_sorted: batches of questions sorted by prompt length. Image decoding is inside every timing; "
        f"each configuration ran {REPEATS} times round robin, the fastest wall time is shown with that run's CPU time "
        "(this process + DataLoader workers).",
        "- goal: batched >= 8x one-at-a-time on this 2-core CPU, with identical answers",
        f"- torch threads {torch.get_num_threads()} (TORCH_THREADS): with two OpenMP threads on this busy 2-core "
        "machine the tiny model's small ops wait for each other; one question at a time (beam 5) measured about "
        "10x slower (24 questions: 10.1 s with 2 threads vs 0.9 s with 1, 1-minute load average 5.5)",
        "- the tiny model's answers depend on the image (tests/test_inference.py checks that one question gets "
        "different answers on different images), so equal answers also show each question met its own image; "
        "tests/test_eval_batching.py checks the pairing on the pixel values too",
        "",
    ]
    for table in tables:
        lines += [table, ""]
    for name, rows in results.items():
        by = {r["config"]: r for r in rows}
        ours = ", ".join(f"{r['ratio_vs_one_at_a_time']:.1f}x with {r['config'].removeprefix('run_vqa_workers')} workers"
                         for r in rows if r["config"].startswith("run_vqa"))
        gain = by["grouped_unshared"]["seconds"] / by["grouped_shared"]["seconds"]
        line = (f"- {name}: our evaluation path (run_vqa) vs one at a time: {ours}; answers "
                f"{'identical' if all(r['answers_equal'] for r in rows) else 'NOT identical'}; "
                f"shared-image encoding gain {gain:.2f}x (grouped_unshared / grouped_shared)")
        if "length_sorted" in by:
            line += (f"; length-sorted batches take {by['length_sorted']['seconds'] / by['grouped_shared']['seconds']:.2f}x "
                     f"the time of image-grouped ones")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
