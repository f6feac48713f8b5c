"""Time `python -m bench.vqa_eval` against the official VQA evaluation tool on a VQAv2-sized set, and check
that every number agrees.

Writes a synthetic val2014-sized set (214,354 questions x 10 answers, a function of SEED) in the
official VQAv2 question / annotation / results JSON formats, then runs, each as a fresh process that
reads the files and writes its metrics:
  - ours: `python -m bench.vqa_eval` (3 runs, the median is compared),
  - the official tool: GT-Vision-Lab/VQA vqaEval.py as transcribed in tests/vqa_official.py (1 run).
It prints both timings and the ratio, checks every number (overall, per answer type, per question
type, per question) equal, and replaces this script's section of bench/RESULTS.md.

    python -m bench.bench_vqa_eval                                           # full size (a few minutes)
    python -m bench.bench_vqa_eval --n_questions=2000 --write_results=False  # smoke run, seconds
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.results_md import write_section
from src.config import apply_overrides
from src.errors import UserError, run_main

# -----------------------------------------------------------------------------
N_QUESTIONS: int = 214_354  # VQAv2 val2014 has 214,354 questions
N_ANSWERS: int = 10  # ground-truth answers per question, as in VQAv2
SEED: int = 1234  # the synthetic set is a function of this seed
WORK_DIR: str = "outputs/bench_vqa_eval"  # where the synthetic files go (relative to the repo)
KEEP_FILES: bool = False  # keep the ~200 MB of synthetic JSON after the run
RUNS: int = 3  # runs of our CLI (the official tool, about 30x slower, runs once)
WRITE_RESULTS: bool = True  # replace this script's section of bench/RESULTS.md
DEBUG: bool = False  # show tracebacks instead of one-line errors
# -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
_SECTION = "bench_vqa_eval"  # the marked section of RESULTS.md this script owns
_FLOOR = 4.0  # ours must be at least this many times faster than the official tool

# --- the synthetic set --------------------------------------------------------------------------

_QUESTION_TYPES = {
    "yes/no": ["is the", "are the", "is this", "does the", "is there a", "are these", "can you", "do you", "is it",
               "was the", "has the", "could", "are there any", "is this a", "is the man", "is the woman"],
    "number": ["how many", "how many people are", "how many people are in", "what number is",
               "what time", "how many people are there"],
    "other": ["what color is the", "what is the", "what", "what is", "what kind of", "what type of", "where is the",
              "why", "which", "who is", "what is on the", "what sport is", "what brand", "what room is",
              "what animal is", "what is the man", "what is the woman", "none of the above", "what are",
              "what color are the", "what is in the", "where are the", "what is this"],
}
_WORDS = ["dog", "cat", "red", "blue", "white", "black", "green", "man", "woman", "table", "pizza", "tennis",
          "baseball", "frisbee", "kitchen", "bathroom", "street", "sign", "train", "bus", "skateboard", "surfing",
          "umbrella", "clock", "left", "right", "sunny", "snow", "water", "grass", "wood", "metal", "plastic",
          "brown", "yellow", "orange", "pink", "purple", "gray", "silver", "giraffe", "elephant", "horse", "cow",
          "sheep", "bird", "banana", "apple", "sandwich", "cake", "donut", "hot dog", "laptop", "phone", "tv",
          "remote", "bed", "couch", "chair", "toilet", "sink", "window", "door", "tree", "sky", "ocean", "beach",
          "mountain", "city", "park", "kite", "boat", "plane", "motorcycle", "bicycle", "car", "truck", "helmet"]
_WEIRD = ["t.v.", "u.s.a.", "1,000", "10:30", "3.5", "hot-dog", "don't know", "dont know", "can't tell",
          "cant tell", "it's raining", "its raining", "yes.", "no!", "(left)", "left / right", "a/b", "5 - 10",
          "$5.00", "2.5 feet", "mr. smith", "st. louis", "1/2", "50%", "#3", "it isnt", "im not sure",
          "ive seen", "Id've", "o'clock", "oclock", "whats that", "the end.", "an apple.", "A Dog", "THE DOG",
          "none", "zero", "ten", "one.", "two,three", "two, three", "dog ;cat", "dog; cat", "x ,y", "@home",
          "e-mail", "e - mail", "`quoted`", "\"quoted\"", "[brackets]", "{braces}", "a+b", "a = b", "<tag>",
          "snake_case", "back\\slash", "what?", "wow!", "3,5", "1, 2", "....", "a.b.c", "no.", "No", "Yes"]


def _variants(answer: str, rng: random.Random) -> str:
    """One of the ways an annotator or a model writes `answer` (case, articles, number words, punctuation)."""
    numbers = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
               "7": "seven", "8": "eight", "9": "nine", "10": "ten"}
    r = rng.random()
    if r < 0.55:
        return answer
    if r < 0.62:
        return answer.capitalize()
    if r < 0.68:
        return numbers.get(answer, "the " + answer)
    if r < 0.72:
        return "a " + answer
    if r < 0.77:
        return answer + rng.choice([".", "!", "?", " .", ",", ";"])
    if r < 0.80:
        return " " + answer + "\n"
    if r < 0.83:
        return answer + "s"
    if r < 0.86:
        return answer.replace(" ", "-")
    return answer.upper() if rng.random() < 0.2 else answer


def _rare(rng: random.Random) -> str:
    """A long-tail answer that few other annotators give (most answers in VQAv2 are unique strings)."""
    r = rng.random()
    if r < 0.4:
        return " ".join(rng.sample(_WORDS, rng.randint(2, 4)))
    if r < 0.6:
        return f"{rng.randint(11, 5000)}"
    if r < 0.75:
        return rng.choice(_WEIRD) + " " + rng.choice(_WORDS)
    if r < 0.85:
        return f"{rng.randint(1, 99)},{rng.randint(100, 999)} {rng.choice(_WORDS)}"
    if r < 0.95:
        return rng.choice(_WORDS) + rng.choice([". ", " .", "..", "...", ".5", " - ", "/"]) + rng.choice(_WORDS)
    return "." * rng.randint(30, 45) + rng.choice(_WORDS)


def make_synthetic_set(n_questions: int, n_answers: int, seed: int) -> tuple[dict, dict, list]:
    """(questions, annotations, results) in the official VQAv2 formats."""
    rng = random.Random(seed)
    questions, annotations, results = [], [], []
    types = [(atype, qtype) for atype, qtypes in _QUESTION_TYPES.items() for qtype in qtypes]
    weights = [38 / 16] * 16 + [12 / 6] * 6 + [50 / 23] * 23
    for i in range(n_questions):
        qid = 1_000_000 + 7 * i
        image_id = 100_000 + i // 5
        atype, qtype = rng.choices(types, weights)[0]
        if atype == "yes/no":
            truth = rng.choice(["yes", "no"])
            pool = ["yes", "no"]
        elif atype == "number":
            truth = str(rng.choice([0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 12, 20]))
            pool = [str(k) for k in range(0, 11)]
        else:
            truth = rng.choice(_WORDS + _WEIRD[:20])
            pool = _WORDS
        agreement = rng.random()
        answers = []
        for j in range(n_answers):
            r = rng.random()
            if agreement > 0.55 and atype == "yes/no":
                text = truth  # unanimous yes/no: common in VQAv2
            elif r < agreement:
                text = _variants(truth, rng)
            elif r < agreement + 0.12:
                text = _rare(rng)
            else:
                text = _variants(rng.choice(pool), rng)
            answers.append({"answer": text, "answer_confidence": rng.choice(["yes", "yes", "maybe", "no"]),
                            "answer_id": j + 1})
        counts: dict[str, int] = {}
        for a in answers:
            counts[a["answer"]] = counts.get(a["answer"], 0) + 1
        annotations.append({"question_type": qtype, "multiple_choice_answer": max(counts, key=counts.get),
                            "answers": answers, "image_id": image_id, "answer_type": atype, "question_id": qid})
        questions.append({"image_id": image_id, "question": f"{qtype} thing number {i}?", "question_id": qid})
        r = rng.random()
        if r < 0.55:
            prediction = _variants(truth, rng)
        elif r < 0.75:
            prediction = rng.choice(answers)["answer"]
        elif r < 0.93:
            prediction = _variants(rng.choice(pool), rng)
        elif r < 0.97:
            prediction = _rare(rng)
        else:
            prediction = rng.choice(["\t" + truth + " ", truth + "\n\n", "the " + truth + ".", truth.upper()])
        results.append({"question_id": qid, "answer": prediction})
    head = {"info": {"description": "synthetic VQAv2-sized set for bench/bench_vqa_eval.py"},
            "license": {"name": "none", "url": ""}, "data_subtype": "val2014", "data_type": "mscoco"}
    q_file = dict(head, task_type="Open-Ended", questions=questions)
    a_file = dict(head, annotations=annotations)
    rng.shuffle(results)  # results need not be in annotation order
    return q_file, a_file, results


# --- the run ----------------------------------------------------------------------------------------

def write_set(paths: dict) -> tuple[float, dict]:
    """Generate the set and write its three files; (seconds, MB per file)."""
    t = time.perf_counter()
    questions, annotations, results = make_synthetic_set(N_QUESTIONS, N_ANSWERS, SEED)
    for name, obj in (("questions", questions), ("annotations", annotations), ("results", results)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(obj, f)
    return time.perf_counter() - t, {name: paths[name].stat().st_size / 1e6
                                     for name in ("questions", "annotations", "results")}


def timed(command: list[str], out: Path) -> tuple[float, float, dict]:
    """Run one scorer as a fresh process: (wall s, user+sys CPU s, the metrics it wrote)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise UserError(f"{' '.join(command[:3])} failed: {proc.stderr.strip()[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    from src.preflight import check_value

    apply_overrides(globals(), check=check_value)
    work = REPO / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    paths = {name: work / f"{name}.json" for name in ("questions", "annotations", "results", "ours", "official")}
    files = [str(paths[name]) for name in ("questions", "annotations", "results")]
    print(f"***** bench_vqa_eval: {N_QUESTIONS} questions x {N_ANSWERS} answers, {os.cpu_count()} cores *****")
    generate_s, sizes_mb = write_set(paths)
    print(f"generated in {generate_s:.1f} s: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes_mb.items()))

    load_before = os.getloadavg()[0]
    ours_cli = [sys.executable, "-m", "bench.vqa_eval", "--questions", files[0], "--annotations", files[1],
                "--results", files[2], "--out", str(paths["ours"])]
    ours_runs = [timed(ours_cli, paths["ours"]) for _ in range(RUNS)]
    official_cli = [sys.executable, "-m", "tests.vqa_official", *files, str(paths["official"])]
    official_s, official_cpu_s, official = timed(official_cli, paths["official"])
    load_after = os.getloadavg()[0]
    ours = ours_runs[-1][2]
    agree = {key: ours[key] == official[key] for key in official}
    ours_s = statistics.median(run[0] for run in ours_runs)
    ours_cpu_s = statistics.median(run[1] for run in ours_runs)
    ratio = official_s / ours_s
    print(f"{'':<14}{'wall s':>9}{'CPU s':>9}\n{'official tool':<14}{official_s:>9.2f}{official_cpu_s:>9.2f}\n"
          f"{'ours (median)':<14}{ours_s:>9.2f}{ours_cpu_s:>9.2f}\n"
          f"ours is {ratio:.1f}x faster ({official_cpu_s / ours_cpu_s:.1f}x by CPU time; floor {_FLOOR:.0f}x: "
          f"{'met' if ratio >= _FLOOR else 'NOT met'}); "
          f"1-minute load average {load_before:.2f} before, {load_after:.2f} after")
    print("every number equal: " + ", ".join(f"{k} {v}" for k, v in agree.items()))
    print(f"overall {ours['overall']:.2f}, per answer type {ours['perAnswerType']}")
    if not KEEP_FILES:  # remove only what this run wrote: WORK_DIR may be a shared folder
        for path in paths.values():
            path.unlink(missing_ok=True)
        if not any(work.iterdir()):
            work.rmdir()
    if WRITE_RESULTS:
        write_section(_SECTION, results_text(sizes_mb, generate_s, ours_runs, official_s, official_cpu_s,
                                             (load_before, load_after), agree, ours))
        print(f"wrote the {_SECTION} section of bench/RESULTS.md")
    if not all(agree.values()):
        raise UserError("ours and the official tool disagree: " + ", ".join(k for k, v in agree.items() if not v))


def results_text(sizes_mb, generate_s, ours_runs, official_s, official_cpu_s, loads, agree, ours) -> str:
    ours_s = statistics.median(run[0] for run in ours_runs)
    command = " ".join(["python -m bench.bench_vqa_eval", *sys.argv[1:]])
    return "\n".join([
        "## bench_vqa_eval: `python -m bench.vqa_eval` vs the official vqaEval.py on a VQAv2-sized set",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}",
        f"- command: `{command}`",
        f"- set: {N_QUESTIONS} questions x {N_ANSWERS} answers (seed {SEED}), official JSON formats; "
        + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes_mb.items()) + f"; generated in {generate_s:.1f} s",
        "- each scorer runs as a fresh process that reads the three files and writes its metrics; the "
        "official tool is GT-Vision-Lab/VQA vqaEval.py as transcribed in tests/vqa_official.py",
        f"- 1-minute load average {loads[0]:.2f} before, {loads[1]:.2f} after (other work on the machine "
        "inflates wall time)",
        "",
        "| scorer | runs | wall s | CPU s (user+sys) |",
        "| --- | ---: | ---: | ---: |",
        f"| official vqaEval.py | 1 | {official_s:.2f} | {official_cpu_s:.2f} |",
        f"| `python -m bench.vqa_eval` | {len(ours_runs)} | {', '.join(f'{r[0]:.2f}' for r in ours_runs)} "
        f"(median {ours_s:.2f}) | {', '.join(f'{r[1]:.2f}' for r in ours_runs)} |",
        "",
        f"- ours is {official_s / ours_s:.1f}x faster than the official tool (wall, median run; "
        f"{official_cpu_s / statistics.median(run[1] for run in ours_runs):.1f}x by CPU time); floor "
        f"{_FLOOR:.0f}x: {'met' if official_s / ours_s >= _FLOOR else 'NOT met'}",
        "- every number equal (overall, per answer type, per question type, per question): "
        + ", ".join(f"{k} {v}" for k, v in agree.items()),
        f"- overall {ours['overall']:.2f}; per answer type "
        + ", ".join(f"{k} {v:.2f}" for k, v in ours["perAnswerType"].items()),
    ])


if __name__ == "__main__":
    run_main(main)
