"""The offline twin's story, measured: the README's quick-start chain on easy-VQA (zero-shot baseline,
QLoRA fine-tuning in 4-bit, evaluation on the same questions), accuracy per kind of question before and
after, the share of one-word answers, and the shuffled-image control.

    python -m bench.twin_story                         # about 4 minutes on 2 CPU cores
    python -m bench.twin_story --write_results=False   # print only

Runs the scripts as the README does (same flags) into a temporary folder and writes the marked
twin_story section of bench/RESULTS.md. The README's offline numbers come from this section.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides
from src.twin_story import readme_commands

REPO = Path(__file__).resolve().parents[1]

# -----------------------------------------------------------------------------
WRITE_RESULTS = True  # replace the twin_story section of bench/RESULTS.md
SHUFFLE_SEED = 0
# -----------------------------------------------------------------------------


def run_chain(work: Path) -> dict[str, float]:
    """The quick start's build, baseline, fine-tuning and evaluation, into `work`; seconds per step."""
    model = work / "tiny-blip2"
    seconds = {}
    for cmd in readme_commands():
        script = cmd.split()[1] if cmd.split()[1] != "-m" else cmd.split()[2]
        if script not in ("src.tiny_model", "create_vqav2_baseline.py", "finetune_vqav2_lora.py",
                          "evaluate_vqav2_finetuned.py"):
            continue
        cmd = cmd.replace("outputs/tiny-blip2", str(model))
        if script != "src.tiny_model":
            cmd += f" --output_dir={work}"
        start = time.perf_counter()
        proc = subprocess.run(cmd, shell=True, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        seconds[script] = round(time.perf_counter() - start, 1)
        print(f"{cmd}  ({seconds[script]} s)", flush=True)
    return seconds


def main():
    apply_overrides(globals())
    from src.modeling import load_blip2
    from src.prompts import get_decoding
    from src.twin_story import KINDS, accuracy_by_kind, one_word_share, shuffled_image_control

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seconds = run_chain(work)
        card = json.loads((work / "tiny-blip2" / "card.json").read_text())
        rows = {run: [json.loads(l) for l in (work / f"vqav2_{run}.jsonl").read_text().splitlines() if l.strip()]
                for run in ("baseline", "finetuned")}
        acc = {run: accuracy_by_kind(r) for run, r in rows.items()}
        model, processor = load_blip2(str(work / "tiny-blip2"), "4bit", adapter=str(work / "lora_adapter"))
        control = shuffled_image_control(model, processor, rows["finetuned"], "vqa_opt", get_decoding("vqa_beam5"),
                                         seed=SHUFFLE_SEED)
    lines = [
        "## twin_story: the offline twin on easy-VQA, zero-shot vs QLoRA (the README's quick start)",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, Python {platform.python_version()}",
        "- command: `python -m bench.twin_story` (the quick-start commands of README.md, same flags)",
        f"- twin: {card['parameters']:,} parameters, pre-trained {card['steps']} steps on easy-VQA train captions in "
        f"{card['seconds']} s; caption accuracy {card['caption_accuracy']}% ({card['caption_accuracy_on']})",
        "- seconds per step: " + ", ".join(f"{k} {v}" for k, v in seconds.items()),
        "",
        "| VQA accuracy (%) | n | zero-shot | after QLoRA |",
        "|---|---|---|---|",
    ]
    for kind in ("overall", *KINDS):
        b, f = acc["baseline"].get(kind, {"n": 0, "accuracy": 0}), acc["finetuned"].get(kind, {"n": 0, "accuracy": 0})
        lines.append(f"| {kind} | {f['n']} | {b['accuracy']} | {f['accuracy']} |")
    lines += [
        "",
        f"- one-word answers: zero-shot {one_word_share(rows['baseline'])}%, after QLoRA {one_word_share(rows['finetuned'])}%",
        f"- shuffled-image control (the same adapter, the colour questions' images shuffled among them, seed "
        f"{SHUFFLE_SEED}): colour accuracy {control['accuracy']}% on {control['n']} questions; "
        f"{control['answers_naming_the_shown_colour']}% of the answers name the colour of the image shown",
    ]
    text = "\n".join(lines)
    print(text)
    if WRITE_RESULTS:
        from bench.results_md import write_section

        write_section("twin_story", text)


if __name__ == "__main__":
    from src.errors import run_main

    run_main(main)
