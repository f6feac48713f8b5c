"""What the real blip2-opt-2.7b needs and the tiny model would not show by itself: answers scored after
the official answer processing, only the language model in 4-bit, bf16 only where the GPU has it, frozen
parts in eval mode while LoRA trains, old hub revisions, no KV cache in training, the LAVIS prompt, and
the fine-tuning target ending with the token generation stops on."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from conftest import REPO, assert_one_line_error, run_script
from src.data import VQASample
from src.errors import UserError
from src.vqa_eval import normalize_answer, vqa_accuracy

bnb = pytest.importorskip("bitsandbytes")


# --- 1. answers are scored after the official answer processing -------------------------------------

@pytest.mark.parametrize("raw, gts, processed", [
    ("Two", ["2"] * 10, "2"),
    ("Yes.", ["yes"] * 10, "yes"),
    ("a dog", ["dog"] * 10, "dog"),
    ("The red car!", ["red car"] * 10, "red car"),
])
def test_raw_answers_score_zero_and_processed_answers_score_as_published(raw, gts, processed):
    assert vqa_accuracy(raw, gts) == 0.0  # the official tool on a unanimous question compares raw strings
    assert normalize_answer(raw) == processed
    assert vqa_accuracy(normalize_answer(raw), gts) == 1.0


def test_run_vqa_keeps_raw_answer_and_scores_the_processed_one(tiny_model_dir, tmp_path, monkeypatch):
    import src.evaluation as E
    from src.modeling import load_blip2
    from src.prompts import generation_record
    from src.runtime import make_accelerator

    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    image = str(REPO / "data" / "picture_01.jpg")
    samples = [VQASample(i, i, image, f"question {i}?", [gt] * 10, gt, "other", "what") for i, gt in
               enumerate(["2", "yes", "dog", "red"], start=1)]
    raw = {"question 1?": "Two", "question 2?": "Yes.", "question 3?": "a dog", "question 4?": "red"}
    monkeypatch.setattr(E, "generate_batch", lambda m, p, pix, prompts, dec, image_index=None, **k:
                        [raw[next(q for q in raw if q in pr)] for pr in prompts])
    out = tmp_path / "run.jsonl"
    E.run_vqa(samples, out, model=model, processor=processor, accelerator=make_accelerator(),
              record={"model_id": "m", "adapter": None, **generation_record("vqa_opt", "greedy")},
              prompt="vqa_opt", decoding="greedy", batch_size=4)
    rows, metrics = E.finalize(samples, out, tmp_path / "m.json", tmp_path / "r.json")
    assert [r["raw_answer"] for r in rows] == ["Two", "Yes.", "a dog", "red"]
    assert [r["answer"] for r in rows] == ["2", "yes", "dog", "red"]
    assert [r["vqa_accuracy"] for r in rows] == [1.0] * 4 and metrics["vqa_accuracy"] == 100.0
    assert metrics["answers_changed_by_processing"] == 3
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["answer"] for r in results] == ["2", "yes", "dog", "red"]  # what one submits to EvalAI


# --- 2. only the language model in 4-bit -------------------------------------------------------------

def test_4bit_quantises_only_the_language_model(tiny_model_dir):
    from src.modeling import load_blip2

    model, _ = load_blip2(tiny_model_dir, quantization="4bit", device="cpu")
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(n.startswith("language_model.model.decoder.layers.") for n in four_bit), four_bit
    for part in (model.vision_model, model.language_projection, model.qformer):
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in part.modules())
    assert type(model.language_model.lm_head) is torch.nn.Linear


# --- 3. bf16 only on GPUs with native bf16 -----------------------------------------------------------

@pytest.mark.parametrize("major, dtype, mixed", [(7, torch.float16, "fp16"), (8, torch.bfloat16, "bf16"),
                                                 (9, torch.bfloat16, "bf16")])
def test_compute_dtype_follows_native_bf16(monkeypatch, major, dtype, mixed):
    """A T4 / V100 (compute capability 7.x) gets fp16 even though torch would emulate bf16 there."""
    from src.modeling import compute_dtype, mixed_precision

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(major=major, minor=5))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda d: True)  # emulation works
    assert compute_dtype("cuda") == dtype
    assert mixed_precision("cuda:0") == mixed
    assert compute_dtype("cpu") == torch.float32 and mixed_precision("cpu") == "no"


# --- 4. frozen parts in eval mode while LoRA trains --------------------------------------------------

def test_frozen_parts_give_identical_image_features_in_training_mode(tiny_model_dir):
    from src.modeling import load_blip2
    from src.training import LoraSettings, add_lora, set_train_mode

    model, processor = load_blip2(tiny_model_dir, quantization="4bit", device="cpu", trainable_adapter=True)
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"), scope="language_model")
    model = add_lora(model, lora, gradient_checkpointing=False)
    set_train_mode(model)
    pixels = processor.image_processor([Image.open(REPO / "data" / "picture_01.jpg")], return_tensors="pt")["pixel_values"]
    core = model.get_base_model()
    a = core.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    b = core.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
    assert torch.equal(a, b)  # Q-Former dropout (0.1, as in the real config) is off
    assert core.config.qformer_config.hidden_dropout_prob == 0.1
    lora_dropouts = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert lora_dropouts and all(m.training for m in lora_dropouts)
    assert core.language_model.training


# --- 5. old hub revisions ----------------------------------------------------------------------------

def _copy_model_without(src: str, dst, file: str, key: str) -> str:
    """A copy of the model folder `src` whose `file` (a JSON file) lacks `key`, as old revisions do."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / file).read_text())
    del cfg[key]
    (dst / file).write_text(json.dumps(cfg))
    return str(dst)


def test_a_processor_without_num_query_tokens_takes_the_model_count(tiny_model_dir, tmp_path):
    from src.images import load_image
    from src.inference import generate_for_images
    from src.modeling import load_blip2

    old = _copy_model_without(tiny_model_dir, tmp_path / "old", "processor_config.json", "num_query_tokens")
    images = [load_image(REPO / "data" / "picture_01.jpg")]
    prompts = ["Question: what is this? Answer:"]
    decoding = {"num_beams": 1, "max_new_tokens": 5, "do_sample": False}
    model, processor = load_blip2(old, quantization="none", device="cpu")
    assert processor.num_query_tokens == model.config.num_query_tokens
    ref_model, ref_processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    assert generate_for_images(model, processor, images, prompts, decoding) == \
        generate_for_images(ref_model, ref_processor, images, prompts, decoding)


def test_a_config_without_image_token_gives_one_line_saying_how_to_fix(tiny_model_dir, tmp_path):
    old = _copy_model_without(tiny_model_dir, tmp_path / "old", "config.json", "image_token_index")
    proc = run_script("mini_infer.py", f"--model_id={old}", "--quantization=none", f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, "no image token", "huggingface-cli download")


# --- 6. no KV cache in the training forward ------------------------------------------------------------

def test_training_forward_uses_no_cache(tiny_model_dir):
    from src.modeling import load_blip2
    from src.training import LoraSettings, add_lora, training_loss

    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu", trainable_adapter=True)
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj",), scope="language_model")
    model = add_lora(model, lora, gradient_checkpointing=False)
    seen = []
    lm = model.get_base_model().language_model
    lm.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True)
    enc = processor(images=[Image.new("RGB", (64, 64), (200, 30, 30))], text=["Question: what? Answer: red"],
                    return_tensors="pt")
    loss = training_loss(model, {**enc, "labels": enc["input_ids"].clone()})
    assert torch.isfinite(loss) and seen == [False]


# --- 7. the LAVIS prompt --------------------------------------------------------------------------------

def test_lavis_prompt_lowercases_and_strips_the_question():
    from src.prompts import format_prompt, generation_record

    assert format_prompt("vqa_opt", 'What is "this"?') == 'Question: What is "this"? Answer:'
    assert format_prompt("vqa_opt_lavis", 'What is "THIS" (#1); the man~s: hat.!?') == \
        "Question: what is this 1 the mans hat? Short answer:"
    assert generation_record("vqa_opt_lavis", "vqa_beam5")["prompt_template"] == "Question: {} Short answer:"
    with pytest.raises(UserError, match="known prompts"):
        format_prompt("nope", "q")


# --- the end of the answer -------------------------------------------------------------------------------

def test_the_training_target_ends_with_the_token_generation_stops_on(tiny_model_dir):
    from src.modeling import end_token_id, load_blip2
    from src.training import encode_example

    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    tok = processor.tokenizer
    end = end_token_id(model)
    assert end == model.config.text_config.eos_token_id == tok.convert_tokens_to_ids("Ċ") != tok.eos_token_id
    assert tok.decode([end]) == "\n"
    ids, labels = encode_example(tok, "Question: what color is the shape? Answer:", "red", end)
    assert ids[-1] == labels[-1] == end
    assert tok.decode([i for i in labels if i != -100]) == " red\n"
