"""README steps 1-2 and the CLI, run as a user would, on the tiny model."""

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO, assert_one_line_error, run_command, run_script


def test_mini_infer(tiny_model_dir, tmp_path):
    proc = run_script("mini_infer.py", f"--model_id={tiny_model_dir}", "--quantization=none", f"--output_dir={tmp_path}",
                      check=True)
    lines = dict(l.split(":", 1) for l in proc.stdout.splitlines() if ":" in l)
    assert lines["image"].strip() == "baseline_images/pic_01.jpg"
    assert lines["caption"].strip() and lines["answer"].strip()
    saved = json.loads((tmp_path / "mini_infer.json").read_text())
    assert saved["result"]["caption"] == lines["caption"].strip()
    assert saved["result"]["answer"] == lines["answer"].strip()
    assert saved["config"]["model_id"] == tiny_model_dir and saved["config"]["quantization"] == "none"
    assert saved["result"]["decoding"]["num_beams"] == 5 and saved["result"]["prompt"] == "vqa_opt"


def test_outputs_are_readable_by_others_and_home_is_expanded(tiny_model_dir, tmp_path):
    """--output_dir=~/runs means the home folder; written files get the umask's mode, not mkstemp's 0600."""
    run_script("mini_infer.py", f"--model_id={tiny_model_dir}", "--quantization=none", "--output_dir=~/runs",
               env={"HOME": str(tmp_path)}, check=True)
    saved = tmp_path / "runs" / "mini_infer.json"
    assert json.loads(saved.read_text())["result"]["answer"]
    umask = os.umask(0)
    os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not (REPO / "~").exists()


def test_create_baseline_and_finetuned_name(tiny_model_dir, tmp_path):
    run_script("create_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none", f"--output_dir={tmp_path}",
               check=True)
    rows = [json.loads(l) for l in (tmp_path / "baseline.jsonl").read_text().splitlines()]
    assert [r["image_path"] for r in rows] == [f"baseline_images/pic_{i:02d}.jpg" for i in range(1, 11)]
    for r in rows:
        assert r["caption"].strip() and r["answer"].strip() and r["question"] == "What is in the image?"
        assert r["model_id"] == tiny_model_dir and r["adapter"] is None and r["error"] is None
        assert r["prompt"] == "vqa_opt" and r["decoding"] == {"preset": "vqa_beam5", "num_beams": 5, "length_penalty": -1.0,
                                                            "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False}
    cfg = json.loads((tmp_path / "baseline.jsonl.config.json").read_text())
    assert cfg["images_dir"] == "baseline_images"


def test_blip2_cli_json_and_folder(tiny_model_dir):
    proc = run_script("blip2_cli.py", "baseline_images", "--question", "What is in the image?", "--model_id",
                      tiny_model_dir, "--quantization", "none", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert len(rows) == 10 and all(r["caption"] and r["answer"] for r in rows)
    assert rows[0]["image_path"].endswith("pic_01.jpg")
    proc = run_script("blip2_cli.py", "baseline_images/pic_02.jpg", "--model_id", tiny_model_dir, "--quantization", "none",
                      check=True)
    assert "caption:" in proc.stdout and "A:" not in proc.stdout  # captions only without a question


def test_cli_help():
    proc = run_script("blip2_cli.py", "--help", check=True)
    for flag in ("--question", "--model_id", "--adapter_dir", "--quantization", "--json"):
        assert flag in proc.stdout


def test_adapter_dir_means_one_thing_in_every_script():
    """ADAPTER_DIR: "" is the base model, "{output_dir}" stands for the script's OUTPUT_DIR, "~" is home."""
    from src.modeling import resolve_adapter_dir

    assert resolve_adapter_dir("", "outputs") is None
    assert resolve_adapter_dir("{output_dir}/lora_adapter", "runs/a") == "runs/a/lora_adapter"
    assert resolve_adapter_dir("{output_dir}/lora_adapter", "runs/a/") == "runs/a/lora_adapter"
    assert resolve_adapter_dir("elsewhere/lora_adapter", "runs/a") == "elsewhere/lora_adapter"
    assert resolve_adapter_dir("~/lora_adapter", "runs/a") == os.path.expanduser("~/lora_adapter")
    scripts = ("create_baseline.py", "mini_infer.py", "evaluate_vqav2_finetuned.py", "inference_demo.py")
    for script in scripts:
        text = (REPO / script).read_text()
        assert "\nADAPTER_DIR: str = " in text and "\nADAPTER: " not in text, script
    assert "\nADAPTER" not in (REPO / "create_vqav2_baseline.py").read_text()  # the baseline is the base model


def test_odd_but_valid_images_work(tiny_model_dir, tmp_path):
    src = Image.open(REPO / "baseline_images/pic_03.jpg").convert("RGB").resize((80, 60))
    src.convert("L").save(tmp_path / "gray.png")
    rgba = src.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    src.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    src.convert("CMYK").save(tmp_path / "cmyk.jpg")
    proc = run_script("blip2_cli.py", tmp_path, "-q", "what is this?", "--model_id", tiny_model_dir,
                      "--quantization", "none", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert sorted(r["image_path"].rsplit("/", 1)[-1] for r in rows) == ["cmyk.jpg", "gray.png", "palette.png", "rgba.png"]
    assert all(r["answer"] for r in rows)


def test_missing_image(tiny_model_dir):
    proc = run_script("blip2_cli.py", "no/such.jpg", "--model_id", tiny_model_dir)
    assert_one_line_error(proc, "image not found", "no/such.jpg")
    proc = run_script("mini_infer.py", f"--model_id={tiny_model_dir}", "--image=no/such.jpg")
    assert_one_line_error(proc, "image not found", "no/such.jpg")


def test_not_an_image(tiny_model_dir, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is text, not a picture\n")
    proc = run_script("blip2_cli.py", fake, "--model_id", tiny_model_dir)
    assert_one_line_error(proc, "not an image", "notes.jpg")


def test_unknown_setting(tiny_model_dir):
    for script in ("mini_infer.py", "create_baseline.py"):
        proc = run_script(script, f"--model_id={tiny_model_dir}", "--max_smaples=3")
        assert_one_line_error(proc, "unknown setting --max_smaples", "--model_id")
    proc = run_script("blip2_cli.py", "baseline_images/pic_01.jpg", "--bogus", "1")
    assert_one_line_error(proc, "--bogus")


def test_wrong_type(tiny_model_dir):
    proc = run_script("create_baseline.py", f"--model_id={tiny_model_dir}", "--batch_size=many")
    assert_one_line_error(proc, "--batch_size=many", "expected int")


def test_empty_question(tiny_model_dir):
    for q in ("", "   "):
        proc = run_script("blip2_cli.py", "baseline_images/pic_01.jpg", "--question", q, "--model_id", tiny_model_dir)
        assert_one_line_error(proc, "question is empty")


@pytest.mark.slow
def test_model_that_cannot_be_fetched(tmp_path):
    proc = run_script("mini_infer.py", f"--model_id={tmp_path}/missing-model")
    assert_one_line_error(proc, "--model_id=<local dir>")
    proc = run_script("mini_infer.py", "--model_id=~/models/blip2", env={"HOME": str(tmp_path)})
    assert_one_line_error(proc, f"model folder not found: {tmp_path}/models/blip2")  # ~ is expanded in every path setting
    proc = run_script("blip2_cli.py", "baseline_images/pic_01.jpg", "--model_id", "no-such-org/no-such-model",
                      env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "no-such-org/no-such-model", "--model_id=<local dir>")


def test_the_next_lines_paste_as_they_are_with_a_space_in_the_path(tiny_model_dir, tmp_path):
    """Each script's closing "next:" line, pasted into a shell as it is, runs the next step of the same run: the
    fine-tuning names its model, data and precision, and a folder with a space in its name is quoted."""
    out = tmp_path / "my runs"
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--quantization=none",
               "--num_workers=0", f"--output_dir={out}", check=True)
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--use_4bit=False",
                      "--train_steps=1", "--per_device_batch=2", "--grad_accum=1", "--save_every=1",
                      "--preview_samples=0", "--num_workers=0", f"--output_dir={out}", check=True)
    for step in ("evaluate_vqav2_finetuned.py", "compare_baseline_finetuned.py"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith("next: "))
        assert f"python {step} " in line, line
        proc = run_command(line[len("next: "):], cwd=REPO)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    assert (out / "vqav2_finetuned.jsonl").exists() and (out / "comparisons" / "report.html").exists()


def test_a_baseline_and_an_evaluation_of_different_precision_are_said_to_differ(short_chain, tiny_model_dir, tmp_path):
    """Zero-shot unquantised, fine-tuned evaluated in 4-bit: the evaluation warns before it answers, and the
    comparison's console, summary and report say the setups differ (the README asks for equal settings). The
    baseline and the fine-tuning are the session's short chain (tests/conftest.py)."""
    out = shutil.copytree(short_chain, tmp_path / "out")
    common = [f"--model_id={tiny_model_dir}", "--dataset=tiny", "--num_workers=0", f"--output_dir={out}"]
    proc = run_script("evaluate_vqav2_finetuned.py", *common, "--quantization=4bit", check=True)
    said = "quantization differs: baseline 'none', fine-tuned '4bit'"
    assert 0 <= proc.stdout.index(f"warning: {said}") < proc.stdout.index("next: ")
    proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", check=True)
    assert said in proc.stdout + proc.stderr
    assert said in (out / "comparisons" / "summary.txt").read_text(encoding="utf-8")
    assert said.replace("'", "&#39;") in (out / "comparisons" / "report.html").read_text(encoding="utf-8")


def test_an_adapter_trained_on_another_name_of_the_same_shapes_is_warned_about(tiny_model_dir, tmp_path):
    """An adapter recorded as trained on one model folder, applied to another folder of the same shapes: a warning
    naming both (right only for a copy of that base); the same folder spelled differently says nothing."""
    from helpers import random_adapter

    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    proc = run_script("mini_infer.py", f"--model_id={other}", "--quantization=none", f"--adapter_dir={adapter}",
                      f"--output_dir={tmp_path / 'o'}", check=True)
    assert f"warning: the LoRA adapter in {adapter} was trained on {tiny_model_dir}, not on {other}" in proc.stdout
    spelled = f"{Path(tiny_model_dir).parent}/./{Path(tiny_model_dir).name}"
    proc = run_script("mini_infer.py", f"--model_id={spelled}", "--quantization=none", f"--adapter_dir={adapter}",
                      f"--output_dir={tmp_path / 'o'}", check=True)
    assert "warning" not in proc.stdout


def test_an_adapter_is_refused_on_another_checkpoint_of_the_same_shapes_and_taken_on_a_copy(quickstart, tmp_path):
    """The fine-tuning records sampled values of its base's never-quantised weights: applied to a copy of that base
    in another folder (and another precision: trained in 4-bit, loaded unquantised) the adapter loads without a
    word; applied to a checkpoint whose query tokens were trained further, as blip2-opt-2.7b-coco's were, the
    evaluation and the merge refuse in one line before answering or writing anything."""
    from safetensors.torch import load_file, save_file

    from helpers import run_in_process

    adapter = quickstart["out"] / "lora_adapter"
    recorded = json.loads((adapter / "training_config.json").read_text())["base_fingerprint"]
    assert sorted(recorded) == ["embeddings", "language_projection", "qformer", "query_tokens"]
    copy, other = tmp_path / "copy", tmp_path / "coco-like"
    shutil.copytree(quickstart["model"], copy)
    shutil.copytree(quickstart["model"], other)
    weights = load_file(other / "model.safetensors")
    weights["query_tokens"] = weights["query_tokens"] * 1.05 + 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})

    ok = run_in_process("mini_infer.py", f"--model_id={copy}", "--quantization=none", f"--adapter_dir={adapter}",
                        f"--output_dir={tmp_path / 'o'}")
    assert ok.returncode == 0 and "warning" not in ok.stdout + ok.stderr, (ok.stdout[-2000:], ok.stderr[-2000:])
    for script, *args in (("mini_infer.py", "--quantization=none", f"--output_dir={tmp_path / 'o2'}"),
                          ("merge_lora_adapter.py", f"--merged_dir={tmp_path / 'merged'}")):
        proc = run_in_process(script, f"--model_id={other}", f"--adapter_dir={adapter}", *args)
        assert_one_line_error(proc, str(other), "is not the base", str(adapter), "query_tokens differ")
    assert not (tmp_path / "o2" / "mini_infer.json").exists() and not (tmp_path / "merged").exists()
