"""The offline twin's story, measured on every CPU kernel setting this machine has: the README's quick-start
chain on easy-VQA (build the twin, zero-shot baseline, QLoRA fine-tuning in 4-bit, evaluation on the same
questions), accuracy per kind of question before and after, the share of one-word answers and the
shuffled-image control.

    python -m bench.twin_story                           # every setting: about 4 minutes each on 2 CPU cores
    python -m bench.twin_story --settings=avx2:1         # one setting (ATEN_CPU_CAPABILITY:torch threads)
    python -m bench.twin_story --write_results=False     # print only
    python -m bench.twin_story --family=t5               # the Flan-T5 twin (python -m twin --family=t5), same chain

The twin's weights depend on the CPU's kernels, so one machine's numbers say little about another's. This
bench runs the chain once per kernel setting it can reach on one machine: ATEN_CPU_CAPABILITY = default,
avx2 and avx512 (those the CPU has), each with 1 and with 2 torch threads (the twin's build always uses one
thread, so each capability builds one twin), and writes every setting's figures and the minimum and
maximum of each to the twin_story section of bench/RESULTS.md. The README's offline table shows those
ranges. Each setting runs the README's commands (same flags, `python` = this interpreter) in a process of
its own with the kernel setting in its environment.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.config import apply_overrides
from tests.helpers import command_argv, readme_commands

REPO = Path(__file__).resolve().parents[1]

# -----------------------------------------------------------------------------
SETTINGS: str = "all"  # "all", or ATEN_CPU_CAPABILITY:threads pairs, e.g. "avx2:1,default:2"
FAMILY: str = "opt"  # "opt": the twin of blip2-opt-2.7b (the README's quick start); "t5": of blip2-flan-t5-xl
WRITE_RESULTS: bool = True  # replace the twin_story section of bench/RESULTS.md
SHUFFLE_SEED: int = 0
ONE_SETTING_DIR: str = ""  # internal: run the chain once in this folder (the kernel setting is in the environment)
# -----------------------------------------------------------------------------

CHAIN = ("twin", "create_vqav2_baseline.py", "finetune_vqav2_lora.py", "evaluate_vqav2_finetuned.py")
FIGURES = [  # (key, label) in the order of the table
    ("caption_accuracy", "twin caption accuracy (val images, exact)"),
    ("zero_shot_overall", "zero-shot: overall"),
    ("zero_shot_colour", "zero-shot: colour"),
    ("zero_shot_shape", "zero-shot: shape"),
    ("zero_shot_yes/no", "zero-shot: yes/no"),
    ("overall", "after QLoRA: overall"),
    ("colour", "after QLoRA: colour"),
    ("shape", "after QLoRA: shape"),
    ("yes/no", "after QLoRA: yes/no"),
    ("yes/no, attribute shown", "after QLoRA: yes/no whose colour/shape is in the picture"),
    ("one_word", "after QLoRA: one-word answers"),
    ("zero_shot_one_word", "zero-shot: one-word answers"),
    ("shuffled_colour", "shuffled-image control: colour accuracy"),
    ("build_seconds", "twin build (s)"),
]


def settings_here() -> list[tuple[str, int]]:
    """(ATEN_CPU_CAPABILITY, threads) for every kernel setting this CPU has, with 1 and 2 threads."""
    import torch

    best = torch.backends.cpu.get_cpu_capability().lower()  # e.g. "avx2", "avx512"
    caps = ["default", "avx2"] + (["avx512"] if best.startswith("avx512") else [])
    return [(cap, threads) for cap in caps for threads in (1, 2)]


def parse_settings(text: str) -> list[tuple[str, int]]:
    from src.errors import UserError

    if text == "all":
        return settings_here()
    try:
        return [(cap, int(threads)) for cap, threads in (item.split(":") for item in text.split(","))]
    except ValueError:
        raise UserError(f"--settings={text}: use \"all\" or CAPABILITY:THREADS pairs, e.g. avx2:1,default:2") from None


def run_chain(work: Path, model: Path) -> dict[str, float]:
    """The quick start's build, baseline, fine-tuning and evaluation (the README's lines, the twin in
    `model`, the outputs in `work`); seconds per step."""
    seconds = {}
    for cmd in readme_commands():
        argv = command_argv(cmd)  # `python` is this interpreter
        script = argv[2] if argv[1] == "-m" else argv[1]
        if script not in CHAIN:
            continue
        argv = [str(model) if a == "outputs/tiny-blip2" else a.replace("=outputs/tiny-blip2", f"={model}") for a in argv]
        if script != "twin":
            argv.append(f"--output_dir={work}")
        elif FAMILY != "opt":
            argv.append(f"--family={FAMILY}")
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        seconds[script] = round(time.perf_counter() - start, 1)
        shown = f"{cmd} --family={FAMILY}" if script == "twin" and FAMILY != "opt" else cmd
        print(f"  {shown}  ({seconds[script]} s)", flush=True)
    return seconds


def figures_of(work: Path, model: Path) -> dict:
    """Every figure of one chain's files (FIGURES), the shuffled-image control run here."""
    from src.modeling import apply_adapter, load_blip2
    from src.prompts import get_decoding
    from tests.twin_story import accuracy_by_kind, attribute_shown, one_word_share, shuffled_image_control

    card = json.loads((model / "card.json").read_text())
    rows = {run: [json.loads(l) for l in (work / f"vqav2_{run}.jsonl").read_text().splitlines() if l.strip()]
            for run in ("baseline", "finetuned")}
    zero, tuned = accuracy_by_kind(rows["baseline"]), accuracy_by_kind(rows["finetuned"])
    shown = [r for r in rows["finetuned"] if attribute_shown(r)]
    model_, processor = load_blip2(str(model), "4bit")
    model_ = apply_adapter(model_, str(work / "lora_adapter"))
    control = shuffled_image_control(model_, processor, rows["finetuned"], rows["finetuned"][0]["prompt"],
                                     get_decoding("vqa_beam5"), seed=SHUFFLE_SEED)
    return {"caption_accuracy": card["caption_accuracy"],
            **{f"zero_shot_{k}": zero.get(k, {"accuracy": 0.0})["accuracy"] for k in ("overall", "colour", "shape", "yes/no")},
            **{k: tuned[k]["accuracy"] for k in ("overall", "colour", "shape", "yes/no")},
            "yes/no, attribute shown": round(100 * sum(r["vqa_accuracy"] for r in shown) / len(shown), 1),
            "one_word": one_word_share(rows["finetuned"]), "zero_shot_one_word": one_word_share(rows["baseline"]),
            "shuffled_colour": control["accuracy"], "build_seconds": card["seconds"],
            "n": {k: tuned[k]["n"] for k in ("overall", "colour", "shape", "yes/no")} | {"yes/no, attribute shown": len(shown)},
            "parameters": card["parameters"],
            "steps": card["steps"]}


def one_setting(folder: Path) -> None:
    """Run the chain in `folder` (the twin in `folder`/tiny-blip2, reused when built already) and write
    figures.json there."""
    work = folder / "run"
    work.mkdir(parents=True)
    seconds = run_chain(work, folder / "tiny-blip2")
    figures = figures_of(work, folder / "tiny-blip2")
    (folder / "figures.json").write_text(json.dumps({**figures, "seconds": seconds}, indent=1))


def table(results: dict[tuple[str, int], dict]) -> str:
    settings = list(results)
    head = "| figure (%) | min | max | " + " | ".join(f"{c}, {t} thr." for c, t in settings) + " |"
    lines = [head, "|" + "---|" * (3 + len(settings))]
    for key, label in FIGURES:
        values = [results[s][key] for s in settings]
        lines.append(f"| {label} | {min(values)} | {max(values)} | " + " | ".join(map(str, values)) + " |")
    return "\n".join(lines)


def main():
    from src.preflight import check_value

    apply_overrides(globals(), check=check_value)
    if FAMILY not in ("opt", "t5"):
        from src.errors import UserError

        raise UserError(f"--family={FAMILY}: use opt or t5")
    if ONE_SETTING_DIR:
        one_setting(Path(ONE_SETTING_DIR))
        return
    settings = parse_settings(SETTINGS)
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cap, threads in settings:
            folder = Path(tmp) / f"{cap}-{threads}"
            twin = Path(tmp) / f"twin-{cap}"  # one twin per capability: the build always uses one thread
            folder.mkdir()
            (folder / "tiny-blip2").symlink_to(twin, target_is_directory=True)
            twin.mkdir(exist_ok=True)
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(threads),
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
            print(f"ATEN_CPU_CAPABILITY={cap}, {threads} torch thread(s):", flush=True)
            subprocess.run([sys.executable, "-m", "bench.twin_story", f"--one_setting_dir={folder}", f"--family={FAMILY}"],
                           cwd=REPO, env=env, check=True)
            results[(cap, threads)] = json.loads((folder / "figures.json").read_text())
    first = next(iter(results.values()))
    section = "twin_story" if FAMILY == "opt" else f"twin_story_{FAMILY}"
    twin = {"opt": "the offline twin", "t5": "the Flan-T5 twin (--family=t5)"}[FAMILY]
    lines = [
        f"## {section}: {twin} on easy-VQA, zero-shot vs QLoRA (the README's quick start), per kernel setting",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; best kernels of this CPU: "
        f"{__import__('torch').backends.cpu.get_cpu_capability()}",
        f"- command: `python -m bench.twin_story{'' if FAMILY == 'opt' else ' --family=' + FAMILY}` (the quick-start commands of README.md, same flags, one process "
        "per setting with ATEN_CPU_CAPABILITY and OMP_NUM_THREADS set)",
        f"- twin: {first['parameters']:,} parameters, pre-trained {first['steps']} steps; questions: "
        + ", ".join(f"{k} {v}" for k, v in first["n"].items()),
        f"- shuffled-image control: the same adapter, the colour questions' images shuffled among them (seed {SHUFFLE_SEED})",
        "",
        table(results),
        "",
        "- seconds per step: " + "; ".join(f"{c}/{t}: " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items())
                                           for (c, t), r in results.items()),
    ]
    text = "\n".join(lines)
    print(text)
    if WRITE_RESULTS:
        from bench.results_md import write_section

        write_section(section, text)


if __name__ == "__main__":
    from src.errors import run_main

    run_main(main)
