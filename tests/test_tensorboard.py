"""--report_to=tensorboard: the fine-tuning script's per-step curves, read back with TensorBoard's own
reader and compared with train_log.jsonl; a killed and resumed run continues the same curve; off by
default; an unknown tracker or a missing package is one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import CAN_MOUNT, REPO, assert_one_line_error, run_on_small_disk, run_script
from src.tracking import tracker_run_name

TAGS = ("train/loss", "train/lr", "train/grad_norm", "train/skipped_steps")
STEPS = 8


def fine_tuning(model_dir, out: Path, *extra) -> list:
    """A short fine-tuning run of the twin on data/tiny.jsonl: a checkpoint every 3 of 8 steps."""
    return ["finetune_vqav2_lora.py", f"--model_id={model_dir}", "--dataset=tiny", "--use_4bit=False",
            f"--train_steps={STEPS}", "--per_device_batch=2", "--grad_accum=2", "--lr=3e-3", "--warmup_steps=2",
            "--save_every=3", "--keep_checkpoints=3", "--preview_samples=0", "--num_workers=0",
            f"--output_dir={out}", *extra]


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of `run_dir` as TensorBoard shows it: (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_curves_equal_the_training_log_and_a_killed_run_continues_its_curve(killed_training):
    """The session's interrupted fine-tuning (tests/conftest.py), TensorBoard on: killed inside the save of step 4,
    at a random step of two resumed runs, and resumed once more from the checkpoint before a torn one."""
    out, logs, steps, attempts = killed_training["out"], killed_training["logs"], killed_training["steps"], \
        killed_training["attempts"]
    run_dir = killed_training["run_dir"]
    assert run_dir == logs / tracker_run_name(out) and run_dir.name.startswith("killed-")  # after the output folder
    # killed in the save of step 4: steps 1-4 are in the log and in the curve, the checkpoint of step 2 holds
    assert attempts[0]["log_rows"] == 4 and "step-000002" in attempts[0]["checkpoints"]
    assert len(attempts[0]["loss_steps"]) == 1 and attempts[0]["loss_steps"][0][:4] == [1, 2, 3, 4], attempts[0]
    # each resumed attempt wrote its own file from the step after the checkpoint it resumed from (no second step 1);
    # the earlier files' later steps are still on disk, and TensorBoard hides them (purge_step), so each step shows once
    resumed_from = [max(int(c[5:]) for c in before["checkpoints"] if c.startswith("step-")) for before in attempts[:2]]
    resumed_from.append(int(killed_training["older"].name[5:]))  # the last run: the newest checkpoint was torn
    for before, after, start in zip(attempts, attempts[1:], resumed_from):
        written = after["loss_steps"]
        assert written[:-1] == before["loss_steps"] and written[-1][:2] == [start + 1, start + 2], (start, written)
        assert written[-1] == list(range(start + 1, start + 1 + len(written[-1]))), (start, written)
    assert attempts[-1]["loss_steps"][-1][-1] == steps
    proc = killed_training["final"]
    assert f"resumed from {out / 'lora_adapter_checkpoints' / killed_training['older'].name}" in proc.stdout
    assert f"tensorboard: {run_dir} (tensorboard --logdir {logs})" in proc.stdout
    rows = [json.loads(l) for l in (out / "lora_adapter" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    shown = curves(run_dir)
    assert set(shown) == set(TAGS), shown.keys()
    for tag in TAGS:
        assert [s for s, _ in shown[tag]] == list(range(1, steps + 1)), (tag, shown[tag])
    f32 = np.float32
    assert [f32(v) for _, v in shown["train/loss"]] == [f32(r["loss"]) for r in rows]
    assert [f32(v) for _, v in shown["train/lr"]] == [f32(r["lr"]) for r in rows]
    assert [f32(v) for _, v in shown["train/grad_norm"]] == [f32(r["grad_norm"]) for r in rows]
    assert [v for _, v in shown["train/skipped_steps"]] == list(np.cumsum([r["skipped"] for r in rows]))
    assert len({r["loss"] for r in rows}) == steps and len({r["lr"] for r in rows}) > steps // 2  # real curves
    # the resolved settings as hparams, lists as text, once per attempt
    hparams = sorted(run_dir.glob("*/hparams.yml"))
    assert len(hparams) == len(attempts)
    config = yaml.safe_load(hparams[-1].read_text())
    assert config["target_modules"] == "q_proj,k_proj,v_proj,out_proj,fc1,fc2"
    assert (config["report_to"], config["log_dir"], config["train_steps"]) == ("tensorboard", str(logs), steps)


@pytest.mark.slow
def test_off_by_default_writes_no_event_file(opt_data_parallel):
    """The session's two-process run (tests/conftest.py) fine-tunes without --report_to."""
    from src.config import script_settings

    settings = script_settings(REPO / "finetune_vqav2_lora.py")
    assert (settings["REPORT_TO"], settings["LOG_DIR"]) == ("", "{output_dir}/tf-logs")
    out = opt_data_parallel["out"]
    assert not any(a.startswith(("--report_to", "--log_dir")) for a in opt_data_parallel["finetune_args"])
    assert (out / "lora_adapter" / "adapter_model.safetensors").exists()
    assert not (out / "tf-logs").exists() and not list(out.rglob("events.out.tfevents.*"))
    assert "tensorboard" not in opt_data_parallel["finetune"]


@pytest.mark.slow
def test_default_log_dir_is_inside_the_output_folder(killed_training):
    """{output_dir} in LOG_DIR stands for --output_dir, as in ADAPTER_DIR; the banner gives the command (the
    uninterrupted run of the session's interrupted fine-tuning, tests/conftest.py, has no --log_dir)."""
    out, proc = killed_training["full"], killed_training["full_run"]
    assert "--report_to=tensorboard" in proc.args and not any(str(a).startswith("--log_dir") for a in proc.args)
    assert f"tensorboard --logdir {out / 'tf-logs'})" in proc.stdout
    steps = killed_training["steps"]
    assert [s for s, _ in curves(out / "tf-logs" / tracker_run_name(out))["train/loss"]] == list(range(1, steps + 1))


def test_two_output_folders_of_one_name_sharing_a_log_dir_keep_their_own_curves(tiny_model_dir, tmp_path):
    """a/outputs and b/outputs with one --log_dir (as AutoDL's /root/tf-logs invites): two runs, and the second
    one's start hides none of the first one's points."""
    logs = tmp_path / "tf-logs"
    for parent, steps in (("a", 3), ("b", 2)):
        run_script(*fine_tuning(tiny_model_dir, tmp_path / parent / "outputs", f"--train_steps={steps}", "--save_every=2",
                                "--report_to=tensorboard", f"--log_dir={logs}"), check=True)
    runs = {p.name: [s for s, _ in curves(p)["train/loss"]] for p in logs.iterdir()}
    assert sorted(runs.values()) == [[1, 2], [1, 2, 3]], runs
    assert all(name.startswith("outputs-") for name in runs)


def test_unknown_tracker_is_one_line_before_any_work(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_script(*fine_tuning(tiny_model_dir, out, "--report_to=bogus"))
    assert_one_line_error(proc, "--report_to='bogus': unknown tracker", "--report_to=tensorboard", "--report_to=")
    assert not out.exists() and "Running QLoRA" not in proc.stdout  # before the output folder, so before the model


def test_a_missing_package_names_pip_install(monkeypatch):
    import sys

    from src.errors import UserError
    from src.tracking import check_report_to

    assert check_report_to("") is None and check_report_to("tensorboard") == "tensorboard"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(UserError) as e:
        check_report_to("tensorboard")
    assert "pip install tensorboard" in str(e.value) and "--report_to=" in str(e.value)
    assert "\n" not in str(e.value)


def test_tracker_config_and_values_are_what_tensorboard_takes():
    from src.tracking import tracker_config, tracker_values
    from src.training import StepResult

    config = tracker_config({"target_modules": ["q_proj", "v_proj"], "lr": 1e-4, "use_4bit": True, "steps": 3,
                             "dataset": "tiny", "nothing": None, "pair": (1, 2), "base_fingerprint": {"qformer": [0.1]}})
    assert config == {"target_modules": "q_proj,v_proj", "lr": 1e-4, "use_4bit": True, "steps": 3, "dataset": "tiny",
                      "nothing": "None", "pair": "1,2"}
    assert tracker_values(StepResult(2.5, 0.75, False), 1e-3, 0) == {
        "train/loss": 2.5, "train/lr": 1e-3, "train/grad_norm": 0.75, "train/skipped_steps": 0}
    # a step fp16's loss scaling skipped has no gradient norm; the count goes up
    assert tracker_values(StepResult(2.5, None, True), 1e-3, 1) == {
        "train/loss": 2.5, "train/lr": 1e-3, "train/skipped_steps": 1}


@pytest.mark.skipif(not CAN_MOUNT, reason="needs `unshare -r -m` to mount a small tmpfs (Linux, user namespaces)")
@pytest.mark.parametrize("size, steps", [("4k", STEPS), ("16k", 40)])  # full at the first write / after some steps
def test_a_full_log_dir_warns_once_and_training_goes_on(tiny_model_dir, tmp_path, size, steps):
    """--log_dir on a disk that fills up: one warning, no thread traceback, and the training finishes with its
    adapter and every row of train_log.jsonl (the curves are optional; the output folder is on another disk)."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    args = " ".join(f"'{a}'" for a in fine_tuning(tiny_model_dir, out, "--report_to=tensorboard", f"--train_steps={steps}",
                                                   f"--save_every={steps}", f"--log_dir={disk / 'tf-logs'}"))
    proc = run_on_small_disk(f'"$PY" {args}', disk, SIZE=size)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = "warning: the training curves could not be written (No space left on device)"
    assert proc.stdout.count(warning) == 1, proc.stdout
    if steps > STEPS:  # the writer thread failed mid-run, after the curves had started
        assert proc.stdout.index("tensorboard: ") < proc.stdout.index(warning)
    assert "Traceback" not in proc.stderr and "disk is full" not in proc.stderr + proc.stdout
    assert (out / "lora_adapter" / "adapter_model.safetensors").exists()
    rows = (out / "lora_adapter" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, steps + 1))
