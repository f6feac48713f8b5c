"""Faults and bad input, as a table of cases, each asserting the exact behaviour: odd and broken
images, odd questions, broken input files, SIGKILL at random points of inference and training
(one of them inside a checkpoint save), and early checks of settings."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import REPO, assert_one_line_error, kill_when, run_script, start_script
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
    "exif_rotated": (None, lambda im: im.size == (90, 120)),  # orientation applied: portrait now
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
            assert out[i]["error"] is None and out[i]["answer"], k
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
        proc = run_script("mini_infer.py", f"--model_id={tiny_model_dir}", f"--question={q}", "--quantization=none")
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
    proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                      f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}")
    assert_one_line_error(proc, "tiny.jsonl, line 5", "malformed")


def test_duplicate_question_id_is_named(tiny_model_dir, tmp_path):
    rows = _tiny_rows()
    rows[3]["question_id"] = rows[1]["question_id"]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
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
    proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", f"--data_dir={tmp_path}",
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
    ("mini_infer.py", "--quantization=8bit", "needs a CUDA GPU"),
])
def test_settings_are_checked_before_work(tiny_model_dir, tmp_path, script, arg, fragment):
    proc = run_script(script, f"--model_id={tiny_model_dir}", "--dataset=tiny", f"--output_dir={tmp_path}", arg) \
        if script != "mini_infer.py" else run_script(script, f"--model_id={tiny_model_dir}", f"--output_dir={tmp_path}", arg)
    assert_one_line_error(proc, fragment)


def test_unwritable_output_dir(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny",
                      f"--output_dir={blocker}/sub")
    assert_one_line_error(proc, "cannot write to output folder")


def test_debug_shows_the_traceback(tiny_model_dir):
    proc = run_script("mini_infer.py", f"--model_id={tiny_model_dir}", "--image=no/such.jpg", "--debug=True")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "image not found" in proc.stderr


# --- kills ------------------------------------------------------------------------------------------------

def _assert_nothing_half_written(out: Path) -> None:
    """Every JSON parses, every JSONL line but a torn last one parses, every listed checkpoint is whole."""
    from src.training import checkpoint_dirs, checkpoint_problem

    for p in out.rglob("*.json"):
        if not p.name.startswith("."):
            json.loads(p.read_text())
    for p in out.rglob("*.jsonl"):
        lines = p.read_bytes().split(b"\n")
        for line in lines[:-1]:
            json.loads(line)
    ckpts = out / "lora_adapter_checkpoints"
    for d in checkpoint_dirs(ckpts):
        assert checkpoint_problem(d) is None, d
    adapter = out / "lora_adapter"
    if adapter.exists():
        assert (adapter / "adapter_model.safetensors").exists() and (adapter / "training_config.json").exists()


def test_inference_survives_kills_at_five_random_points(tiny_model_dir, tmp_path):
    args = ["create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa", "--max_samples=80",
            "--eval_batch=4", "--quantization=none", "--num_workers=1"]
    run_script(*args, f"--output_dir={tmp_path / 'full'}", check=True)
    out = tmp_path / "killed"
    rows = out / "vqav2_baseline.jsonl"
    rng = random.Random(7)
    for target in sorted(rng.sample(range(4, 76), 5)):
        proc = start_script(*args, f"--output_dir={out}")
        assert kill_when(proc, lambda: rows.exists() and rows.read_bytes().count(b"\n") >= target)
        _assert_nothing_half_written(out)
    run_script(*args, f"--output_dir={out}", check=True)
    assert rows.read_text() == (tmp_path / "full" / "vqav2_baseline.jsonl").read_text()
    for name in ("vqav2_baseline_metrics.json", "vqav2_baseline_results.json", "vqav2_sample_ids.json"):
        assert (out / name).read_text() == (tmp_path / "full" / name).read_text(), name


KILL_IN_SAVE = """
import os, signal
import src.training as T
_save = T.save_checkpoint
def save_checkpoint(ckpt_root, step, *a, **k):
    if step == int(os.environ["KILL_IN_SAVE_AT"]):
        import torch
        _orig = torch.save
        def dying_save(obj, f, *x, **y):  # the adapter is written, the training state half-written
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04 half")
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
    return _save(ckpt_root, step, *a, **k)
T.save_checkpoint = save_checkpoint
"""


def test_training_survives_kills_including_one_inside_a_checkpoint_save(tiny_model_dir, tmp_path):
    args = ["finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=easy_vqa", "--train_steps=120",
            "--per_device_batch=8", "--grad_accum=1", "--lr=3e-3", "--warmup_steps=5", "--save_every=15",
            "--keep_checkpoints=3", "--preview_samples=0"]
    run_script(*args, f"--output_dir={tmp_path / 'full'}", check=True)
    out = tmp_path / "killed"
    ckpts = out / "lora_adapter_checkpoints"
    log = ckpts / "train_log.jsonl"

    def step_reached(n):
        return lambda: log.exists() and log.read_bytes().count(b"\n") >= n

    # 1: a kill inside the save of step 30 (adapter written, training state torn, never renamed)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_IN_SAVE)
    proc = start_script(*args, f"--output_dir={out}", env={"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "KILL_IN_SAVE_AT": "30"})
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert (ckpts / ".tmp-step-000030").exists() and not (ckpts / "step-000030").exists()
    _assert_nothing_half_written(out)
    # 2, 3: kills at random steps of the resumed runs
    rng = random.Random(3)
    for target in sorted(rng.sample(range(35, 110), 2)):
        proc = start_script(*args, f"--output_dir={out}")
        assert kill_when(proc, step_reached(target))
        _assert_nothing_half_written(out)
    # a checkpoint torn in place (e.g. a disk filled up) is skipped with a warning
    newest = sorted(ckpts.glob("step-*"))[-1]
    (newest / "training_state.pt").write_bytes(b"torn")
    proc = run_script(*args, f"--output_dir={out}", check=True)
    assert f"{newest} is incomplete" in proc.stdout and "falling back" in proc.stdout
    _assert_nothing_half_written(out)
    a = load_file(str(tmp_path / "full" / "lora_adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (out / "lora_adapter" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))
