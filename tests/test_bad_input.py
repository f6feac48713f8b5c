"""Bad input of every kind ends in one line on stderr, exit code 2 and no traceback, before the slow work,
and never loses finished rows: settings (every script's, from generated bad values), data files, the frozen
sample, model folders, adapters, paths, result files, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import (REPO, assert_one_line_error, module_fixture, random_adapter, random_twin, run_in_process,
                     run_script)
from src.config import apply_overrides, script_settings
from src.errors import UserError
from src.preflight import EMPTY_MEANS, check_value

SCRIPTS = [p.name for p in sorted(REPO.glob("*.py")) if p.name != "blip2_cli.py"]  # blip2_cli: argparse, below


def bad_values(default, name: str = "") -> list[str]:
    """Values no setting of this type should take, as typed on the command line ("" is fine where it
    documents a "none" or "auto", EMPTY_MEANS)."""
    if isinstance(default, bool):
        return ["maybe", "2"]
    if isinstance(default, int):
        return ["-1", str(2**40), "1.5"]
    if isinstance(default, float):
        return ["nan", "inf", "-1e400", "-1.0"]
    if isinstance(default, str):
        return ["a\x01b", "x\ud800"] + ([""] if default and name.lower() not in EMPTY_MEANS else [])
    if isinstance(default, list):
        return [","] if default else []
    return []


@pytest.mark.slow
def test_every_setting_of_every_script_refuses_generated_bad_values():
    """A harness over the settings blocks themselves: a setting added later is covered too."""
    checked = 0
    for script in SCRIPTS:
        settings = script_settings(REPO / script)
        for key, default in settings.items():
            for raw in bad_values(default, key):
                ns = {**settings, "__file__": str(REPO / script)}
                with pytest.raises(UserError) as e:
                    apply_overrides(ns, [f"--{key.lower()}={raw}"], check=check_value)
                msg = str(e.value)
                assert "\n" not in msg and f"--{key.lower()}" in msg, (script, key, raw, msg)
                checked += 1
    assert checked > 250, checked  # every script, every setting


@pytest.mark.parametrize("script,arg,fragment", [
    ("mini_infer.py", "--device=cuda", "no CUDA GPU"),
    ("create_baseline.py", "--device=banana", "use cpu, cuda"),
    ("inference_demo.py", "--device=cuda", "no CUDA GPU"),
    ("inference_demo.py", "--max_upload_mb=1e400", "finite"),
    ("create_vqav2_baseline.py", "--vqa_prompt=caption", "no slot for the question"),
    ("finetune_vqav2_lora.py", "--vqa_prompt=caption", "no slot for the question"),
    ("finetune_vqav2_lora.py", "--seed=-1", "from 0 to 4,294,967,295"),
    ("finetune_vqav2_lora.py", f"--seed={2**40}", "from 0 to 4,294,967,295"),
    ("finetune_vqav2_lora.py", "--weight_decay=-5", "0 or more"),
    ("finetune_vqav2_lora.py", "--lora_alpha=0", "positive"),
    ("finetune_vqav2_lora.py", "--max_grad_norm=-1", "positive"),
    ("finetune_vqav2_lora.py", "--preview_decoding=nope", "unknown decoding preset 'nope'"),
    ("evaluate_vqav2_finetuned.py", "--bootstrap_resamples=0", "at least 1"),
    ("compare_baseline_finetuned.py", "--seed=-1", "from 0 to"),
    ("create_vqav2_baseline.py", "--run_name=", "--run_name= is empty"),
    ("create_vqav2_baseline.py", "--run_name=../x", "plain file name"),
    ("evaluate_vqav2_finetuned.py", "--run_name=a/b", "plain file name"),
    ("create_baseline.py", "--output_file=../x.jsonl", "plain file name"),
])
def test_bad_settings_stop_the_real_scripts_before_any_work(tiny_model_dir, tmp_path, script, arg, fragment):
    model = [f"--model_id={tiny_model_dir}"] if "MODEL_ID" in script_settings(REPO / script) else []
    proc = run_script(script, *model, f"--output_dir={tmp_path}", arg)
    assert_one_line_error(proc, fragment)
    assert "Loading weights" not in proc.stderr and not list(tmp_path.iterdir())  # nothing started, nothing written


def test_cli_device_without_cuda_and_folder_with_unreadable_images(tiny_model_dir, tmp_path):
    assert_one_line_error(run_script("blip2_cli.py", "baseline_images/pic_01.jpg", "--device", "cuda"), "no CUDA GPU")
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(REPO / "baseline_images" / "pic_01.jpg", folder / "a.jpg")
    shutil.copy(REPO / "baseline_images" / "pic_02.jpg", folder / "c.jpg")
    (folder / "b.jpg").write_bytes(b"not a picture")
    (folder / "d.png").write_bytes(b"")
    proc = run_script("blip2_cli.py", folder, "--model_id", tiny_model_dir, "--quantization", "none", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [Path(r["image_path"]).name for r in json.loads(proc.stdout)] == ["a.jpg", "c.jpg"]
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 2 and "b.jpg" in skipped[0] and "d.png" in skipped[1], proc.stderr
    assert "2 of 4 image(s) could not be read" in proc.stderr
    for f in ("a.jpg", "c.jpg"):
        (folder / f).write_bytes(b"")
    assert_one_line_error(run_script("blip2_cli.py", folder, "--model_id", tiny_model_dir), "none of the 4 images")


# --- data files ------------------------------------------------------------------------------------

Q_FILE, A_FILE = "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"


def write_vqav2(root: Path, question: str = "What color is it?") -> None:
    q = {"questions": [{"question_id": 1, "image_id": 1, "question": question}]}
    a = {"annotations": [{"question_id": 1, "image_id": 1, "answers": [{"answer": "red"}] * 10,
                          "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what color"}]}
    (root / "vqa").mkdir(parents=True, exist_ok=True)
    (root / "vqa" / Q_FILE).write_text(json.dumps(q), encoding="utf-8")
    (root / "vqa" / A_FILE).write_text(json.dumps(a), encoding="utf-8")


@pytest.mark.parametrize("case,damage,fragments", [
    ("deep", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), [Q_FILE, "levels deep"]),
    ("latin1", lambda p: p.write_bytes(json.dumps({"questions": [{"question_id": 1, "image_id": 1,
                                                                   "question": "Qué?"}]}, ensure_ascii=False)
                                        .encode("latin-1")), [Q_FILE, "not UTF-8", "byte"]),
    ("surrogate", lambda p: p.write_text('{"questions": [{"question_id": 1, "image_id": 1, "question": "Wh\\ud800at?"}]}'),
     [Q_FILE, "questions[0]", "unpaired surrogate"]),
    ("directory", lambda p: (p.unlink(), p.mkdir()), [Q_FILE, "is a folder"]),
    ("empty", lambda p: p.write_text(""), [Q_FILE, "is empty"]),
])
def test_damaged_data_files_are_one_line_before_the_model_loads(tiny_model_dir, tmp_path, case, damage, fragments):
    write_vqav2(tmp_path / "data")
    damage(tmp_path / "data" / "vqa" / Q_FILE)
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                          f"--data_dir={tmp_path / 'data'}", f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, *fragments)
    assert "MODEL LOAD STARTED" not in proc.stderr


# --- the frozen sample ----------------------------------------------------------------------------

@module_fixture
def tiny_baseline(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_baseline")
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--quantization=none",
               f"--output_dir={out}", check=True)
    return out


@pytest.mark.parametrize("ids,fragment", [
    (["1000", 1001], "question_ids[0] is '1000'"),
    ([1000, 1001.0], "question_ids[1] is 1001.0"),
    ([1000, None], "question_ids[1] is None"),
    ([1000, 1001, 1000], "question_ids[2] repeats question id 1000"),
    (1000, "must be a non-empty list"),
    ([True], "question_ids[0] is True"),
])
def test_a_damaged_frozen_sample_is_refused_and_the_rows_are_kept(tiny_model_dir, tiny_baseline, tmp_path, ids, fragment):
    out = tmp_path / "out"
    shutil.copytree(tiny_baseline, out)
    rows = (out / "vqav2_baseline.jsonl").read_bytes()
    sample = json.loads((out / "vqav2_sample_ids.json").read_text())
    (out / "vqav2_sample_ids.json").write_text(json.dumps({**sample, "question_ids": ids}))
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                          "--quantization=none", f"--output_dir={out}", "--max_samples=1000")
    assert_one_line_error(proc, "vqav2_sample_ids.json", fragment)
    assert (out / "vqav2_baseline.jsonl").read_bytes() == rows


# --- result files read by the comparison script ------------------------------------------------------

def _edit_rows(src: Path, dst: Path, edit) -> None:
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    edit(rows)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("field,value,fragment", [
    ("answer_type", 3, "field 'answer_type' is int"),
    ("question_type", {"a": 1}, "field 'question_type' is dict"),
    ("question_id", [1], "field 'question_id' is list"),
    ("image_path", 7, "field 'image_path' is int"),
    ("gt_answers", None, "no 'gt_answers' field"),
])
def test_comparison_refuses_rows_with_wrong_field_types(tiny_baseline, tmp_path, field, value, fragment):
    out = tmp_path / "out"
    out.mkdir()

    def edit(rows):
        if value is None:
            del rows[2][field]
        else:
            rows[2][field] = value
    _edit_rows(tiny_baseline / "vqav2_baseline.jsonl", out / "vqav2_baseline.jsonl", edit)
    proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={tmp_path / 'r'}")
    assert_one_line_error(proc, "vqav2_baseline.jsonl, line 3", fragment)


def test_comparison_draws_any_answer_on_any_console_and_takes_the_folder_lock(tiny_baseline, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report"
    out.mkdir()
    (out / "vqav2_baseline.jsonl").mkdir()  # a results path that is a folder
    assert_one_line_error(run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={report}"),
                          "is a folder")
    (out / "vqav2_baseline.jsonl").rmdir()

    def edit(rows):
        for r in rows[:4]:
            r["raw_answer"] = r["answer"] = "红\x07色\ud800 \x1b[31m"
    _edit_rows(tiny_baseline / "vqav2_baseline.jsonl", out / "vqav2_baseline.jsonl", edit)
    proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={report}",
                      env={"PYTHONIOENCODING": "cp1252"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (report / "report.html").stat().st_size > 0 and list((report / "cases").glob("case_*.png"))

    from src.locks import hold_output_lock

    with hold_output_lock(report):
        proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={report}")
    assert_one_line_error(proc, "another run", str(report))


# --- model folders -------------------------------------------------------------------------------

def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _vision_width(c):
    c["vision_config"]["hidden_size"] = 48


def test_weights_that_do_not_fit_the_config_are_refused_in_one_line(tiny_model_dir, tiny_t5_dir, tmp_path):
    """A model.safetensors missing one tensor (transformers would start it at random and the script answer
    garbage with exit 0), and an OPT folder whose config.json claims a Flan-T5 language model (an IndexError
    in generate): one line each, naming what does not fit."""
    from safetensors.torch import load_file, save_file

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, cut)
    weights = load_file(cut / "model.safetensors")
    gone = sorted(k for k in weights if "qformer" in k)[0]
    save_file({k: v for k, v in weights.items() if k != gone}, cut / "model.safetensors", metadata={"format": "pt"})
    proc = run_script("mini_infer.py", f"--model_id={cut}", "--quantization=none", f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, "the weights do not fit config.json", f"1 missing ({gone})", "copy or download")

    claims_t5 = tmp_path / "claims-t5"
    shutil.copytree(tiny_model_dir, claims_t5)
    config = json.loads((claims_t5 / "config.json").read_text())
    t5 = json.loads((Path(tiny_t5_dir) / "config.json").read_text())
    config.update(text_config=t5["text_config"], use_decoder_only_language_model=False)
    (claims_t5 / "config.json").write_text(json.dumps(config))
    proc = run_script("mini_infer.py", f"--model_id={claims_t5}", "--quantization=none", f"--output_dir={tmp_path / 'o2'}")
    assert_one_line_error(proc, str(claims_t5), "config")
    assert "Traceback" not in proc.stderr and "IndexError" not in proc.stderr


@pytest.mark.parametrize("case,damage,fragments", [
    ("vision_width", lambda d: _edit_json(d / "config.json", _vision_width), ["does not match the weights"]),
    ("text_config", lambda d: _edit_json(d / "config.json", lambda c: c.update(text_config="opt")),
     ["'text_config' must be a JSON object"]),
    ("no_pad", lambda d: (_edit_json(d / "tokenizer_config.json", lambda c: c.pop("pad_token", None)),
                          _edit_json(d / "tokenizer.json", lambda t: t.update(
                              added_tokens=[a for a in t["added_tokens"] if a["content"] != "<pad>"]))),
     ["no pad token"]),
    ("no_added_tokens", lambda d: _edit_json(d / "tokenizer.json", lambda t: t.pop("added_tokens")),
     ["tokenizer.json is damaged"]),
    ("no_tokenizer", lambda d: (d / "tokenizer.json").unlink(), ["tokenizer.json is missing"]),
])
def test_damaged_model_folders_name_the_file(tiny_model_dir, tmp_path, case, damage, fragments):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    proc = run_in_process("mini_infer.py", f"--model_id={model}", "--quantization=none",
                          f"--output_dir={tmp_path / 'o'}")
    msg = assert_one_line_error(proc, *fragments)
    assert "predate" not in msg and "huggingface-cli download" not in msg


# --- adapters -------------------------------------------------------------------------------------

@module_fixture
def strong_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter saved as the fine-tuning script saves it, with weights big enough to change answers."""
    folder = tmp_path_factory.mktemp("adapter") / "lora_adapter"
    return random_adapter(tiny_model_dir, folder, ("q_proj", "v_proj", "fc2"))


def _mini_infer(tiny_model_dir, out: Path, *args, run=run_script) -> subprocess.CompletedProcess:
    return run("mini_infer.py", f"--model_id={tiny_model_dir}", "--quantization=none", f"--output_dir={out}",
               "--question=What shape is in the image?", *args)


def _rename_keys(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "adapter_model.safetensors"))
    save_file({k.replace("base_model.model.", "model.base."): v for k, v in tensors.items()},
              str(d / "adapter_model.safetensors"))


def _empty_weights(d: Path) -> None:
    from safetensors.torch import save_file

    save_file({}, str(d / "adapter_model.safetensors"))


@pytest.mark.parametrize("case,damage,fragment", [
    ("peft_type", lambda d: _edit_json(d / "adapter_config.json", lambda c: c.update(peft_type="FOO")), "peft_type is 'FOO'"),
    ("r_string", lambda d: _edit_json(d / "adapter_config.json", lambda c: c.update(r="8")), "'r' is '8'"),
    ("rank", lambda d: _edit_json(d / "adapter_config.json", lambda c: c.update(r=8)), "rank mismatch"),
    ("targets", lambda d: _edit_json(d / "adapter_config.json", lambda c: c.update(target_modules=["nope"])),
     "target_modules"),
    ("empty", _empty_weights, "would change nothing"),
    ("renamed", _rename_keys, "would change nothing"),
])
def test_an_adapter_must_change_the_model_damaged_ones_are_refused(tiny_model_dir, strong_adapter, tmp_path,
                                                                     case, damage, fragment):
    adapter = tmp_path / "adapter"
    shutil.copytree(strong_adapter, adapter)
    damage(adapter)
    proc = _mini_infer(tiny_model_dir, tmp_path / "o", f"--adapter_dir={adapter}", run=run_in_process)
    msg = assert_one_line_error(proc, fragment, str(adapter))
    assert "which is not the model loaded" not in msg


def test_a_real_adapter_changes_the_answers(tiny_model_dir, strong_adapter, tmp_path):
    answers = {}
    for who, args in (("base", []), ("adapter", [f"--adapter_dir={strong_adapter}"])):
        _mini_infer(tiny_model_dir, tmp_path / who, *args).check_returncode()
        result = json.loads((tmp_path / who / "mini_infer.json").read_text())["result"]
        answers[who] = (result["caption"], result["answer"])
    assert answers["base"] != answers["adapter"], answers


# --- paths -----------------------------------------------------------------------------------------

def test_one_path_rule_home_other_folder_and_spelling(tiny_model_dir, tmp_path):
    """`~` is expanded in every path setting; defaults are the repository's wherever the script starts;
    the same folder spelled differently is the same run."""
    (tmp_path / "home").mkdir()
    os.symlink(REPO / "data", tmp_path / "home" / "data")
    base = ["create_vqav2_baseline.py", "--dataset=tiny", "--quantization=none"]
    proc = run_script(*base, f"--model_id={tiny_model_dir}", "--data_dir=~/data", "--output_dir=~/out",
                      env={"HOME": str(tmp_path / "home")}, check=True)
    assert len((tmp_path / "home" / "out" / "vqav2_baseline.jsonl").read_text().splitlines()) == 16, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_script(REPO / base[0], *base[1:], f"--model_id={tiny_model_dir}", f"--output_dir={tmp_path / 'o2'}",
                      cwd=elsewhere, check=True)  # default --data_dir=data: the repository's
    assert "16 to go" in proc.stdout
    spelled = f"{tmp_path}/./o2/"
    model = f"{Path(tiny_model_dir).parent}/./{Path(tiny_model_dir).name}"
    proc = run_script(*base, f"--model_id={model}", f"--output_dir={spelled}", check=True)
    assert "16 already done, 0 to go" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_fine_tuning_resumes_with_the_same_model_folder_spelled_differently(killed_training):
    """The path rule holds for a resumed fine-tuning too: /x/./m and a relative spelling are the same model (the
    session's interrupted fine-tuning, tests/conftest.py, spells it so in its resumed runs)."""
    model, dotted, _, relative = killed_training["spellings"]
    assert dotted == f"{Path(model).parent}/./{Path(model).name}" and relative == os.path.relpath(model, REPO)
    # killed in the save of step 4, so the /./ run resumed from step 2: its curve starts at step 3, and it trained
    first, dotted_run = killed_training["attempts"][:2]
    assert "step-000002" in first["checkpoints"] and "step-000004" not in first["checkpoints"]
    assert dotted_run["killed"] and dotted_run["loss_steps"][-1][:2] == [3, 4], dotted_run
    older = killed_training["out"] / "lora_adapter_checkpoints" / killed_training["older"].name
    assert f"resumed from {older}" in killed_training["final"].stdout  # the relative spelling


def test_file_names_that_are_not_utf8_keep_every_row(tiny_model_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(REPO / "baseline_images" / "pic_01.jpg", folder / "a.jpg")
    try:
        shutil.copy(REPO / "baseline_images" / "pic_02.jpg", os.fsdecode(bytes(folder) + b"/\xff\xfe.jpg"))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    proc = run_script("create_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                      f"--images_dir={folder}", f"--output_dir={tmp_path / 'o'}")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "o" / "baseline.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and any("\\xff\\xfe.jpg" in r["image_path"] for r in rows), rows
    assert all(r["caption"] for r in rows)


# --- a full disk while fine-tuning ----------------------------------------------------------------

def _used(folder: Path) -> int:
    """Bytes the files under `folder` take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_fine_tuning_on_a_full_disk_keeps_its_checkpoints_and_resumes(tmp_path):
    """A real file system that fills up during the second checkpoint: one line, the first checkpoint
    intact, no half-written one left, and the rerun (after space is freed) resumes from it and finishes
    (on the random-weight twin, unquantised: what fills the disk is the checkpoints' files)."""
    args = ["finetune_vqav2_lora.py", f"--model_id={random_twin()}", "--dataset=easy_vqa", "--use_4bit=False",
            "--per_device_batch=4", "--grad_accum=1", "--warmup_steps=1", "--save_every=2", "--keep_checkpoints=5",
            "--preview_samples=0", "--train_steps=4"]
    probe = tmp_path / "probe"
    run_script(*args, f"--output_dir={probe}", check=True)  # how much room each step's files take
    ckpts = probe / "lora_adapter_checkpoints"
    first, second = _used(ckpts / "step-000002"), _used(ckpts / "step-000004")
    others = sum(_used(p) if p.is_dir() else -(-p.stat().st_size // 4096) * 4096 for p in probe.iterdir()
                 if p.name not in ("lora_adapter", "lora_adapter_checkpoints"))
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        room = first + others + 64 * 1024 + second // 2  # the first checkpoint fits, the second does not
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * (shutil.disk_usage(disk).free - room))
        run = disk / "run"
        proc = run_script(*args, f"--output_dir={run}")
        assert_one_line_error(proc, "disk is full", "rerun the same command")
        kept = sorted(p.name for p in (run / "lora_adapter_checkpoints").iterdir())
        assert kept == ["step-000002"] or kept == ["step-000002", "train_log.jsonl"], kept
        (disk / "filler").unlink()
        proc = run_script(*args, f"--output_dir={run}", check=True)
        assert "step 2" in proc.stdout.lower() or "step-000002" in proc.stdout, proc.stdout
        assert (run / "lora_adapter" / "adapter_model.safetensors").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("name", ["vqav2_baseline.jsonl", "vqav2_sample_ids.json", "vqav2_baseline_metrics.json"])
def test_an_output_file_that_is_a_folder_is_said_before_the_run(tiny_model_dir, tmp_path, name):
    (tmp_path / name).mkdir()
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                          "--quantization=none", f"--output_dir={tmp_path}")
    assert_one_line_error(proc, str(tmp_path / name), "is a folder")
    assert "MODEL LOAD STARTED" not in proc.stderr


def test_vqa_eval_cli_out_paths_and_odd_json(tmp_path):
    q = {"questions": [{"question_id": 1, "image_id": 1, "question": "What?"}]}
    a = {"annotations": [{"question_id": 1, "image_id": 1, "answers": [{"answer": "red"}] * 10,
                          "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what"}]}
    for name, obj in (("q.json", q), ("a.json", a), ("r.json", [{"question_id": 1, "answer": "red"}])):
        (tmp_path / name).write_text(json.dumps(obj))
    base = ["-m", "bench.vqa_eval", f"--questions={tmp_path / 'q.json'}", f"--annotations={tmp_path / 'a.json'}",
            f"--results={tmp_path / 'r.json'}"]
    (tmp_path / "outdir").mkdir()
    assert_one_line_error(run_script(*base, f"--out={tmp_path / 'outdir'}"), "is a folder")
    assert_one_line_error(run_script(*base, f"--out={tmp_path / 'q.json' / 'm.json'}"), "is a file, not a folder")
    (tmp_path / "q.json").write_text(json.dumps({**q, "task_type": "Multiple Choice",
                                                 "questions": [{**q["questions"][0], "multiple_choices": "red"}]}))
    assert_one_line_error(run_script(*base), "multiple_choices must be a list")
    (tmp_path / "r.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(run_script(*base), "r.json", "levels deep")


def test_hub_path_that_does_not_exist_and_a_damaged_cache_record(tiny_model_dir, tmp_path):
    args = ["create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=vqav2_hub", "--quantization=none",
            f"--output_dir={tmp_path / 'out'}"]
    proc = run_script(*args, f"--hf_dataset={tmp_path / 'no' / 'such' / 'folder'}", env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "no such folder", str(tmp_path / "no"))
    (tmp_path / "out" / "vqav2_hub").mkdir(parents=True)
    (tmp_path / "out" / "vqav2_hub" / "source.json").write_text('{"hf_dataset": "lmms-lab/VQ')
    proc = run_script(*args, env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "source.json", "delete the folder")
