"""Where the LoRA goes, on the offline twin: the README's quick-start fine-tuning on easy-VQA once per LORA_SCOPE
(the language model, the Q-Former with its projection, both), each adapter evaluated with
evaluate_vqav2_finetuned.py on the same frozen sample as the zero-shot baseline.

    python -m bench.lora_scopes                                   # the three scopes, the quick start's settings
    python -m bench.lora_scopes --steps=100 --write_results=False   # shorter, print only
    python -m bench.lora_scopes --model_id=outputs/tiny-blip2-t5  # the Flan-T5 twin (python -m twin DIR --family=t5)

Each run uses the README's quick-start commands (create_vqav2_baseline.py, finetune_vqav2_lora.py,
evaluate_vqav2_finetuned.py: same flags, `python` = this interpreter), adding --lora_scope, its own output
folder and, when the fine-tuning script has them, --eval_every/--eval_samples for a held-out curve. It prints
per scope the trainable parameters, the final training loss, the accuracy overall and per kind of question, how
many answers differ from the zero-shot ones, and the held-out curve when train_log.jsonl rows carry one; with
WRITE_RESULTS the lora_scopes section of bench/RESULTS.md. MODEL_ID is built with `python -m twin` if missing.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides
from tests.helpers import command_argv, readme_commands

REPO = Path(__file__).resolve().parents[1]

# -----------------------------------------------------------------------------
MODEL_ID: str = "outputs/tiny-blip2"  # the twin (built here with `python -m twin` when the folder is missing)
SCOPES: str = "language_model,qformer,both"  # LORA_SCOPE values, comma-separated
STEPS: int = 0  # fine-tuning steps; 0 = the quick start's
EVAL_EVERY: int = 50  # held-out curve: steps between held-out evaluations (passed only if the script has it)
EVAL_SAMPLES: int = 100  # held-out questions per point of the curve (passed only if the script has it)
OUTPUT_DIR: str = ""  # "" = a temporary folder
WRITE_RESULTS: bool = True  # replace the lora_scopes section of bench/RESULTS.md
# -----------------------------------------------------------------------------


def quickstart_argv(script: str) -> list[str]:
    """The README quick start's command line of `script` (its first), with this interpreter."""
    return next(command_argv(c) for c in readme_commands() if command_argv(c)[1] == script)


def with_settings(argv: list[str], **settings) -> list[str]:
    """`argv` with --name=value for each setting (replacing the command's own)."""
    names = {f"--{k}" for k in settings}
    return [a for a in argv if a.split("=", 1)[0] not in names] + [f"--{k}={v}" for k, v in settings.items()]


def run(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc, round(time.perf_counter() - start, 1)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def one_scope(scope: str, work: Path, zero_shot: dict, curve_settings: dict) -> dict:
    """Fine-tune with `scope`, evaluate on the frozen sample; the figures."""
    from tests.twin_story import accuracy_by_kind

    steps = {"train_steps": STEPS} if STEPS else {}
    (work / scope).mkdir(exist_ok=True)  # the held-out slice avoids the baseline's frozen sample: the same one here
    shutil.copyfile(work / "vqav2_sample_ids.json", work / scope / "vqav2_sample_ids.json")
    train, train_s = run(with_settings(quickstart_argv("finetune_vqav2_lora.py"), model_id=MODEL_ID, lora_scope=scope,
                                       output_dir=work / scope, **steps, **curve_settings))
    adapter = work / scope / "lora_adapter"
    _, eval_s = run(with_settings(quickstart_argv("evaluate_vqav2_finetuned.py"), model_id=MODEL_ID,
                                  adapter_dir=adapter, run_name=f"finetuned_{scope}", output_dir=work))
    rows = rows_of(work / f"finetuned_{scope}.jsonl")
    log = rows_of(adapter / "train_log.jsonl")
    trainable = re.search(r"trainable parameters: ([\d,]+) of", train.stdout).group(1)
    return {"accuracy": {k: v["accuracy"] for k, v in accuracy_by_kind(rows).items()},
            "changed": sum(r["answer"] != zero_shot[r["question_id"]] for r in rows), "n": len(rows),
            "trainable": trainable, "steps": log[-1]["step"], "final_loss": round(log[-1]["loss"], 4),
            "curve": [(r["step"], r["heldout"]["accuracy"]) for r in log if "heldout" in r],
            "seconds": {"train": train_s, "evaluate": eval_s}}


KINDS = ("overall", "colour", "shape", "yes/no")


def table(zero: dict, results: dict) -> str:
    scopes = list(results)
    lines = ["| figure | zero-shot | " + " | ".join(f"`{s}`" for s in scopes) + " |", "|" + "---|" * (2 + len(scopes))]
    for kind in KINDS:
        lines.append(f"| accuracy: {kind} (%) | {zero.get(kind, 0.0)} | "
                     + " | ".join(str(results[s]["accuracy"].get(kind, 0.0)) for s in scopes) + " |")
    for label, key in (("answers that differ from zero-shot", "changed"), ("trainable LoRA parameters", "trainable"),
                       ("final training loss", "final_loss"), ("fine-tuning seconds", None)):
        cells = [f"{results[s]['changed']} of {results[s]['n']}" if key == "changed" else
                 str(results[s][key]) if key else str(results[s]["seconds"]["train"]) for s in scopes]
        lines.append(f"| {label} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(results: dict) -> list[str]:
    """The held-out curve of each scope as 'step: accuracy' pairs."""
    return [f"- held-out curve, `{s}`: " + ", ".join(f"{step}: {acc}" for step, acc in r["curve"])
            for s, r in results.items() if r["curve"]]


def main():
    from bench import FINETUNE_SCRIPT
    from src.config import script_settings
    from src.preflight import check_value
    from tests.twin_story import accuracy_by_kind

    apply_overrides(globals(), check=check_value)
    if not (REPO / MODEL_ID).exists() and not Path(MODEL_ID).exists():
        print(f"building the twin into {MODEL_ID}", flush=True)
        run([*command_argv("python -m twin"), MODEL_ID])
    has_curve = "EVAL_EVERY" in script_settings(FINETUNE_SCRIPT)  # the held-out curve, where the script has it
    curve_settings = {"eval_every": EVAL_EVERY, "eval_samples": EVAL_SAMPLES} if has_curve else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(OUTPUT_DIR or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        baseline = with_settings(quickstart_argv("create_vqav2_baseline.py"), model_id=MODEL_ID, output_dir=work)
        run(baseline)
        zero_rows = rows_of(work / "vqav2_baseline.jsonl")
        zero = {k: v["accuracy"] for k, v in accuracy_by_kind(zero_rows).items()}
        zero_shot = {r["question_id"]: r["answer"] for r in zero_rows}
        results = {}
        for scope in [s.strip() for s in SCOPES.split(",") if s.strip()]:
            print(f"LORA_SCOPE={scope} ...", flush=True)
            results[scope] = one_scope(scope, work, zero_shot, curve_settings)
    first = next(iter(results.values()))
    finetune = " ".join(with_settings(quickstart_argv("finetune_vqav2_lora.py"), model_id=MODEL_ID,
                                      **({"train_steps": STEPS} if STEPS else {}))[1:])
    lines = [
        "## lora_scopes: where the LoRA goes (LORA_SCOPE), the offline twin on easy-VQA",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; twin: {MODEL_ID}",
        f"- command: `python -m bench.lora_scopes{' --steps=' + str(STEPS) if STEPS else ''}`; "
        f"each scope: `python {finetune} --lora_scope=SCOPE` ({first['steps']} steps), then the quick start's "
        f"evaluation on the same frozen sample of {first['n']} questions as the zero-shot baseline (4-bit NF4)",
        "",
        table(zero, results),
        "",
        *(curves(results) or ["- held-out curve: not recorded (the fine-tuning script has no EVAL_EVERY)"
                              if not has_curve else "- held-out curve: no train_log.jsonl row carried one"]),
    ]
    text = "\n".join(lines)
    print(text)
    if WRITE_RESULTS:
        from bench.results_md import write_section

        write_section("lora_scopes", text)


if __name__ == "__main__":
    from src.errors import run_main

    run_main(main)
