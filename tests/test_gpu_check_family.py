"""bench/gpu_check.py for BLIP-2 on Flan-T5: `--model_id` picks the architecture, and the check runs the
Flan-T5 family's own layout, LoRA targets, prompt and results section on a CPU smoke run."""

from __future__ import annotations

import json
import math

import pytest

from helpers import assert_one_line_error, run_script

pytest.importorskip("bitsandbytes")

T5_LORA = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def assert_t5_check(out, model_id: str, section: str, train_batch: int) -> dict:
    """What a Flan-T5 smoke run must have written to `out`: the family, a finite QLoRA step on T5's layers
    with the encoder-decoder layout, an answered evaluation with vqa_t5, no goals of blip2-opt-2.7b's."""
    results = json.loads((out / "gpu_check.json").read_text())
    assert (results["model_id"], results["family"], results["section"]) == (model_id, "t5", section)
    assert results["goals"] is None and results["skipped"] == []
    assert results["model"]["special_ids"] == {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}

    lora = results["lora"]
    assert lora["targets"] == T5_LORA and lora["end_token_id"] == 1, lora
    for name in T5_LORA:  # every T5 layer name is wrapped, in the encoder and the decoder
        assert f"{name} x" in lora["wrapped"], lora["wrapped"]
    assert lora["trainable_params"] > 0 and lora["wrapped_modules"] >= len(T5_LORA)

    train = [r for r in results["train"] if r["path"] == "no_grad_tower"]
    assert [r["per_device_batch"] for r in train] == [train_batch], results["train"]
    for r in results["train"]:
        first, last = r["loss_first_last"]
        assert math.isfinite(first) and math.isfinite(last) and r["timed_steps"] >= 1, r
        assert r["step_s"] > 0
        # encoder: the query tokens + the 16-token prompt ending on </s>; decoder labels: 3 answer tokens + </s>
        assert (r["seq_len"], r["label_len"]) == (results["model"]["num_query_tokens"] + 16, 3 + 1), r

    assert results["eval"], results
    for r in results["eval"]:
        assert r["prompt"] == "vqa_t5" and r["decoding"] == "vqa_beam5_t5" and r["quantization"] == "4bit"
        assert r["questions"] >= r["batch"] and r["samples_per_s"] > 0, r

    md = (out / "gpu_results.md").read_text()
    assert md.startswith(f"## {section}: ") and "Flan-T5 (encoder-decoder)" in md and "not set" in md, md
    assert "goal: batch 4 <= 10 GB" not in md
    return results


@pytest.mark.slow
def test_gpu_check_smoke_runs_flan_t5_xl(tmp_path):
    """`--model_id=Salesforce/blip2-flan-t5-xl`: the shipped Flan-T5-XL architecture, shrunken, through the
    4-bit load, the QLoRA step on both training paths and batched evaluation."""
    proc = run_script("-m", "bench.gpu_check", "--smoke=True", "--model_id=Salesforce/blip2-flan-t5-xl",
                      "--eval_quantizations=4bit", "--train_batches=[2]", "--write_results=False",
                      f"--output_dir={tmp_path}", check=True, timeout=400)
    results = assert_t5_check(tmp_path, "Salesforce/blip2-flan-t5-xl", "gpu_check_flan_t5_xl", train_batch=2)
    assert sorted(r["path"] for r in results["train"]) == ["full_graph", "no_grad_tower"]
    assert [r["batch"] for r in results["eval"]] == [1, 32]
    assert "src/blip2_flan_t5_xl_architecture.json" in results["model"]["architecture"]
    assert results["model"]["num_query_tokens"] == 32 and results["train"][0]["seq_len"] == 32 + 16
    assert "## gpu_check_flan_t5_xl: full-size blip2-flan-t5-xl" in proc.stdout
    assert "q x" in proc.stdout and "wi_0 x" in proc.stdout  # the LoRA banner names T5's layers


@pytest.mark.slow
def test_gpu_check_smoke_reads_a_model_folder(tmp_path):
    """`--model_id=FOLDER`: the architecture in a model folder's config.json (here the Flan-T5 twin's)."""
    from twin import build_tiny_blip2

    folder = build_tiny_blip2(tmp_path / "t5-twin", pretrain_steps=0, family="t5")
    out = tmp_path / "out"
    run_script("-m", "bench.gpu_check", "--smoke=True", f"--model_id={folder}", "--eval_quantizations=4bit",
               "--train_batches=[1]", "--train_paths=no_grad_tower", "--eval_batches=[1]", "--write_results=False",
               f"--output_dir={out}", check=True, timeout=400)
    results = assert_t5_check(out, str(folder), "gpu_check_t5_twin", train_batch=1)
    assert str(folder / "config.json") in results["model"]["architecture"]


@pytest.mark.slow
def test_gpu_check_refuses_an_unknown_model_id(tmp_path):
    """An id the check has no architecture for stops in one line, before any work (nothing is downloaded)."""
    proc = run_script("-m", "bench.gpu_check", "--smoke=True", "--model_id=Salesforce/blip2-opt-13b",
                      f"--output_dir={tmp_path}", timeout=120)
    assert_one_line_error(proc, "--model_id=Salesforce/blip2-opt-13b", "Salesforce/blip2-flan-t5-xl")
    assert not (tmp_path / "gpu_check.json").exists()
