"""README steps 3-5 on the offline twin and easy-VQA, as the README's quick start runs them: baseline ->
QLoRA fine-tuning (4-bit) -> evaluation on the same questions, with checks that fail on a conditioning
bug (colour answers need the image: a shuffled-image control falls to chance); checkpoint fallback,
data parallelism with two processes, and bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import (QUICKSTART_HEADING, REPO, assert_one_line_error, load_tuned, module_fixture, quickstart_run,
                     random_adapter, readme_commands, run_in_process, run_script)
from src.vqa_eval import exact_match, score_rows, vqa_accuracy


def rows_of(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def readme_setting(script: str, name: str) -> int:
    cmd = next(c for c in readme_commands(QUICKSTART_HEADING) if script in c)
    return int(re.search(rf"--{name}=(\d+)", cmd).group(1))


EVAL_N = readme_setting("create_vqav2_baseline.py", "max_samples")
TRAIN_STEPS = readme_setting("finetune_vqav2_lora.py", "train_steps")


@module_fixture
def chain(quickstart):
    """The quick start's baseline, fine-tuning and evaluation (the README commands, default 4-bit)."""
    return {"out": quickstart["out"], "model": quickstart["model"], "repo": quickstart["repo"],
            "baseline_stdout": quickstart_run(quickstart, "create_vqav2_baseline.py").stdout,
            "train_stdout": quickstart_run(quickstart, "finetune_vqav2_lora.py").stdout,
            "eval_stdout": quickstart_run(quickstart, "evaluate_vqav2_finetuned.py").stdout}


def test_both_runs_cover_exactly_the_frozen_sample(chain):
    out = chain["out"]
    frozen = json.loads((out / "vqav2_sample_ids.json").read_text())
    assert frozen["dataset"] == "easy_vqa" and frozen["split"] == "val" and len(frozen["question_ids"]) == EVAL_N
    for run in ("vqav2_baseline", "vqav2_finetuned"):
        ids = [r["question_id"] for r in rows_of(out / f"{run}.jsonl")]
        assert ids == frozen["question_ids"], run  # each id once, in sample order


def test_metrics_files_equal_the_scorer(chain):
    out = chain["out"]
    for run in ("vqav2_baseline", "vqav2_finetuned"):
        rows = rows_of(out / f"{run}.jsonl")
        for r in rows:
            assert r["vqa_accuracy"] == vqa_accuracy(r["answer"], r["gt_answers"])
            assert r["exact_match"] == exact_match(r["answer"], r["gt_answers"])
            assert len(r["gt_answers"]) == 10 and r["prompt"] == "vqa_opt" and r["decoding"]["num_beams"] == 5
            assert r["quantization"] == "4bit" and r["dataset"] == "easy_vqa"
        metrics = json.loads((out / f"{run}_metrics.json").read_text())
        expected = score_rows(rows)
        assert metrics["vqa_accuracy"] == expected["vqa_accuracy"]
        assert metrics["exact_match"] == expected["exact_match"]
        assert metrics["n"] == EVAL_N and metrics["n_errors"] == 0
        assert metrics["per_answer_type"] == expected["per_answer_type"]
        # independent mean of the per-row scores
        assert metrics["vqa_accuracy"] == round(100 * sum(r["vqa_accuracy"] for r in rows) / len(rows), 2)
        results = json.loads((out / f"{run}_results.json").read_text())
        assert results == [{"question_id": r["question_id"], "answer": r["answer"]} for r in rows]
    assert rows_of(out / "vqav2_finetuned.jsonl")[0]["adapter"].endswith("lora_adapter")


def test_fine_tuning_learns_to_read_the_image(chain):
    """(a) colour >= 85% and shape >= 55% after fine-tuning, (b) >= 95% one-word answers,
    (c) the same adapter on shuffled images falls to chance on colour (<= 35%)."""
    from src.prompts import get_decoding
    from twin_story import accuracy_by_kind, one_word_share, shuffled_image_control

    out = chain["out"]
    base = accuracy_by_kind(rows_of(out / "vqav2_baseline.jsonl"))
    ft_rows = rows_of(out / "vqav2_finetuned.jsonl")
    ft = accuracy_by_kind(ft_rows)
    assert ft["colour"]["n"] >= 30 and ft["shape"]["n"] >= 30, ft
    assert ft["colour"]["accuracy"] >= 85, (base, ft)
    assert ft["shape"]["accuracy"] >= 55, (base, ft)
    assert ft["overall"]["accuracy"] >= base["overall"]["accuracy"] + 30, (base, ft)
    assert one_word_share(ft_rows) >= 95
    model, processor = load_tuned(chain["model"], "4bit", str(out / "lora_adapter"))
    in_repo = [{**r, "image_path": str(chain["repo"] / r["image_path"])} for r in ft_rows]  # paths are the copy's
    control = shuffled_image_control(model, processor, in_repo, "vqa_opt", get_decoding("vqa_beam5"))
    assert control["n"] == ft["colour"]["n"]
    assert control["accuracy"] <= 35, control
    assert control["answers_naming_the_shown_colour"] >= 60, control  # it answers what it sees
    log = rows_of(out / "lora_adapter" / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, TRAIN_STEPS + 1))
    first = sum(r["loss"] for r in log[:30]) / 30
    last = sum(r["loss"] for r in log[-30:]) / 30
    assert last < 0.5 * first, (first, last)
    # the evaluation printed the comparison
    s = chain["eval_stdout"]
    assert f"baseline vs fine-tuned on the same {EVAL_N} questions" in s and "95% interval" in s
    assert "better" in s and "worse" in s and "random cases" in s


def test_adapter_folder_is_complete(chain):
    adapter = chain["out"] / "lora_adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "processor_config.json", "tokenizer.json",
                 "training_config.json", "train_log.jsonl", "loss_curve.png", "preview.jsonl"):
        assert (adapter / name).exists(), name
    with Image.open(adapter / "loss_curve.png") as im:
        im.verify()
    cfg = json.loads((adapter / "training_config.json").read_text())
    assert cfg["train_steps"] == TRAIN_STEPS and cfg["use_4bit"] is True and cfg["world_size"] == 1
    s = chain["train_stdout"]
    assert "trainable parameters:" in s and "q_proj x2" in s and "fc2 x2" in s
    assert "QLoRA" in s and "nf4" in s.lower()  # the memory estimate before loading
    save_every = 200  # finetune_vqav2_lora.py's SAVE_EVERY; the quick start keeps it
    eval_every = readme_setting("finetune_vqav2_lora.py", "eval_every")  # a checkpoint before each held-out point
    saved = {s for s in range(1, TRAIN_STEPS + 1) if s % save_every == 0 or s % eval_every == 0} | {TRAIN_STEPS}
    kept = sorted(p.name for p in (chain["out"] / "lora_adapter_checkpoints").iterdir() if p.is_dir())
    assert kept == ["heldout"] + [f"step-{s:06d}" for s in sorted(saved)[-2:]]  # KEEP_CHECKPOINTS = 2


def test_reloaded_adapter_reproduces_in_memory_predictions(chain):
    from src.data import load_samples
    from src.images import load_image
    from src.inference import generate_for_images
    from src.prompts import format_prompt, get_decoding

    preview = rows_of(chain["out"] / "lora_adapter" / "preview.jsonl")
    assert len(preview) == 8
    by_id = {s.question_id: s for s in load_samples("easy_vqa", "val", chain["repo"] / "data")}
    model, processor = load_tuned(chain["model"], "4bit", str(chain["out"] / "lora_adapter"))
    samples = [by_id[r["question_id"]] for r in preview]
    answers = generate_for_images(model, processor, [load_image(s.image_path) for s in samples],
                                  [format_prompt("vqa_opt", s.question) for s in samples], get_decoding("vqa_beam5"))
    assert answers == [r["answer"] for r in preview]


# --- resume -----------------------------------------------------------------------------------------

# --- data parallel ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_train_and_evaluate_data_parallel(opt_data_parallel):
    """On the random-weight twin: what is checked is how the work is shared, not what the model answers (the
    session's one two-process run, tests/conftest.py, made beside a busy CPU)."""
    out, n = opt_data_parallel["out"], opt_data_parallel["questions"]
    log = opt_data_parallel["baseline"]
    assert "batch 4 x 2 process(es)" in log
    counts = json.loads(log.split("questions answered per process: ")[1].splitlines()[0])
    assert len(counts) == 2 and all(c > 0 for c in counts) and sum(counts) == n
    log = opt_data_parallel["finetune"]
    assert "x 2 process(es) = 16 per step" in log
    assert "LoRA weights identical on all 2 processes" in log
    log = opt_data_parallel["evaluate"]
    counts = json.loads(log.split("questions answered per process: ")[1].splitlines()[0])
    assert len(counts) == 2 and all(c > 0 for c in counts) and sum(counts) == n
    frozen = json.loads((out / "vqav2_sample_ids.json").read_text())["question_ids"]
    for run in ("vqav2_baseline", "vqav2_finetuned"):
        assert [r["question_id"] for r in rows_of(out / f"{run}.jsonl")] == frozen
        assert not list(out.glob(f"{run}.jsonl.rank*.part"))
    assert json.loads((out / "lora_adapter" / "training_config.json").read_text())["world_size"] == 2


# --- bad input --------------------------------------------------------------------------------------

def test_missing_and_corrupt_images_become_error_rows(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = rows_of(REPO / "data" / "tiny.jsonl")
    (data / "broken.jpg").write_bytes(Image.open(REPO / "data/picture_01.jpg").tobytes()[:500])  # not a JPEG
    for r in rows:
        r["image_path"] = str(REPO / r["image_path"])
    rows[0]["image_path"] = str(data / "missing.jpg")
    rows[1]["image_path"] = str(data / "broken.jpg")
    (data / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                      f"--data_dir={data}", "--max_samples=0", f"--output_dir={tmp_path / 'out'}", check=True)
    out_rows = rows_of(tmp_path / "out" / "vqav2_baseline.jsonl")
    assert len(out_rows) == len(rows)
    errors = {r["question_id"]: r["error"] for r in out_rows if r["error"]}
    assert set(errors) == {rows[0]["question_id"], rows[1]["question_id"]}
    assert "image not found" in errors[rows[0]["question_id"]] and "not an image" in errors[rows[1]["question_id"]]
    metrics = json.loads((tmp_path / "out" / "vqav2_baseline_metrics.json").read_text())
    assert metrics["n"] == len(rows) - 2 and metrics["n_errors"] == 2
    assert "2 question(s) could not be answered" in proc.stdout


def test_missing_dataset_files_name_the_path_and_the_readme(tiny_model_dir, tmp_path):
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", f"--data_dir={tmp_path}",
                          f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, "v2_OpenEnded_mscoco_val2014_questions.json", "data/vqa/README.md")
    assert "MODEL LOAD STARTED" not in proc.stderr


def test_sample_ids_from_another_dataset_are_refused(tiny_model_dir, tmp_path):
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--max_samples=4",
               f"--output_dir={tmp_path}", check=True)
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")  # the adapter is checked before the data
    proc = run_in_process("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa",
                          f"--output_dir={tmp_path}", f"--adapter_dir={adapter}")
    assert_one_line_error(proc, "vqav2_sample_ids.json", "dataset=tiny", "dataset=easy_vqa")
    proc2 = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                           "--max_samples=5", f"--output_dir={tmp_path}")
    assert_one_line_error(proc2, "max_samples=4", "--max_samples=5")
    proc3 = run_in_process("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                           f"--output_dir={tmp_path}")  # nothing trained yet
    assert_one_line_error(proc3, f"no LoRA adapter in {tmp_path / 'lora_adapter'}", "finetune_vqav2_lora.py")
    assert not any("MODEL LOAD STARTED" in p.stderr for p in (proc, proc2, proc3))  # each said before the load


def test_compare_on_the_pipeline_files(chain):
    """README step 6 on what steps 3-5 wrote: the numbers equal the scorer's, every artefact is there."""
    from html.parser import HTMLParser

    out = chain["out"]
    quickstart_run_of_compare = chain["repo"] / "assets" / "comparisons"  # `python compare_baseline_finetuned.py`
    report = quickstart_run_of_compare
    data = json.loads((report / "comparison.json").read_text())
    base, ft = rows_of(out / "vqav2_baseline.jsonl"), rows_of(out / "vqav2_finetuned.jsonl")
    assert data["n"] == EVAL_N and data["mode"] == "comparison"
    for key, rows in (("baseline", base), ("finetuned", ft)):
        scored = score_rows(rows)
        assert data[key]["vqa_accuracy"] == scored["vqa_accuracy"] and data[key]["exact_match"] == scored["exact_match"]
    better = sum(f["vqa_accuracy"] > b["vqa_accuracy"] for b, f in zip(base, ft))
    worse = sum(f["vqa_accuracy"] < b["vqa_accuracy"] for b, f in zip(base, ft))
    assert (data["outcomes"]["better"], data["outcomes"]["worse"], data["outcomes"]["same"]) == \
        (better, worse, EVAL_N - better - worse)
    summary = (report / "summary.txt").read_text()
    assert f"{data['baseline']['vqa_accuracy']:.2f}" in summary and f"{data['finetuned']['vqa_accuracy']:.2f}" in summary
    HTMLParser().feed((report / "report.html").read_text(encoding="utf-8"))
    for png in report.rglob("*.png"):
        with Image.open(png) as im:
            im.verify()
    assert len(list((report / "cases").glob("case_*.png"))) >= 4


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa",
                      "--train_steps=20", "--lr=1e12", "--max_grad_norm=1e30", "--warmup_steps=0", "--save_every=1",
                      "--per_device_batch=4", "--grad_accum=1", f"--output_dir={tmp_path}")
    ckpts = tmp_path / "lora_adapter_checkpoints"
    line = assert_one_line_error(proc, "training loss became nan at step 2", str(ckpts / "step-000001"), "--lr")
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000001"]
    from src.training import checkpoint_problem

    assert checkpoint_problem(ckpts / "step-000001") is None
    assert not (tmp_path / "lora_adapter").exists(), line


def test_demo_on_the_twin_answers_colour_after_fine_tuning(chain):
    """README step 7 offline: the demo's answer handler with the quick start's adapter, on easy-VQA val
    pictures, answers "what color is the shape?" right after fine-tuning, beside the zero-shot answer."""
    from pathlib import Path as P

    from src.demo_app import make_answer_fn
    from twin import easy_vqa_captions

    truth = {P(p).stem: c.split()[1] for p, c in zip(*easy_vqa_captions("val"))}
    examples = sorted((chain["repo"] / "data" / "easy_vqa" / "images" / "val").glob("*.png"))
    examples = [p for p in examples if p.stem in truth][:12]
    model, processor = load_tuned(chain["model"], "4bit", str(chain["out"] / "lora_adapter"))
    answer = make_answer_fn(model, processor, adapter_available=True, vqa_prompt="vqa_opt", vqa_decoding="vqa_beam5",
                            caption_prompt="caption", caption_decoding="caption_beam5", max_upload_mb=10, lang="zh")
    right_ft = right_base = 0
    for path in examples:
        caption, base, caption_ft, finetuned, status = answer(str(path), "what color is the shape?")
        assert caption and base and finetuned, status
        right_ft += finetuned.strip() == truth[path.stem]
        right_base += base.strip() == truth[path.stem]
    assert right_ft >= len(examples) - 1, (right_ft, len(examples))
    assert right_base < right_ft


def test_resume_checks_every_row_and_names_the_foreign_one(tiny_model_dir, tmp_path):
    """A row made by another model (here the 6th) is never kept or counted on resume."""
    args = ["create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--max_samples=8",
            "--quantization=none", f"--output_dir={tmp_path}"]
    run_script(*args, check=True)
    out = tmp_path / "vqav2_baseline.jsonl"
    rows = rows_of(out)
    rows[5]["model_id"] = "someone/else"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:7]))  # a killed run: the last row missing
    proc = run_script(*args)
    assert_one_line_error(proc, f"{out}, line 6", f"question {rows[5]['question_id']}", "model_id='someone/else'")
    rows[5]["model_id"] = tiny_model_dir
    del rows[5]["answer_processing"]  # a row from before answers were processed
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:7]))
    assert_one_line_error(run_script(*args), f"{out}, line 6", "answer_processing=None")
    proc = run_script(*args[:-2], "--quantization=4bit", args[-1])  # the whole file is another quantisation
    assert_one_line_error(proc, f"{out}, line 1", "quantization='none'", "quantization='4bit'")


DAMAGE_ARGS = ["finetune_vqav2_lora.py", "--dataset=easy_vqa", "--use_4bit=False", "--train_steps=8",
               "--per_device_batch=4", "--grad_accum=1", "--save_every=4", "--preview_samples=0", "--num_workers=0"]


@module_fixture
def trained_with_two_checkpoints(tiny_model_dir, tmp_path_factory) -> Path:
    """An output folder whose training saved checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("two_checkpoints")
    run_script(*DAMAGE_ARGS, f"--model_id={tiny_model_dir}", f"--output_dir={out}", check=True)
    return out


@pytest.mark.parametrize("damage", ["truncated adapter", "corrupt config", "both damaged"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_model_dir, trained_with_two_checkpoints,
                                                                   tmp_path, damage):
    from src.training import checkpoint_problem

    out = tmp_path / "out"
    shutil.copytree(trained_with_two_checkpoints, out)
    ckpts = out / "lora_adapter_checkpoints"
    newest, older = ckpts / "step-000008", ckpts / "step-000004"
    assert checkpoint_problem(newest) is None and checkpoint_problem(older) is None
    for d in ([newest, older] if damage == "both damaged" else [newest]):
        if damage == "corrupt config":
            (d / "config.json").write_text('{"step": 8, "lr"')
        else:
            w = d / "adapter_model.safetensors"
            w.write_bytes(w.read_bytes()[:100])
    proc = run_script(*DAMAGE_ARGS, f"--model_id={tiny_model_dir}", f"--output_dir={out}", check=True)
    assert "Traceback" not in proc.stderr
    if damage == "both damaged":
        assert f"no checkpoint in {ckpts} could be trusted; starting from step 0" in proc.stdout
        assert "steps: 8 (from 0)" in proc.stdout
    else:
        assert f"warning: {newest} is incomplete or damaged" in proc.stdout
        assert f"resumed from {older}" in proc.stdout and "steps: 8 (from 4)" in proc.stdout
    assert checkpoint_problem(ckpts / "step-000008") is None  # saved again, whole


def test_a_bad_training_image_is_one_line_even_from_dataloader_workers(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = rows_of(REPO / "data" / "tiny.jsonl")
    for r in rows:
        r["image_path"] = str(REPO / r["image_path"])
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows[3]["image_path"] = str(data / "broken.jpg")
    (data / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", f"--data_dir={data}",
                      "--train_steps=4", "--per_device_batch=4", "--grad_accum=1", "--num_workers=2",
                      "--preview_samples=0", f"--output_dir={tmp_path / 'out'}")
    line = assert_one_line_error(proc, str(data / "broken.jpg"), "rerun to resume")
    assert "Caught" not in proc.stderr and "worker" not in line, proc.stderr[-2000:]


LIBRARY_NOISE = re.compile(r"Warning|warnings\.warn|deprecated|Skipping publisher|kernels-community|Traceback")


def test_the_quick_start_prints_no_library_notice(quickstart):
    """Fine-tuning, evaluation and every other quick-start step print no FutureWarning or library notice (a
    student reads those as errors): only our own lines and progress bars reach stderr."""
    for cmd, proc in quickstart["runs"]:
        noise = [line for line in proc.stderr.replace("\r", "\n").splitlines() if LIBRARY_NOISE.search(line)]
        assert not noise, f"{cmd}\n" + "\n".join(noise[:5])


@pytest.mark.slow
def test_importing_the_libraries_offline_prints_no_notice():
    """With HF_HUB_OFFLINE=1, bitsandbytes' optional CPU kernel (fetched at import on AVX512-BF16 machines)
    makes the `kernels` package note that it skips a check: src keeps that out of the student's console."""
    code = "import src, bitsandbytes, peft, transformers"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
