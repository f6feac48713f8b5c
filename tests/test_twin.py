"""The offline twin is configured like Salesforce/blip2-opt-2.7b (src/blip2_opt_2.7b_architecture.json) in
everything but size, is a captioner of easy-VQA images, and is built deterministically."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from twin import ARCHITECTURES, SIZES

ARCH = json.loads(ARCHITECTURES["opt"].read_text())


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_config_keys_and_values_mirror_the_real_model_but_sizes(tiny_model_dir):
    twin = json.loads((REPO / tiny_model_dir / "config.json").read_text())
    sizes = set(_leaves(SIZES))
    ids = {"image_token_index", "text_config.vocab_size", "text_config.eos_token_id", "qformer_config.vocab_size",
           "architectures", "text_config.architectures"}
    twin_leaves = _leaves(twin)
    for key, value in _leaves(ARCH).items():
        assert key in twin_leaves or key in ids, f"{key} missing from the twin's config"
        if key not in sizes and key not in ids:
            assert twin_leaves[key] == value, (key, twin_leaves[key], value)


def test_special_tokens_play_the_real_roles(tiny_model_dir):
    from transformers import AutoProcessor, GenerationConfig

    twin = json.loads((REPO / tiny_model_dir / "config.json").read_text())
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    text = twin["text_config"]
    # OPT: BOS </s> = 2 prepended to every text, pad 1, generation stops on the newline (50118 in the real one)
    assert (text["bos_token_id"], text["pad_token_id"]) == (ARCH["text_config"]["bos_token_id"],
                                                          ARCH["text_config"]["pad_token_id"]) == (2, 1)
    assert tok.convert_ids_to_tokens(2) == "</s>" and tok("a red circle")["input_ids"][0] == 2
    assert tok.decode([text["eos_token_id"]]) == "\n" and text["eos_token_id"] != tok.eos_token_id
    # <image> is the last token of the vocabulary, as 50265 is in the real one, inside the padded embedding
    assert twin["image_token_index"] == len(tok) - 1 == tok.convert_tokens_to_ids("<image>")
    assert text["vocab_size"] >= len(tok) and text["vocab_size"] % 8 == 0
    # the query count in the config and the processor
    assert twin["num_query_tokens"] == processor.num_query_tokens == SIZES["num_query_tokens"]
    gen = GenerationConfig.from_pretrained(tiny_model_dir)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (2, text["eos_token_id"], 1)


def test_the_card_reports_a_captioner(tiny_model_dir):
    card = json.loads((REPO / tiny_model_dir / "card.json").read_text())
    assert card["steps"] > 0 and "easy-VQA train images" in card["pretraining_data"]
    assert card["caption_accuracy"] >= 85, card  # "a {colour} {shape}" exactly, on val images (91.7-95.0 across kernel settings, bench/RESULTS.md)
    assert card["seconds"] > 0


def test_zero_shot_it_captions_not_answers(tiny_model_dir):
    from src.images import load_image
    from src.inference import generate_for_images
    from src.modeling import load_blip2
    from twin import easy_vqa_captions

    paths, captions = easy_vqa_captions("val")
    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    said = generate_for_images(model, processor, [load_image(p) for p in paths[:40]], [""] * 40,
                               {"num_beams": 1, "max_new_tokens": 8, "do_sample": False})
    colour_right = sum(s.split()[1:2] == c.split()[1:2] for s, c in zip(said, captions[:40]))
    assert colour_right >= 36, list(zip(said, captions))  # it sees the colour


@pytest.mark.slow
def test_same_command_same_weights(tmp_path):
    from safetensors.torch import load_file

    from twin import build_tiny_blip2

    a = build_tiny_blip2(tmp_path / "a", pretrain_steps=6)
    b = build_tiny_blip2(tmp_path / "b", pretrain_steps=6)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    card = json.loads((a / "card.json").read_text())
    assert card["steps"] == 6 and card["recipe"]["pretrain_steps"] == 6


@pytest.mark.slow
def test_an_existing_twin_with_the_same_recipe_is_reused(tmp_path, capsys):
    from twin import build_tiny_blip2

    build_tiny_blip2(tmp_path / "t", pretrain_steps=0)
    before = (tmp_path / "t" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    build_tiny_blip2(tmp_path / "t", pretrain_steps=0)
    assert "reusing it" in capsys.readouterr().out
    assert (tmp_path / "t" / "model.safetensors").stat().st_mtime_ns == before
    build_tiny_blip2(tmp_path / "t", pretrain_steps=2)  # another recipe: rebuilt
    assert json.loads((tmp_path / "t" / "card.json").read_text())["steps"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("args", [[], ["a", "b"], ["--pretrain_steps=x", "d"]])
def test_bad_command_lines_say_how(args, tmp_path):
    from helpers import run_script

    proc = run_script("-m", "twin", *args)
    assert proc.returncode == 2 and "usage: python -m twin OUTDIR" in proc.stderr
    assert ("invalid int value: 'x'" if "--pretrain_steps=x" in args else "error:") in proc.stderr
