"""Faults and bad input, as a table of cases, each asserting the exact behaviour: odd and broken
images, odd questions, broken input files, SIGKILL at random points of inference and training
(one of them inside a checkpoint save), and early checks of settings."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import (CAN_MOUNT, REPO, assert_one_line_error, half_written, killed_at_marker, module_fixture,
                     run_in_process, run_on_small_disk, run_script, start_script)
from src.errors import UserError
from src.images import load_image

PHOTO = REPO / "baseline_images" / "pic_03.jpg"


# --- images -----------------------------------------------------------------------------------------

def _png_declaring(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (nothing that large is ever decoded)."""
    Image.new("RGB", (8, 8)).save(path)
    data = path.read_bytes()
    i = data.index(b"IHDR")
    chunk = b"IHDR" + struct.pack(">II", width, height) + data[i + 12:i + 17]
    path.write_bytes(data[:i] + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF) + data[i + 21:])


def _make(kind: str, d: Path) -> Path:
    src = Image.open(PHOTO).convert("RGB").resize((120, 90))
    p = d / {"zero_byte": "empty.jpg", "text_as_jpg": "notes.jpg", "truncated_jpeg": "cut.jpg", "png16": "deep.png",
             "cmyk": "cmyk.jpg", "palette_alpha": "pal.png", "exif_rotated": "rot.jpg", "one_pixel": "dot.png",
             "animated_gif": "anim.gif", "huge_header": "huge.png"}[kind]
    if kind == "zero_byte":
        p.write_bytes(b"")
    elif kind == "text_as_jpg":
        p.write_text("not a picture\n")
    elif kind == "truncated_jpeg":
        src.save(d / "full.jpg", quality=95)
        p.write_bytes((d / "full.jpg").read_bytes()[:1500])
    elif kind == "png16":
        Image.fromarray((torch.arange(90 * 120).reshape(90, 120) * 6).numpy().astype("uint16")).save(p)
    elif kind == "cmyk":
        src.convert("CMYK").save(p)
    elif kind == "palette_alpha":
        pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.info["transparency"] = 0
        pal.save(p, transparency=0)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
        src.save(p, exif=exif)
    elif kind == "one_pixel":
        Image.new("RGB", (1, 1), (255, 0, 0)).save(p)
    elif kind == "animated_gif":
        frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "huge_header":
        _png_declaring(p, 30000, 30000)
    return p


IMAGE_CASES = {  # kind: (error fragment or None, check of the decoded image)
    "zero_byte": ("image file is empty", None),
    "text_as_jpg": ("not an image", None),
    "truncated_jpeg": ("cannot decode image", None),
    "png16": (None, lambda im: im.mode == "RGB" and im.size == (120, 90) and im.getextrema()[0][1] > 200),
    "cmyk": (None, lambda im: im.mode == "RGB" and im.size == (120, 90)),
    "palette_alpha": (None, lambda im: im.mode == "RGB"),
    "exif_rotated": (None, lambda im: im.size == (120, 90)),  # as stored (datasets); uploads: see test_exif_*
    "one_pixel": (None, lambda im: im.size == (1, 1) and im.getpixel((0, 0)) == (255, 0, 0)),
    "animated_gif": (None, lambda im: im.size == (40, 30) and im.getpixel((0, 0)) == (255, 0, 0)),
    "huge_header": ("image too large", None),
}


@pytest.mark.parametrize("kind", sorted(IMAGE_CASES))
def test_image_loading(kind, tmp_path):
    path = _make(kind, tmp_path)
    error, check = IMAGE_CASES[kind]
    if error:
        with pytest.raises(UserError) as e:
            load_image(path)
        assert error in str(e.value) and path.name in str(e.value)
    else:
        im = load_image(path)
        assert check(im), (im.mode, im.size)


def test_bad_images_in_a_batch_run_become_error_rows_and_the_cli_names_them(tiny_model_dir, tmp_path):
    kinds = sorted(IMAGE_CASES)
    d = tmp_path / "imgs"
    d.mkdir()
    paths = {k: _make(k, d) for k in kinds}
    rows = [{"question_id": i, "image_id": i, "image_path": str(paths[k]), "question": "what is this?",
             "answers": ["red"] * 10, "answer_type": "other", "question_type": "what is"} for i, k in enumerate(kinds)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", f"--data_dir={data}",
               "--max_samples=0", f"--output_dir={tmp_path / 'out'}", "--quantization=none", check=True)
    out = {r["question_id"]: r for r in map(json.loads, (tmp_path / "out" / "vqav2_baseline.jsonl").read_text().splitlines())}
    for i, k in enumerate(kinds):
        error = IMAGE_CASES[k][0]
        if error:
            assert out[i]["error"] and error in out[i]["error"] and out[i]["answer"] is None, k
        else:
            assert out[i]["error"] is None and out[i]["raw_answer"] is not None, k  # answered (whatever it says)
    for k in ("text_as_jpg", "huge_header", "zero_byte"):
        proc = run_script("blip2_cli.py", paths[k], "--model_id", tiny_model_dir, "--quantization", "none")
        assert_one_line_error(proc, IMAGE_CASES[k][0], paths[k].name)


# --- text ---------------------------------------------------------------------------------------------

def test_questions_long_chinese_and_empty(tiny_model_dir, tmp_path):
    long_q = "what is the color of the shape " * 400  # ~12,000 characters
    proc = run_script("blip2_cli.py", PHOTO, "--question", long_q, "--model_id", tiny_model_dir, "--quantization",
                      "none", "--json", check=True)
    assert "too long for the model and was cut" in proc.stderr
    assert json.loads(proc.stdout)[0]["answer"]
    for q in ("", "   \t "):
        proc = run_in_process("mini_infer.py", f"--model_id={tiny_model_dir}", f"--question={q}", "--quantization=none")
        assert_one_line_error(proc, "question is empty")
    # a Chinese question is answered and round-trips through JSONL as UTF-8
    rows = [{"question_id": 1, "image_path": str(PHOTO), "question": "这只猫是什么颜色的？",
             "answers": ["棕色"] * 10, "answer_type": "other"},
            {"question_id": 2, "image_path": str(PHOTO), "question": long_q, "answers": ["red"] * 10}]
    data = tmp_path / "data"
    data.mkdir()
    (data / "tiny.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", f"--data_dir={data}",
               "--max_samples=0", f"--output_dir={tmp_path}", "--quantization=none", check=True)
    text = (tmp_path / "vqav2_baseline.jsonl").read_text(encoding="utf-8")
    assert "这只猫是什么颜色的？" in text and "棕色" in text  # stored as UTF-8, not \u escapes
    out = [json.loads(l) for l in text.splitlines()]
    assert out[0]["answer"] and out[1]["answer"] and out[1]["question_truncated"] is True
    assert out[1]["question"] == long_q  # the row keeps what was asked


# --- files ----------------------------------------------------------------------------------------------

def _tiny_rows():
    return [json.loads(l) for l in (REPO / "data" / "tiny.jsonl").read_text().splitlines()]


def test_malformed_jsonl_line_names_file_and_line(tiny_model_dir, tmp_path):
    lines = [json.dumps(r) for r in _tiny_rows()]
    lines[4] = lines[4][:30]
    (tmp_path / "tiny.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                          f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, "tiny.jsonl, line 5", "malformed")


def test_duplicate_question_id_is_named(tiny_model_dir, tmp_path):
    rows = _tiny_rows()
    rows[3]["question_id"] = rows[1]["question_id"]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                          f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, f"duplicate question_id {rows[1]['question_id']}")


def test_annotation_missing_a_key_is_named(tiny_model_dir, tmp_path):
    vqa = tmp_path / "vqa"
    vqa.mkdir()
    qs = {"questions": [{"question_id": 1, "image_id": 1, "question": "what?"}]}
    anns = {"annotations": [{"question_id": 1, "image_id": 1, "answers": [{"answer": "a"}] * 10,
                             "answer_type": "other", "question_type": "what"}]}  # no multiple_choice_answer
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(qs))
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(anns))
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", f"--data_dir={tmp_path}",
                          f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, "v2_mscoco_val2014_annotations.json", "'multiple_choice_answer'")


# --- early checks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("script,arg,fragment", [
    ("finetune_vqav2_lora.py", "--train_steps=0", "--train_steps=0: must be at least 1"),
    ("finetune_vqav2_lora.py", "--per_device_batch=-2", "--per_device_batch=-2: must be at least 1"),
    ("finetune_vqav2_lora.py", "--lr=-1.0", "--lr=-1.0: must be a positive number"),
    ("create_vqav2_baseline.py", "--eval_batch=0", "--eval_batch=0: must be at least 1"),
    ("create_vqav2_baseline.py", "--quantization=3bit", "unknown quantization '3bit'"),
    ("create_vqav2_baseline.py", "--dataset=coco", "unknown dataset 'coco'"),
    ("create_vqav2_baseline.py", "--vqa_decoding=beam7", "unknown decoding preset 'beam7'"),
    ("evaluate_vqav2_finetuned.py", "--adapter_dir=", "--adapter_dir= is empty"),  # the base model is the baseline's
    ("mini_infer.py", "--quantization=8bit", "needs a CUDA GPU"),
])
def test_settings_are_checked_before_work(tiny_model_dir, tmp_path, script, arg, fragment):
    dataset = [] if script == "mini_infer.py" else ["--dataset=tiny"]
    proc = run_in_process(script, f"--model_id={tiny_model_dir}", *dataset, f"--output_dir={tmp_path}", arg)
    assert_one_line_error(proc, fragment)
    assert "MODEL LOAD STARTED" not in proc.stderr


def test_unwritable_output_dir(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                          f"--output_dir={blocker}/sub")
    assert_one_line_error(proc, "cannot write to output folder")


def test_debug_shows_the_traceback(tiny_model_dir):
    proc = run_script("mini_infer.py", f"--model_id={tiny_model_dir}", "--image=no/such.jpg", "--debug=True")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "image not found" in proc.stderr


# --- kills ------------------------------------------------------------------------------------------------

def test_inference_survives_kills_at_two_random_points(tiny_model_dir, tmp_path):
    args = ["create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa", "--max_samples=48",
            "--eval_batch=4", "--quantization=none", "--num_workers=1"]
    run_script(*args, f"--output_dir={tmp_path / 'full'}", check=True)
    out = tmp_path / "killed"
    rows = out / "vqav2_baseline.jsonl"
    rng = random.Random(7)
    for batches in (rng.randint(1, 5), rng.randint(1, 5)):  # each run killed right after its k-th batch is on disk
        proc = start_script(*args, f"--output_dir={out}", kill_at=("src.files:JsonlAppender.write", batches),
                            hook_dir=tmp_path)
        assert killed_at_marker(proc)
        assert half_written(out) == []
    done_before = rows.read_bytes().count(b"\n")
    assert done_before < 48
    with open(rows, "ab") as f:  # what a kill in the middle of a write leaves
        f.write(b'{"question_id": 12345, "answer": "half a li')
    proc = run_script(*args, f"--output_dir={out}", check=True)
    assert f"{done_before} already done" in proc.stdout
    assert rows.read_text() == (tmp_path / "full" / "vqav2_baseline.jsonl").read_text()
    for name in ("vqav2_baseline_metrics.json", "vqav2_baseline_results.json", "vqav2_sample_ids.json"):
        assert (out / name).read_text() == (tmp_path / "full" / name).read_text(), name


@pytest.mark.slow
def test_training_survives_kills_including_one_inside_a_checkpoint_save(killed_training):
    """The session's interrupted fine-tuning (tests/conftest.py: on the random-weight twin, unquantised; the 4-bit
    base's resume is compared in test_t5_family.py): the resumed run against the uninterrupted one (a checkpoint
    every 2 of 12 steps)."""
    out, steps, attempts = killed_training["out"], killed_training["steps"], killed_training["attempts"]
    ckpts = out / "lora_adapter_checkpoints"
    # 1: a kill inside the save of step 4 (adapter written, training state torn, never renamed)
    first = attempts[0]
    assert first["killed"] and ".tmp-step-000004" in first["checkpoints"] and "step-000004" not in first["checkpoints"]
    assert first["half_written"] == []
    # 2, 3: kills at random steps of the resumed runs
    for killed in attempts[1:3]:
        assert killed["killed"] and killed["log_rows"] < steps and killed["half_written"] == []
    # a checkpoint torn in place (e.g. a disk filled up) is skipped with a warning
    newest, older, proc = killed_training["torn"], killed_training["older"], killed_training["final"]
    assert newest.parent == older.parent == ckpts and newest.name > older.name
    assert f"{newest} is incomplete" in proc.stdout and "falling back" in proc.stdout
    assert f"resumed from {older}" in proc.stdout and f"steps: {steps} (from {int(older.name[5:])})" in proc.stdout
    assert attempts[-1]["half_written"] == []
    # the same adapter and the same loss at every step as the uninterrupted run (gradient accumulation included)
    full = killed_training["full"]
    a = load_file(str(full / "lora_adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    log_a, log_b = ([json.loads(l) for l in (d / "lora_adapter" / "train_log.jsonl").read_text().splitlines()]
                    for d in (full, out))
    assert [r["step"] for r in log_b] == list(range(1, steps + 1))
    assert [round(r["loss"], 5) for r in log_a] == [round(r["loss"], 5) for r in log_b]


# --- broken models, adapters and output folders: one line, before the model load ---------------------

LOAD_MARKER = """
import sys, time, os
import transformers
_cls = transformers.Blip2ForConditionalGeneration
_load = _cls.from_pretrained.__func__
def from_pretrained(cls, *a, **k):
    print("MODEL LOAD STARTED", file=sys.stderr, flush=True)
    if os.environ.get("STALL_IN_LOAD"):  # hold the run here (and its output lock) until killed
        time.sleep(600)
    return _load(cls, *a, **k)
_cls.from_pretrained = classmethod(from_pretrained)
"""


@module_fixture
def load_marker(tmp_path_factory) -> dict:
    """Env that makes a script print MODEL LOAD STARTED when the BLIP-2 weights start loading."""
    hook = tmp_path_factory.mktemp("load_marker")
    (hook / "sitecustomize.py").write_text(LOAD_MARKER)
    return {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}


@module_fixture
def adapters(tiny_model_dir, tmp_path_factory) -> dict:
    """A LoRA adapter for the tiny model, and one trained on another tiny BLIP-2 whose language
    model is narrower (hidden size 32, not 64), each saved by peft as finetune_vqav2_lora.py does."""
    from peft import LoraConfig, get_peft_model
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    root = tmp_path_factory.mktemp("adapters")
    other = root / "other-blip2"
    config = Blip2Config.from_pretrained(tiny_model_dir)
    config.text_config.hidden_size = config.text_config.word_embed_proj_dim = 32
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(other)
    out = {"other_base": str(other)}
    for name, base in (("tiny", tiny_model_dir), ("other", str(other))):
        model = Blip2ForConditionalGeneration.from_pretrained(base)
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        lora.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _copy(src, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _truncated_model(t, m, a):
    d = _copy(m, t / "model")
    _cut(d / "model.safetensors")
    return [f"--model_id={d}"], ["model.safetensors is cut short", "copy or download the model again"]


def _lfs_pointer_model(t, m, a):  # a hub repository cloned without git-lfs
    d = _copy(m, t / "model")
    (d / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 1\n")
    return [f"--model_id={d}"], ["model.safetensors is a Git LFS pointer", "git lfs pull"]


def _opt_folder(t, m, a):  # an OPT language model next to a BLIP-2 processor_config.json
    from transformers import OPTConfig, OPTForCausalLM

    d = t / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=700, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                             word_embed_proj_dim=32)).save_pretrained(d)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(m) / name, d / name)
    return [f"--model_id={d}"], [f"{d} is not a BLIP-2 model", "model_type 'opt'"]


def _corrupt_model_config(t, m, a):
    d = _copy(m, t / "model")
    (d / "config.json").write_text((d / "config.json").read_text()[:200])
    return [f"--model_id={d}"], ["config.json is corrupt"]


def _adapter_as_model(t, m, a):
    return [f"--model_id={a['tiny']}"], [f"{a['tiny']} is a LoRA adapter, not a base model", f"--adapter_dir={a['tiny']}"]


def _adapter_from_other_base(t, m, a):
    return [f"--adapter_dir={a['other']}"], [f"was trained on {a['other_base']}", f"not the model loaded ({m})",
                                         "64 in features, the adapter's has 32"]


def _truncated_adapter(t, m, a):
    d = _copy(a["tiny"], t / "adapter")
    _cut(d / "adapter_model.safetensors")
    return [f"--adapter_dir={d}"], ["adapter_model.safetensors is cut short", "resumes from its last checkpoint"]


def _corrupt_adapter_config(t, m, a):
    d = _copy(a["tiny"], t / "adapter")
    (d / "adapter_config.json").write_text('{"r": 4, "lora_alpha":')
    return [f"--adapter_dir={d}"], [f"{d / 'adapter_config.json'} is corrupt"]


def _adapter_weights_file(t, m, a):  # the file instead of its folder
    f = Path(a["tiny"]) / "adapter_model.safetensors"
    return [f"--adapter_dir={f}"], [f"{f} is a file; pass the adapter's folder", f"(e.g. {a['tiny']})"]


def _output_dir_is_a_file(t, m, a):
    (t / "taken").write_text("x")
    return [f"--output_dir={t / 'taken'}"], [f"output folder {t / 'taken'} is a file"]


def _empty_output_dir(t, m, a):
    return ["--output_dir="], ["--output_dir= is empty"]


def _output_file_is_a_folder(t, m, a):
    (t / "out" / "baseline.jsonl").mkdir(parents=True)
    return [], [f"output file {t / 'out' / 'baseline.jsonl'} is a folder", "--output_file="]


def _batch_size_zero(t, m, a):
    return ["--batch_size=0"], ["--batch_size=0: must be at least 1"]


BROKEN_INPUTS = {  # case: (scripts, build(tmp, tiny model, adapters) -> (extra args, fragments of the error line))
    "truncated_model_safetensors": (("mini_infer.py", "create_baseline.py"), _truncated_model),
    "lfs_pointer_instead_of_weights": (("mini_infer.py",), _lfs_pointer_model),
    "opt_folder_with_blip2_processor": (("mini_infer.py", "create_baseline.py"), _opt_folder),
    "corrupt_model_config": (("create_baseline.py",), _corrupt_model_config),
    "adapter_folder_as_model": (("mini_infer.py",), _adapter_as_model),
    "adapter_from_other_base_model": (("mini_infer.py", "create_baseline.py"), _adapter_from_other_base),
    "truncated_adapter_safetensors": (("mini_infer.py", "create_baseline.py"), _truncated_adapter),
    "corrupt_adapter_config": (("mini_infer.py", "create_baseline.py"), _corrupt_adapter_config),
    "adapter_weights_file_as_adapter": (("mini_infer.py",), _adapter_weights_file),
    "output_dir_is_a_file": (("mini_infer.py", "create_baseline.py"), _output_dir_is_a_file),
    "empty_output_dir": (("mini_infer.py", "create_baseline.py", "create_vqav2_baseline.py", "finetune_vqav2_lora.py"),
                         _empty_output_dir),
    "output_file_is_a_folder": (("create_baseline.py",), _output_file_is_a_folder),
    "batch_size_zero": (("create_baseline.py",), _batch_size_zero),
}


@pytest.mark.parametrize("case,script", [(c, s) for c, (scripts, _) in BROKEN_INPUTS.items() for s in scripts])
def test_broken_input_is_one_line_before_the_model_loads(case, script, tiny_model_dir, adapters, tmp_path):
    extra, fragments = BROKEN_INPUTS[case][1](tmp_path, tiny_model_dir, adapters)
    dataset = ["--dataset=tiny"] if "vqav2" in script else []
    quantization = "--use_4bit=False" if script == "finetune_vqav2_lora.py" else "--quantization=none"
    proc = run_in_process(script, f"--model_id={tiny_model_dir}", quantization, f"--output_dir={tmp_path / 'out'}",
                          *dataset, *extra)
    assert_one_line_error(proc, *fragments)
    assert "MODEL LOAD STARTED" not in proc.stderr


def test_adapter_from_other_base_model_in_the_demo_and_the_cli(tiny_model_dir, adapters, load_marker):
    """The demo loads the model, then check_adapter_fits refuses the adapter, after the demo's own warning."""
    from src.modeling import load_blip2
    from src.preflight import check_adapter_fits

    with pytest.raises(UserError) as e:
        check_adapter_fits(load_blip2(tiny_model_dir, "none", device="cpu")[0], adapters["other"])
    assert f"was trained on {adapters['other_base']}" in str(e.value) and tiny_model_dir in str(e.value)
    proc = run_script("inference_demo.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                      f"--adapter_dir={adapters['other']}", "--port=7797", env=load_marker)
    assert_one_line_error(proc, f"was trained on {adapters['other_base']}", f"not the model loaded ({tiny_model_dir})")
    proc = run_in_process("blip2_cli.py", PHOTO, "--model_id", tiny_model_dir, "--adapter_dir", adapters["other"],
                          "--quantization", "none")
    assert_one_line_error(proc, f"was trained on {adapters['other_base']}")
    assert "MODEL LOAD STARTED" not in proc.stderr
    # an adapter made for this model still loads
    proc = run_script("blip2_cli.py", PHOTO, "--model_id", tiny_model_dir, "--adapter_dir", adapters["tiny"],
                      "--quantization", "none", check=True)
    assert "caption:" in proc.stdout


# --- one writer per output folder ------------------------------------------------------------------

def test_a_second_run_into_a_busy_folder_refuses_and_a_killed_run_is_taken_over(tiny_model_dir, load_marker, tmp_path):
    out = tmp_path / "out"
    args = [f"--model_id={tiny_model_dir}", "--quantization=none", f"--output_dir={out}"]
    first = start_script("create_baseline.py", *args, env={**load_marker, "STALL_IN_LOAD": "1"})
    lock = out / ".output.lock"
    try:
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        for script in ("create_baseline.py", "mini_infer.py"):
            proc = run_script(script, *args, env=load_marker)
            assert_one_line_error(proc, f"another run (PID {first.pid}) is writing into {out}", "--output_dir=")
            assert "MODEL LOAD STARTED" not in proc.stderr
        assert first.poll() is None  # the refused runs left the holder's lock alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert lock.read_text().strip() == str(first.pid)  # what a killed run leaves behind
    proc = run_script("create_baseline.py", *args, check=True)
    assert f"taking over {out} from run PID {first.pid}" in proc.stdout
    assert len((out / "baseline.jsonl").read_text().splitlines()) == 10
    assert not lock.exists()  # a finished run removes its lock


@pytest.mark.slow
def test_output_lock_api(tmp_path):
    from src.locks import hold_output_lock

    with hold_output_lock(tmp_path, enabled=False) as held:  # a non-main rank under torchrun
        assert held is None and not (tmp_path / ".output.lock").exists()
    with pytest.raises(UserError):  # released when the run fails ...
        with hold_output_lock(tmp_path) as held:
            assert held.read_text().strip() == str(os.getpid())
            proc = run_script("mini_infer.py", f"--output_dir={tmp_path}")  # refused before anything loads
            assert_one_line_error(proc, f"another run (PID {os.getpid()})")
            raise UserError("stop")
    assert not (tmp_path / ".output.lock").exists()
    with hold_output_lock(tmp_path):  # ... so the next run gets it
        pass


def test_output_lock_on_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch, capsys):
    import errno

    import src.locks as L

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(L.fcntl, "flock", no_locks)
    with L.hold_output_lock(tmp_path) as held:
        assert held is None
    assert f"warning: cannot lock {tmp_path} (No locks available)" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# --- full disks, read-only folders, unreadable files (real ones, made without root's privileges) -------

def _works(*cmd) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


# root reads any file; without these capabilities it is refused like everyone else
NO_ROOT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
CAN_DROP = not NO_ROOT_OVERRIDE or (shutil.which("setpriv") is not None and _works(*NO_ROOT_OVERRIDE, "true"))


def run_unprivileged(*args) -> subprocess.CompletedProcess:
    """A script run as a user whose file permissions apply (root without its override capability)."""
    return subprocess.run([*NO_ROOT_OVERRIDE, sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.skipif(not CAN_MOUNT, reason="needs unshare -r -m (user and mount namespaces) for a small tmpfs")
def test_disk_full_names_the_file_keeps_finished_work_and_a_rerun_resumes(tiny_model_dir, tmp_path):
    # create_baseline.py: the atomic write of baseline.jsonl fails, nothing half-written is left
    disk = tmp_path / "disk"
    proc = run_on_small_disk(f'$PY create_baseline.py --model_id={tiny_model_dir} --quantization=none '
                             f'--output_dir={disk}; echo "rc=$?"; ls -A {disk}', disk, SIZE="8k")
    error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "rc=2" in proc.stdout and len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"could not write {disk}/baseline.jsonl: the disk is full" in error[0] and "rerun" in error[0]
    assert proc.stdout.split("rc=2")[1].split() == [], proc.stdout  # no temp file, no lock left on the disk

    # create_vqav2_baseline.py: rows are appended until the disk fills; after space is freed the same
    # command resumes and ends with exactly the rows of an uninterrupted run
    args = (f"--model_id={tiny_model_dir} --dataset=tiny --max_samples=0 --quantization=none --eval_batch=2 "
            "--num_workers=0")
    run_script("create_vqav2_baseline.py", *args.split(), f"--output_dir={tmp_path / 'full'}", check=True)
    kept = tmp_path / "kept"
    proc = run_on_small_disk(f'$PY create_vqav2_baseline.py {args} --output_dir={disk}; echo "rc=$?"; '
                             f'wc -l < {disk}/vqav2_baseline.jsonl; mount -o remount,size=4m {disk} && '
                             f'$PY create_vqav2_baseline.py {args} --output_dir={disk} && cp -r {disk} {kept}',
                             disk, SIZE="12k")
    error = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "rc=2" in proc.stdout and len(error) == 1, proc.stderr
    assert f"could not write {disk}/vqav2_baseline.jsonl: the disk is full" in error[0]
    rows_before = int(proc.stdout.split("rc=2")[1].split()[0])
    assert 0 < rows_before < 16, proc.stdout  # some rows were on disk when it filled up
    assert (kept / "vqav2_baseline.jsonl").read_text() == (tmp_path / "full" / "vqav2_baseline.jsonl").read_text()


@pytest.mark.skipif(not CAN_DROP, reason="needs setpriv to run without root's file-permission override")
def test_unreadable_image_and_folders_say_permission_denied(tiny_model_dir, tmp_path):
    secret = tmp_path / "secret.jpg"
    shutil.copy(PHOTO, secret)
    secret.chmod(0)
    proc = run_unprivileged("blip2_cli.py", secret, "--model_id", tiny_model_dir, "--quantization", "none")
    line = assert_one_line_error(proc, f"permission denied: cannot read image {secret}")
    assert "corrupt" not in line
    # in a batch the unreadable image becomes an error row and the rest is answered
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(PHOTO, images / "a.jpg")
    shutil.copy(secret, images / "b.jpg")
    proc = run_unprivileged("create_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                            f"--images_dir={images}", f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in (tmp_path / "out" / "baseline.jsonl").read_text().splitlines()]
    assert rows[0]["answer"] and rows[0]["error"] is None
    assert rows[1]["answer"] is None and "permission denied" in rows[1]["error"]
    # a folder of images that can't be listed, and an output folder that can't be written
    images.chmod(0)
    proc = run_unprivileged("create_baseline.py", f"--model_id={tiny_model_dir}", f"--images_dir={images}")
    assert_one_line_error(proc, f"permission denied: cannot list image folder {images}")
    images.chmod(0o755)
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    proc = run_unprivileged("mini_infer.py", f"--model_id={tiny_model_dir}", f"--output_dir={readonly}")
    assert_one_line_error(proc, f"cannot write to output folder {readonly} (it is read-only)")


def test_saved_files_get_the_usual_permissions(tmp_path):
    from safetensors.torch import save_file

    from src.files import FILE_MODE, give_default_permissions, write_json

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # made 0600 by safetensors
    write_json(tmp_path / "config.json", {})  # via mkstemp (0600) and rename
    give_default_permissions(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == FILE_MODE == 0o666 & ~umask, name
