"""--eval_every: the held-out curve of the fine-tuning script. The slice avoids the training images and the
frozen evaluation sample; each point equals an independent answering of the slice with the saved adapter;
the best adapter is kept through checkpoint rotation and evaluates; a run killed inside a held-out
evaluation resumes to the files of an uninterrupted run; two data-parallel processes share the slice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import (REPO, assert_one_line_error, killed_at_marker, load_tuned, module_fixture, quickstart_run,
                     run_in_process, run_script, start_script)
from src.errors import UserError

STEPS, EVERY, SLICE = 12, 4, 24


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fine_tuning(model_dir: str, out: Path, *extra) -> list[str]:
    return ["finetune_vqav2_lora.py", f"--model_id={model_dir}", "--dataset=easy_vqa", "--use_4bit=False",
            f"--train_steps={STEPS}", "--per_device_batch=8", "--grad_accum=1", "--lr=3e-3", "--warmup_steps=2",
            f"--eval_every={EVERY}", f"--eval_samples={SLICE}", "--save_every=100", "--keep_checkpoints=1",
            "--preview_samples=0", "--num_workers=0", f"--output_dir={out}", *extra]


def answer_slice_again(model_dir: str, adapter: Path, heldout_ids: list[int]) -> float:
    """The held-out accuracy of a saved adapter, computed apart from the script: the adapter loaded on the
    base, each question answered with the evaluation's prompt and preset, scored with the official metric."""
    from src.data import load_samples, select
    from src.images import load_image
    from src.inference import generate_for_images
    from src.prompts import format_prompt, get_decoding
    from src.vqa_eval import normalize_answer, vqa_accuracy

    samples = select(load_samples("easy_vqa", "val", REPO / "data"), heldout_ids, "held-out slice")
    model, processor = load_tuned(model_dir, "none", str(adapter), device="cpu")
    answers = generate_for_images(model, processor, [load_image(s.image_path) for s in samples],
                                  [format_prompt("vqa_opt", s.question) for s in samples], get_decoding("vqa_beam5"))
    return round(100 * sum(vqa_accuracy(normalize_answer(a), s.answers) for a, s in zip(answers, samples))
                 / len(samples), 2)


# --- the slice -------------------------------------------------------------------------------------------

def test_the_slice_shares_no_image_with_the_training_examples_or_the_evaluation_sample(tmp_path, monkeypatch):
    """data/tiny.jsonl is its own train and val split, so the training examples are val images here: the slice
    must avoid them (by image id) as well as the frozen evaluation sample's, and it is read back, not redrawn."""
    import finetune_vqav2_lora as script
    from src.data import freeze_sample, load_samples
    from src.evaluation import SAMPLE_IDS_FILE

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question_id": 100 + i, "image_id": i % 10, "image_path": f"/nowhere/image{i % 10}.jpg",
             "question": f"question {i}?", "answers": ["yes"] * 10} for i in range(40)]  # 10 images, never opened
    (data / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = load_samples("tiny", "val", data)
    trained = [s for s in val if s.image_id in (0, 1, 2)]
    out = tmp_path / "out"
    out.mkdir()
    evaluated = freeze_sample(out / SAMPLE_IDS_FILE, "tiny", "val", val, 6, 42)
    for name, value in dict(EVAL_EVERY=5, EVAL_SAMPLES=8, SEED=42, DATASET="tiny", DATA_DIR=str(data)).items():
        monkeypatch.setattr(script, name, value)

    chosen = script.draw_heldout(out, trained, write=True)
    frozen = json.loads((out / "heldout_sample_ids.json").read_text())
    image_of = {s.question_id: s.image_id for s in val}
    assert frozen["question_ids"] == [s.question_id for s in chosen] and len(chosen) == 8
    assert frozen["image_ids"] == sorted({image_of[q] for q in frozen["question_ids"]})
    assert not set(frozen["image_ids"]) & {s.image_id for s in trained}
    assert not set(frozen["image_ids"]) & {image_of[q] for q in evaluated}
    assert frozen["dataset"] == "tiny" and frozen["split"] == "val" and frozen["seed"] == 42
    # training examples of the val split read from elsewhere (another file name): excluded by image id
    import dataclasses

    (out / "heldout_sample_ids.json").rename(out / "first.json")
    elsewhere = [dataclasses.replace(s, image_path=f"/cache/{s.question_id}.jpg") for s in val if s.image_id in (2, 3, 6)]
    again = script.draw_heldout(out, elsewhere, write=False, train_split="val")
    assert again and not {s.image_id for s in again} & ({2, 3, 6} | {image_of[q] for q in evaluated})
    (out / "first.json").rename(out / "heldout_sample_ids.json")
    # read back as it is on resume, even when the training examples would now allow other images
    assert script.draw_heldout(out, [], write=True) == chosen
    monkeypatch.setattr(script, "EVAL_SAMPLES", 9)
    with pytest.raises(UserError, match="eval_samples=8, but this run asks for --seed=42 --eval_samples=9"):
        script.draw_heldout(out, trained, write=True)
    # no image left: one line, not an empty curve
    (out / "heldout_sample_ids.json").unlink()
    with pytest.raises(UserError, match="every tiny val image is in the training examples or the frozen evaluation"):
        script.draw_heldout(out, val, write=True)


def test_a_curve_needs_the_frozen_evaluation_sample_and_a_known_preset(tiny_model_dir, tmp_path):
    common = [f"--model_id={tiny_model_dir}", "--dataset=easy_vqa", "--use_4bit=False", f"--output_dir={tmp_path}"]
    proc = run_in_process("finetune_vqav2_lora.py", *common, "--eval_every=10")
    assert_one_line_error(proc, "vqav2_sample_ids.json, which is not there yet", "create_vqav2_baseline.py",
                          "--eval_every=0")
    assert not (tmp_path / "heldout_sample_ids.json").exists()
    proc = run_in_process("finetune_vqav2_lora.py", *common, "--eval_every=10", "--eval_decoding=nope")
    assert_one_line_error(proc, "unknown decoding preset 'nope' (--eval_decoding)")


def test_the_quick_start_draws_the_curve_and_keeps_the_best_adapter(quickstart):
    """The README's fine-tuning command with its --eval_every: the held-out accuracy climbs as the loss
    falls, and the slice shares no image with the quick start's frozen evaluation sample (by image id)."""
    from src.data import load_samples

    proc = quickstart_run(quickstart, "finetune_vqav2_lora.py")
    command = next(cmd for cmd, _ in quickstart["runs"] if "finetune_vqav2_lora.py" in cmd)
    every = int(command.split("--eval_every=")[1].split()[0])
    out = quickstart["out"]
    log = rows_of(out / "lora_adapter" / "train_log.jsonl")
    points = [(r["step"], r["heldout"]["accuracy"]) for r in log if "heldout" in r]
    assert [s for s, _ in points] == [r["step"] for r in log if r["step"] % every == 0 or r is log[-1]]
    assert points[-1][1] > points[0][1] and points[-1][1] >= 60, points
    best = json.loads((out / "lora_adapter_best" / "training_config.json").read_text())["best"]
    assert (best["step"], best["heldout_accuracy"]) == max(points, key=lambda p: (p[1], -p[0]))
    val = {s.question_id: s for s in load_samples("easy_vqa", "val", quickstart["repo"] / "data")}
    evaluated = json.loads((out / "vqav2_sample_ids.json").read_text())["question_ids"]
    heldout = json.loads((out / "heldout_sample_ids.json").read_text())
    assert not set(heldout["image_ids"]) & {val[q].image_id for q in evaluated}
    assert heldout["image_ids"] == sorted({val[q].image_id for q in heldout["question_ids"]})
    assert f"best: step {best['step']} " in proc.stdout


# --- the curve and the best adapter ------------------------------------------------------------------------

CURVE_EXTRA = ("--report_to=tensorboard",)


@module_fixture
def curve_run(tiny_model_dir, tmp_path_factory) -> dict:
    """One fine-tuning with its curve: the points, the best adapter, the picture and TensorBoard are checked on it,
    and it is the uninterrupted run a killed one must equal."""
    out = tmp_path_factory.mktemp("curve") / "out"
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa", "--quantization=none",
               "--max_samples=16", "--num_workers=0", f"--output_dir={out}", check=True)  # the frozen sample
    evaluated = json.loads((out / "vqav2_sample_ids.json").read_text())["question_ids"]
    proc = run_script(*fine_tuning(tiny_model_dir, out, *CURVE_EXTRA), check=True)
    return {"out": out, "proc": proc, "evaluated": evaluated}


def test_each_point_is_the_slice_answered_again_with_the_saved_adapter(curve_run, tiny_model_dir):
    from src.data import load_samples

    out = curve_run["out"]
    log = rows_of(out / "lora_adapter" / "train_log.jsonl")
    points = {r["step"]: r["heldout"] for r in log if "heldout" in r}
    assert sorted(points) == list(range(EVERY, STEPS + 1, EVERY))
    assert all(p["questions"] == SLICE and p["decoding"] == "vqa_beam5" for p in points.values())
    heldout = json.loads((out / "heldout_sample_ids.json").read_text())
    assert len(heldout["question_ids"]) == SLICE
    # by ids: no image of the frozen evaluation sample (val), none of the training examples (the train split's)
    val = {s.question_id: s for s in load_samples("easy_vqa", "val", REPO / "data")}
    assert not set(heldout["image_ids"]) & {val[q].image_id for q in curve_run["evaluated"]}
    trained = {s.image_path for s in load_samples("easy_vqa", "train", REPO / "data")}
    assert not {val[q].image_path for q in heldout["question_ids"]} & trained
    # the last point is the final adapter's accuracy; per answer type they add up to it
    assert answer_slice_again(tiny_model_dir, out / "lora_adapter", heldout["question_ids"]) == points[STEPS]["accuracy"]
    types = {}
    for q in heldout["question_ids"]:
        types[val[q].answer_type] = types.get(val[q].answer_type, 0) + 1
    for p in points.values():
        assert set(p["per_answer_type"]) == set(types)
        mean = sum(p["per_answer_type"][t] * n for t, n in types.items()) / SLICE
        assert abs(mean - p["accuracy"]) < 0.01 * len(types)
    assert "held-out accuracy (24 val questions, vqa_beam5): step 4 " in curve_run["proc"].stdout


def test_the_best_adapter_survives_rotation_and_evaluates(curve_run, tiny_model_dir):
    out = curve_run["out"]
    points = {r["step"]: r["heldout"]["accuracy"] for r in rows_of(out / "lora_adapter" / "train_log.jsonl")
              if "heldout" in r}
    best_step = min(s for s, a in points.items() if a == max(points.values()))  # the earliest of the best
    best = out / "lora_adapter_best"
    config = json.loads((best / "training_config.json").read_text())
    assert config["best"] == {"step": best_step, "heldout_accuracy": points[best_step]}
    assert [p.name for p in (out / "lora_adapter_checkpoints").glob("step-*")] == [f"step-{STEPS:06d}"]  # rotated
    assert [r["step"] for r in rows_of(best / "train_log.jsonl")] == list(range(1, best_step + 1))
    heldout = json.loads((out / "heldout_sample_ids.json").read_text())["question_ids"]
    assert answer_slice_again(tiny_model_dir, best, heldout) == points[best_step]
    proc = run_script("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa",
                      "--quantization=none", f"--adapter_dir={best}", f"--output_dir={out}", check=True)
    assert "VQA accuracy" in proc.stdout


def test_the_picture_and_tensorboard_show_the_curve(curve_run):
    from PIL import Image

    from test_tensorboard import curves
    from src.tracking import tracker_run_name

    out = curve_run["out"]
    log = [r for r in rows_of(out / "lora_adapter" / "train_log.jsonl") if "heldout" in r]
    with Image.open(out / "lora_adapter" / "loss_curve.png") as im:
        assert im.size[1] > 600  # two panels (a loss-only picture is 400 pixels tall)
    scalars = curves(out / "tf-logs" / tracker_run_name(out))
    assert scalars["heldout/accuracy"] == [(r["step"], pytest.approx(r["heldout"]["accuracy"])) for r in log]
    assert scalars["heldout/yes_no"] == [(r["step"], pytest.approx(r["heldout"]["per_answer_type"]["yes/no"]))
                                         for r in log]


# --- kill, resume and data parallel ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_kill_inside_a_heldout_evaluation_resumes_to_the_files_of_an_uninterrupted_run(curve_run, tiny_model_dir,
                                                                                          tmp_path):
    """Rows go to disk through JsonlAppender.write: a training step's row, then one call per held-out batch of 8
    (3 per point). Kills after the 5th call (in the point of step 4) and, in the resumed run, after its 7th
    (in the point of step 8); the third run finishes. The uninterrupted run is curve_run (the same settings and
    frozen sample)."""
    from safetensors.torch import load_file

    full, out = curve_run["out"], tmp_path / "killed"
    out.mkdir()
    shutil.copy(full / "vqav2_sample_ids.json", out)
    args = fine_tuning(tiny_model_dir, out, *CURVE_EXTRA)
    ckpts = out / "lora_adapter_checkpoints"
    proc = start_script(*args, kill_at=("src.files:JsonlAppender.write", 5), hook_dir=tmp_path)
    assert killed_at_marker(proc)
    assert [r["step"] for r in rows_of(ckpts / "train_log.jsonl")] == [1, 2, 3, 4]  # step 4 without its point yet
    assert len(rows_of(ckpts / "heldout" / "step-000004.jsonl")) == 8
    proc = start_script(*args, kill_at=("src.files:JsonlAppender.write", 7), hook_dir=tmp_path)
    assert killed_at_marker(proc)
    assert [("heldout" in r) for r in rows_of(ckpts / "train_log.jsonl")] == [False] * 3 + [True] + [False] * 4
    proc = run_script(*args, check=True)
    assert "resumed from" in proc.stdout and "8 already done, 16 to go" in proc.stdout

    def points(d):
        return [(r["step"], r.get("heldout"), round(r["loss"], 5)) for r in rows_of(d / "lora_adapter" / "train_log.jsonl")]

    assert points(out) == points(full) and [s for s, p, _ in points(out) if p] == [4, 8, 12]
    for name in ("heldout_sample_ids.json", *(f"lora_adapter_checkpoints/heldout/step-{s:06d}.jsonl" for s in (4, 8, 12))):
        assert (out / name).read_text() == (full / name).read_text(), name
    best = [json.loads((d / "lora_adapter_best" / "training_config.json").read_text()) for d in (full, out)]
    assert best[0].pop("output_dir") != best[1].pop("output_dir") and best[0] == best[1]
    for adapter in ("lora_adapter", "lora_adapter_best"):
        a, b = (load_file(str(d / adapter / "adapter_model.safetensors")) for d in (full, out))
        assert a.keys() == b.keys() and a
        for k in a:
            assert (a[k] - b[k]).abs().max() < 1e-5, (adapter, k)


@pytest.mark.slow
def test_two_processes_share_the_slice(opt_data_parallel):
    """On the random-weight twin (what is checked is the sharing), in the session's one two-process run: each
    process answers part of the slice, the main one gathers and scores it, and the point is the score of the
    gathered answers."""
    from src.vqa_eval import score_rows

    out, slice_size, every = opt_data_parallel["out"], opt_data_parallel["eval_samples"], opt_data_parallel["eval_every"]
    log = opt_data_parallel["finetune"]
    counts = [json.loads(part.split("\n")[0]) for part in log.split("questions answered per process: ")[1:]]
    assert len(counts) == 2 and all(len(c) == 2 and min(c) > 0 and sum(c) == slice_size for c in counts)
    ckpts = out / "lora_adapter_checkpoints"
    points = {r["step"]: r["heldout"] for r in rows_of(ckpts / "train_log.jsonl") if "heldout" in r}
    assert sorted(points) == list(range(every, opt_data_parallel["train_steps"] + 1, every)) and len(points) == 2
    heldout = json.loads((out / "heldout_sample_ids.json").read_text())["question_ids"]
    assert len(heldout) == slice_size
    for step, point in points.items():
        answers = rows_of(ckpts / "heldout" / f"step-{step:06d}.jsonl")
        assert sorted(r["question_id"] for r in answers) == heldout
        assert point["accuracy"] == score_rows(answers)["vqa_accuracy"]
    assert not list(ckpts.glob("heldout/*.part"))
    assert (out / "lora_adapter_best" / "adapter_model.safetensors").exists()
