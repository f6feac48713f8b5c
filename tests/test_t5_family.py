"""BLIP-2 on Flan-T5 (encoder-decoder) through the same scripts as on OPT: the family switch read from the
config (src/family.py), the Flan-T5 twin configured like Salesforce/blip2-flan-t5-xl, its batched
generation and training batches against one-at-a-time computations, the quick start's chain with the
same grounding checks as the OPT twin's, resume after a kill, two data-parallel processes, and the one-line
refusals (an adapter of the other family, a prompt or preset written for the other family)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import (QUICKSTART_HEADING, REPO, assert_one_line_error, fresh_copy, killed_at_marker, load_tuned,
                     module_fixture, random_adapter, random_twin, readme_commands, run_command, run_in_process,
                     run_script, start_script)
from src.errors import UserError
from src.family import OPT, T5, family_of, lora_targets, resolve
from twin import ARCHITECTURES, SIZES, T5_TEXT_SIZES

T5_ARCH = json.loads(ARCHITECTURES["t5"].read_text())
OPT_ARCH = json.loads(ARCHITECTURES["opt"].read_text())
QUESTIONS = ["What is in the image?", "how many?", "What color is the shape in the middle of the picture?", "is it?",
             "Where was this photo taken, and by whom?", "what", "Is there a cat?", "What is the man holding in his hand?",
             "why?", "Which sport is being played here today?"]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# --- the switch, without a model ----------------------------------------------------------------------

def test_the_family_is_read_from_the_config_not_the_name():
    assert family_of(OPT_ARCH) is OPT and family_of(T5_ARCH) is T5
    from transformers import Blip2Config

    assert family_of(Blip2Config(**T5_ARCH)) is T5 and family_of(Blip2Config(**OPT_ARCH)) is OPT
    # an old config without the flag: transformers decides by the text model's type, and so does family_of
    assert family_of({k: v for k, v in T5_ARCH.items() if k != "use_decoder_only_language_model"}) is T5
    with pytest.raises(UserError) as e:
        family_of({"use_decoder_only_language_model": True, "text_config": {"model_type": "llama"}})
    assert "'llama' decoder-only" in str(e.value) and "--model_id=Salesforce/blip2-flan-t5-xl" in str(e.value)
    assert lora_targets("auto", T5) == ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    assert lora_targets("q, v", T5) == ("q", "v") and lora_targets(["q_proj"], OPT) == ("q_proj",)
    assert resolve("prompt", "auto", T5, "m") == "vqa_t5" and resolve("prompt", "auto", OPT, "m") == "vqa_opt"
    assert resolve("decoding", "auto", T5, "m") == "vqa_beam5_t5"
    with pytest.raises(UserError) as e:
        resolve("prompt", "vqa_opt", T5, "m")
    assert "--vqa_prompt=vqa_t5" in str(e.value)
    with pytest.raises(UserError) as e:
        resolve("decoding", "vqa_lavis", T5, "m")  # LAVIS's OPT preset (prompt cut to 32 tokens, newline stop)
    assert "--vqa_decoding=vqa_beam5_t5" in str(e.value)


def test_t5_layouts_are_encoder_prompt_and_decoder_labels():
    """Flan-T5: the prompt (ending in </s>) is the encoder's input, the labels the answer and </s>, padded
    right, with -100 on the label padding only; OPT keeps its one left-padded sequence."""
    import torch

    from src.training import IGNORE_INDEX, collate_examples, encode_example
    from twin import _t5_tokenizer

    tok = _t5_tokenizer()
    ids, labels = encode_example(tok, "Question: what color? Short answer:", "red", tok.eos_token_id, T5)
    assert ids == tok("Question: what color? Short answer:")["input_ids"] and ids[-1] == tok.eos_token_id
    assert labels == tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    short = encode_example(tok, "Question: what? Short answer:", "a red circle", tok.eos_token_id, T5)
    input_ids, mask, lab = collate_examples(tok, 3, 99, [(ids, labels), short], T5)
    assert input_ids[0, :3].tolist() == [99] * 3 and input_ids[1, :3].tolist() == [99] * 3
    assert input_ids[1, 3:3 + len(short[0])].tolist() == short[0]  # right padding after the text
    assert (input_ids[1, 3 + len(short[0]):] == tok.pad_token_id).all()
    assert mask[1].tolist() == [1] * (3 + len(short[0])) + [0] * (len(ids) - len(short[0]))
    assert lab.shape[1] == max(len(labels), len(short[1]))
    assert lab[0].tolist() == labels + [IGNORE_INDEX] * (lab.shape[1] - len(labels))
    assert torch.equal(lab[1, :len(short[1])], torch.tensor(short[1]))


# --- the twin ------------------------------------------------------------------------------------------

def test_t5_twin_mirrors_flan_t5_xl_but_sizes(tiny_t5_dir):
    from transformers import AutoProcessor, AutoTokenizer, GenerationConfig

    from transformers import Blip2Config

    twin = json.loads((Path(tiny_t5_dir) / "config.json").read_text())
    sizes = set(_leaves({**SIZES, "text_config": T5_TEXT_SIZES}))
    ids = {"image_token_index", "text_config.vocab_size", "qformer_config.vocab_size", "architectures",
           "text_config.architectures", "dtype",
           "vision_config.initializer_range"}  # the twin's own choice, as in the OPT twin (twin/__init__.py)
    # both as transformers reads them: it rewrites T5's tie_word_embeddings false (scale_decoder_outputs
    # false, tying decided by the checkpoint's tensors) and leaves class defaults such as is_encoder_decoder out
    # of what it saves
    real, ours = (_leaves(Blip2Config(**T5_ARCH).to_dict()), _leaves(Blip2Config.from_pretrained(tiny_t5_dir).to_dict()))
    for key in T5_ARCH["text_config"]:
        assert f"text_config.{key}" in real, key  # every key of the real config.json reaches the config
    for key, value in real.items():
        if key not in sizes and key not in ids:
            assert ours.get(key) == value, (key, ours.get(key), value)
    text = twin["text_config"]
    assert twin["use_decoder_only_language_model"] is False and text["model_type"] == "t5"
    # the special tokens of blip2-flan-t5-xl: pad 0, eos 1, decoder start = pad, <image> after the pieces
    assert (text["pad_token_id"], text["eos_token_id"], text["decoder_start_token_id"]) == (0, 1, 0)
    assert (T5_ARCH["text_config"]["pad_token_id"], T5_ARCH["text_config"]["eos_token_id"]) == (0, 1)
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    assert type(tok).__name__ == "T5Tokenizer"
    assert json.loads((Path(tiny_t5_dir) / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert tok("a red circle")["input_ids"][-1] == 1 and tok.convert_ids_to_tokens(tok("red")["input_ids"]) == ["\u2581red", "</s>"]
    assert twin["image_token_index"] == len(tok) - 1 == tok.convert_tokens_to_ids("<image>") < text["vocab_size"]
    processor = AutoProcessor.from_pretrained(tiny_t5_dir)
    assert twin["num_query_tokens"] == processor.num_query_tokens == SIZES["num_query_tokens"]
    gen = GenerationConfig.from_pretrained(tiny_t5_dir)
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (0, 1, 0)
    # Flan-T5's lm_head is its own tensor beside the shared embedding, and stays so when loaded
    from safetensors import safe_open
    from transformers import Blip2ForConditionalGeneration

    with safe_open(str(Path(tiny_t5_dir) / "model.safetensors"), "pt") as f:
        assert {"language_model.lm_head.weight", "language_model.shared.weight"} <= set(f.keys())
    lm = Blip2ForConditionalGeneration.from_pretrained(tiny_t5_dir).language_model
    assert lm.lm_head.weight is not lm.shared.weight and not lm.config.scale_decoder_outputs
    card = json.loads((Path(tiny_t5_dir) / "card.json").read_text())
    assert card["family"] == "t5" and "blip2-flan-t5-xl" in card["what"]
    assert card["caption_accuracy"] >= 80, card


@module_fixture
def t5_model(tiny_t5_dir):
    from src.modeling import load_blip2

    return load_blip2(tiny_t5_dir, quantization="none", device="cpu")


def _one_at_a_time(model, processor, image, prompt, decoding):
    enc = processor(images=[image], text=[prompt], return_tensors="pt")
    out = model.generate(**enc, **decoding)  # Blip2ForConditionalGeneration.generate: the decoder's tokens
    return processor.tokenizer.decode(out[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("decoding_name", ["greedy", "vqa_beam5", "vqa_beam5_t5"])
def test_t5_batched_generation_equals_one_at_a_time(t5_model, decoding_name):
    from src.images import load_image
    from src.inference import generate_for_images
    from src.prompts import format_prompt, get_decoding

    model, processor = t5_model
    assert processor.tokenizer.padding_side == "right"
    images = [load_image(REPO / f"baseline_images/pic_{i:02d}.jpg") for i in range(1, 11)]
    prompts = [format_prompt("vqa_t5", q) for q in QUESTIONS]  # different lengths: real padding
    decoding = get_decoding(decoding_name)
    single = [_one_at_a_time(model, processor, img, p, decoding) for img, p in zip(images, prompts)]
    assert generate_for_images(model, processor, images, prompts, decoding, batch_size=10) == single
    assert all(single) and len(set(single)) > 1, single
    shared = generate_for_images(model, processor, [images[0]] * 10, prompts, decoding, batch_size=10)
    assert shared == [_one_at_a_time(model, processor, images[0], p, decoding) for p in prompts]


# LAVIS blip2_t5.predict_answers: t5_model.generate(inputs_embeds=..., attention_mask=..., do_sample=False,
# num_beams=5, max_new_tokens=10, min_length=1, length_penalty=-1) (its other arguments are generate's defaults)
LAVIS_T5_CALL = dict(do_sample=False, num_beams=5, max_new_tokens=10, min_length=1, length_penalty=-1.0)


def _recording(lm, seen: list):
    """A replacement for lm's _get_logits_processor that records the generation config and logits processors
    each generate() call builds."""
    real = type(lm)._get_logits_processor

    def record(self, generation_config, *args, **kwargs):
        processors = real(self, generation_config, *args, **kwargs)
        described = [(type(p).__name__, {k: v.tolist() if hasattr(v, "tolist") else v for k, v in vars(p).items()
                                         if k != "device"}) for p in processors]
        seen.append((generation_config.to_diff_dict(), described))
        return processors

    return record


def test_t5_preset_builds_what_lavis_call_builds_and_may_answer_empty(t5_model, monkeypatch):
    """The Flan-T5 preset (vqa_beam5_t5) gives generate the generation config and logits processors LAVIS's call
    builds on the same model, and the same answers; with `</s>` made the first step's best token it answers ""
    as LAVIS does, where vqa_beam5 (min_new_tokens=1, the stricter alternative) cannot."""
    from src.images import load_image
    from src.inference import generate_for_images
    from src.modeling import blip2_core
    from src.prompts import format_prompt, get_decoding

    model, processor = t5_model
    lm = blip2_core(model).language_model
    images = [load_image(REPO / f"baseline_images/pic_{i:02d}.jpg") for i in range(1, 5)]
    prompts = [format_prompt("vqa_t5", q) for q in QUESTIONS[:4]]
    assert resolve("decoding", "auto", T5, "m") == "vqa_beam5_t5"
    seen: list = []
    monkeypatch.setattr(type(lm), "_get_logits_processor", _recording(lm, seen))
    ours = generate_for_images(model, processor, images, prompts, get_decoding("vqa_beam5_t5"), batch_size=4)
    lavis = [_one_at_a_time(model, processor, img, p, LAVIS_T5_CALL) for img, p in zip(images, prompts)]
    assert ours == lavis and all(ours), (ours, lavis)
    assert len(seen) == 5 and all(s == seen[0] for s in seen[1:]) and seen[0][1], seen
    assert any(name == "MinLengthLogitsProcessor" for name, _ in seen[0][1])

    def eos_first(module, args, output):  # the decoder's first step of each generate() call favours </s>
        calls.append(1)
        if len(calls) == 1:
            output[..., processor.tokenizer.eos_token_id] += 1e4
        return output

    for preset, empty in (("vqa_beam5_t5", True), ("vqa_beam5", False)):
        calls: list = []
        hook = lm.lm_head.register_forward_hook(eos_first)
        got = generate_for_images(model, processor, images[:1], prompts[:1], get_decoding(preset), batch_size=1)
        calls.clear()
        lavis = _one_at_a_time(model, processor, images[0], prompts[0], LAVIS_T5_CALL)
        hook.remove()
        assert (got == [""]) == empty and lavis == "" and (got[0] == lavis) == empty, (preset, got, lavis)


def test_t5_padded_training_batch_has_the_loss_of_each_example_alone(t5_model):
    """Right padding and -100 label padding change nothing: the batch's summed token loss equals the sum
    of the examples' losses computed one at a time."""
    import torch

    from src.images import load_image
    from src.prompts import format_prompt
    from src.training import collate_examples, encode_example

    model, processor = t5_model
    tok, cfg = processor.tokenizer, model.config
    pairs = [("What is in the image?", "a red circle"), ("what?", "no"), ("What color is the shape on the left?", "teal")]
    encoded = [encode_example(tok, format_prompt("vqa_t5", q), a, tok.eos_token_id, T5) for q, a in pairs]
    images = [load_image(REPO / f"baseline_images/pic_{i:02d}.jpg") for i in (1, 2, 3)]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def summed_loss(idx):
        ids, mask, labels = collate_examples(tok, cfg.num_query_tokens, cfg.image_token_id, [encoded[i] for i in idx], T5)
        with torch.no_grad():
            logits = model(pixel_values=pixels[idx], input_ids=ids, attention_mask=mask, labels=labels).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")

    alone = sum(summed_loss([i]) for i in range(3))
    torch.testing.assert_close(summed_loss([0, 1, 2]), alone, rtol=1e-4, atol=1e-4)


# --- the quick start's chain on the Flan-T5 twin ---------------------------------------------------------

T5_HEADING = "## Flan-T5 孪生上的同一流程"  # in docs/checkpoints.md
T5_DOC = REPO / "docs" / "checkpoints.md"
T5_TWIN = "outputs/tiny-blip2-t5"


def _readme_setting(script: str, name: str) -> int:
    cmd = next(c for c in readme_commands(T5_HEADING, T5_DOC) if script in c)
    return int(re.search(rf"--{name}=(\d+)", cmd).group(1))


@module_fixture
def t5_chain(tiny_t5_dir, tmp_path_factory):
    """The Flan-T5 twin block of docs/checkpoints.md, command by command as written, in a fresh copy of the repository (the
    twin this session built is put where its first command builds it): build, baseline, QLoRA (4-bit),
    evaluation, comparison."""
    repo = fresh_copy(tmp_path_factory.mktemp("t5chain") / "repo")
    shutil.copytree(tiny_t5_dir, repo / T5_TWIN)
    runs = {}
    for cmd in readme_commands(T5_HEADING, T5_DOC):
        proc = run_command(cmd, cwd=repo)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        runs[cmd.split()[1] if cmd.split()[1] != "-m" else cmd.split()[2]] = proc
    out = repo / "outputs" / "t5"
    return {"repo": repo, "out": out, "model": str(repo / T5_TWIN), "runs": runs,
            "eval_n": _readme_setting("create_vqav2_baseline.py", "max_samples")}


def test_the_readme_t5_block_runs_as_written(t5_chain):
    commands = readme_commands(T5_HEADING, T5_DOC)
    assert commands[0] == f"python -m twin {T5_TWIN} --family=t5" and "reusing it" in t5_chain["runs"]["twin"].stdout
    assert [c.split()[1] for c in commands[1:]] == ["create_vqav2_baseline.py", "finetune_vqav2_lora.py",
                                                   "evaluate_vqav2_finetuned.py", "compare_baseline_finetuned.py"]
    quick = {c.split()[1]: c for c in readme_commands(QUICKSTART_HEADING)}
    for cmd in commands[1:4]:  # the OPT quick start's settings, the T5 twin and its own output folder
        script = cmd.split()[1]
        assert cmd == quick[script].replace("outputs/tiny-blip2", T5_TWIN) + " --output_dir=outputs/t5", cmd


def test_t5_fine_tuning_learns_to_read_the_image(t5_chain):
    """The OPT twin's grounding checks: colour >= 85%, shape >= 55%, >= 95% one-word answers after
    QLoRA, and the same adapter on shuffled images falls to chance on colour (<= 35%)."""
    from src.prompts import get_decoding
    from twin_story import accuracy_by_kind, one_word_share, shuffled_image_control

    out = t5_chain["out"]
    base_rows, ft_rows = rows_of(out / "vqav2_baseline.jsonl"), rows_of(out / "vqav2_finetuned.jsonl")
    base, ft = accuracy_by_kind(base_rows), accuracy_by_kind(ft_rows)
    in_repo = [{**r, "image_path": str(t5_chain["repo"] / r["image_path"])} for r in ft_rows]  # paths are the copy's
    for r in base_rows + ft_rows:
        assert r["prompt"] == "vqa_t5" and r["decoding"]["preset"] == "vqa_beam5_t5" and r["quantization"] == "4bit"
    assert ft["colour"]["n"] >= 30 and ft["shape"]["n"] >= 30, ft
    assert ft["colour"]["accuracy"] >= 85, (base, ft)
    assert ft["shape"]["accuracy"] >= 55, (base, ft)
    assert ft["overall"]["accuracy"] >= base["overall"]["accuracy"] + 30, (base, ft)
    assert one_word_share(ft_rows) >= 95
    model, processor = load_tuned(t5_chain["model"], "4bit", str(out / "lora_adapter"))
    control = shuffled_image_control(model, processor, in_repo, "vqa_t5", get_decoding("vqa_beam5_t5"))
    assert control["accuracy"] <= 35, control
    assert control["answers_naming_the_shown_colour"] >= 60, control
    config = json.loads((out / "lora_adapter" / "training_config.json").read_text())
    assert config["vqa_prompt"] == "vqa_t5" and config["target_modules"] == list(T5.lora_targets)
    adapter = json.loads((out / "lora_adapter" / "adapter_config.json").read_text())
    assert all(f"|{name})" in adapter["target_modules"] or f"({name}|" in adapter["target_modules"]
               or f"|{name}|" in adapter["target_modules"] for name in T5.lora_targets), adapter["target_modules"]
    assert "mixed precision: no" in t5_chain["runs"]["finetune_vqav2_lora.py"].stdout  # CPU


def test_t5_comparison_report(t5_chain):
    from html.parser import HTMLParser

    from src.vqa_eval import score_rows

    out = t5_chain["out"]
    data = json.loads((out / "comparisons" / "comparison.json").read_text())
    assert data["n"] == t5_chain["eval_n"] and data["mode"] == "comparison"
    for key, run in (("baseline", "vqav2_baseline"), ("finetuned", "vqav2_finetuned")):
        assert data[key]["vqa_accuracy"] == score_rows(rows_of(out / f"{run}.jsonl"))["vqa_accuracy"]
    HTMLParser().feed((out / "comparisons" / "report.html").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_t5_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    """On the random-weight Flan-T5 twin, as the data-parallel test below: two runs of one model are compared (4-bit,
    the default; killed after step 3, resumed from the checkpoint of step 2 for four more steps with accumulation)."""
    import torch
    from safetensors.torch import load_file

    args = ["finetune_vqav2_lora.py", f"--model_id={random_twin('t5')}", "--dataset=easy_vqa", "--train_steps=6",
            "--per_device_batch=4", "--grad_accum=2", "--lr=3e-3", "--warmup_steps=2", "--save_every=2",
            "--preview_samples=0"]
    run_script(*args, f"--output_dir={tmp_path / 'full'}", check=True)
    out = tmp_path / "killed"
    proc = start_script(*args, f"--output_dir={out}", kill_at=("src.files:JsonlAppender.write", 3), hook_dir=tmp_path)
    assert killed_at_marker(proc)
    proc = run_script(*args, f"--output_dir={out}", check=True)
    assert "resumed from" in proc.stdout and "steps: 6 (from 2)" in proc.stdout
    a = load_file(str(tmp_path / "full" / "lora_adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "lora_adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(".encoder.block." in k for k in a) and any(".decoder.block." in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_t5_two_processes_train_and_evaluate_data_parallel(tmp_path):
    from helpers import launch_data_parallel

    common = [f"--model_id={random_twin('t5')}", "--dataset=easy_vqa", f"--output_dir={tmp_path}", "--num_workers=0"]
    log = launch_data_parallel("create_vqav2_baseline.py", *common, "--max_samples=16", "--eval_batch=4")
    counts = json.loads(log.split("questions answered per process: ")[1].splitlines()[0])
    assert len(counts) == 2 and sum(counts) == 16
    log = launch_data_parallel("finetune_vqav2_lora.py", *common, "--train_steps=4", "--per_device_batch=4",
                               "--grad_accum=1", "--save_every=2", "--lr=3e-3", "--warmup_steps=1", "--preview_samples=0")
    assert "x 2 process(es) = 8 per step" in log and "LoRA weights identical on all 2 processes" in log
    launch_data_parallel("evaluate_vqav2_finetuned.py", *common, "--eval_batch=4")
    frozen = json.loads((tmp_path / "vqav2_sample_ids.json").read_text())["question_ids"]
    for run in ("vqav2_baseline", "vqav2_finetuned"):
        rows = rows_of(tmp_path / f"{run}.jsonl")
        assert [r["question_id"] for r in rows] == frozen and all(r["prompt"] == "vqa_t5" for r in rows)


# --- every other script on the T5 twin, and the one-line refusals ---------------------------------------

def test_t5_mini_infer_create_baseline_and_cli(tiny_t5_dir, tmp_path):
    proc = run_script("mini_infer.py", f"--model_id={tiny_t5_dir}", "--quantization=4bit", f"--output_dir={tmp_path}",
                      check=True)
    saved = json.loads((tmp_path / "mini_infer.json").read_text())
    assert saved["result"]["caption"] and saved["result"]["answer"] and saved["result"]["prompt"] == "vqa_t5"
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert lines["caption"].strip() == saved["result"]["caption"] and lines["answer"].strip() == saved["result"]["answer"]
    # transformers' warning that the checkpoint holds lm_head beside the shared embedding (right for Flan-T5) is not shown
    assert "NOT tie them" not in proc.stdout + proc.stderr
    run_script("create_baseline.py", f"--model_id={tiny_t5_dir}", "--quantization=none", f"--output_dir={tmp_path}",
               check=True)
    rows = rows_of(tmp_path / "baseline.jsonl")
    assert len(rows) == 10 and all(r["caption"] and r["answer"] and r["prompt"] == "vqa_t5" for r in rows)
    proc = run_script("blip2_cli.py", "baseline_images", "--question", "What is in the image?", "--model_id",
                      tiny_t5_dir, "--quantization", "none", "--json", check=True)
    cli = json.loads(proc.stdout)
    assert [r["answer"] for r in cli] == [r["answer"] for r in rows]  # the same model, prompt and preset


def test_t5_demo_answers_like_src_inference(t5_model):
    from src.demo_app import make_answer_fn
    from src.images import load_image
    from src.inference import caption_and_answer

    model, processor = t5_model
    generation = dict(vqa_prompt="vqa_t5", vqa_decoding="vqa_beam5_t5", caption_prompt="caption",
                      caption_decoding="caption_beam5")
    picture = REPO / "baseline_images" / "pic_01.jpg"
    ref = caption_and_answer(model, processor, [load_image(picture)], "What is in the image?", **generation)[0]
    caption, answer, _, _, status = make_answer_fn(model, processor, adapter_available=False, max_upload_mb=10,
                                                   lang="en", **generation)(str(picture), "What is in the image?")
    assert (caption, answer) == (ref["caption"], ref["answer"]) and caption and answer, status


def test_an_adapter_of_the_other_family_is_refused_in_one_line(tiny_model_dir, tiny_t5_dir, tmp_path):
    """Said before the model loads (in this process: tests/helpers.py's run_in_process)."""
    opt_adapter = random_adapter(tiny_model_dir, tmp_path / "opt", ("q_proj", "v_proj"))
    t5_adapter = random_adapter(tiny_t5_dir, tmp_path / "t5", ("q", "v"))
    proc = run_in_process("mini_infer.py", f"--model_id={tiny_t5_dir}", "--quantization=none",
                          f"--adapter_dir={opt_adapter}", f"--output_dir={tmp_path / 'o1'}")
    assert_one_line_error(proc, "BLIP-2 on OPT (decoder-only)", "BLIP-2 on Flan-T5 (encoder-decoder)")
    proc2 = run_in_process("blip2_cli.py", "baseline_images/pic_01.jpg", "--model_id", tiny_model_dir, "--quantization",
                           "none", "--adapter_dir", str(t5_adapter))
    assert_one_line_error(proc2, "BLIP-2 on Flan-T5 (encoder-decoder)", "the model is BLIP-2 on OPT")
    assert not (tmp_path / "o1" / "mini_infer.json").exists()
    assert not any("MODEL LOAD STARTED" in p.stderr for p in (proc, proc2))


@pytest.mark.parametrize("args,fragment", [
    (["--vqa_prompt=vqa_opt"], "--vqa_prompt=vqa_t5"),
    (["--vqa_decoding=vqa_lavis"], "--vqa_decoding=vqa_beam5_t5"),
])
def test_a_prompt_or_preset_of_the_other_family_is_one_line(tiny_t5_dir, tmp_path, args, fragment):
    """Said before the model loads (in this process: tests/helpers.py's run_in_process)."""
    proc = run_in_process("create_vqav2_baseline.py", f"--model_id={tiny_t5_dir}", "--dataset=tiny",
                          "--quantization=none", f"--output_dir={tmp_path}", *args)
    assert_one_line_error(proc, "Flan-T5 (encoder-decoder)", fragment)
    assert not (tmp_path / "vqav2_baseline.jsonl").exists()
    proc2 = run_in_process("inference_demo.py", f"--model_id={tiny_t5_dir}", "--quantization=none", "--port=7798",
                           *args)
    assert_one_line_error(proc2, "Flan-T5 (encoder-decoder)", fragment)
    proc3 = run_in_process("finetune_vqav2_lora.py", f"--model_id={tiny_t5_dir}", "--dataset=easy_vqa",
                           f"--output_dir={tmp_path / 'ft'}", "--vqa_prompt=vqa_opt")
    assert_one_line_error(proc3, "--vqa_prompt=vqa_t5")
    assert not any("MODEL LOAD STARTED" in p.stderr for p in (proc, proc2, proc3))


@pytest.mark.slow
def test_t5_twin_builds_from_the_command_line(tmp_path):
    proc = run_script("-m", "twin", str(tmp_path / "t5"), "--family=t5", "--pretrain_steps=0", check=True)
    assert "saved to" in proc.stdout
    config = json.loads((tmp_path / "t5" / "config.json").read_text())
    assert config["text_config"]["model_type"] == "t5"


def test_a_flan_t5_hub_id_seen_the_first_time_gets_its_own_prompt(tiny_t5_dir, tmp_path):
    """The family of an unknown hub id is known only once its config is downloaded (the first run resolves
    "auto" after the load); the second run reads it from the cache, and a mismatched prompt is then refused
    before the model loads. The twin is served by a real HTTP server answering like the hub."""
    from hub_server import HubServer
    from test_model_download import hub_env

    repo = tmp_path / "served"
    shutil.copytree(tiny_t5_dir, repo)
    with HubServer({}, models={"someone/tiny-blip2-t5": repo}) as hub:
        env = hub_env(hub, tmp_path / "hf")
        args = ["mini_infer.py", "--model_id=someone/tiny-blip2-t5", "--quantization=none"]
        run_script(*args, f"--output_dir={tmp_path / 'a'}", env=env, check=True)
        saved = json.loads((tmp_path / "a" / "mini_infer.json").read_text())
        assert saved["result"]["prompt"] == "vqa_t5" and saved["config"]["vqa_prompt"] == "vqa_t5"
        proc = run_script(*args, "--vqa_prompt=vqa_opt", f"--output_dir={tmp_path / 'b'}", env=env)
        assert_one_line_error(proc, "someone/tiny-blip2-t5 is BLIP-2 on Flan-T5", "--vqa_prompt=vqa_t5")


def test_a_t5_adapter_merged_answers_as_base_plus_adapter(tiny_t5_dir, tmp_path):
    from src.images import load_image
    from src.inference import caption_and_answer
    from src.modeling import load_blip2

    adapter = random_adapter(tiny_t5_dir, tmp_path / "adapter", ("q", "v", "wo"))
    run_script("merge_lora_adapter.py", f"--model_id={tiny_t5_dir}", f"--adapter_dir={adapter}", "--dequantize=no",
               f"--merged_dir={tmp_path / 'merged'}", "--merge_dtype=float32", f"--output_dir={tmp_path}", check=True)
    generation = dict(vqa_prompt="vqa_t5", vqa_decoding="vqa_beam5_t5", caption_prompt="caption",
                      caption_decoding="caption_beam5")
    images = [load_image(REPO / f"baseline_images/pic_0{i}.jpg") for i in (1, 2, 3)]
    tuned = caption_and_answer(*load_tuned(tiny_t5_dir, "none", str(adapter)), images, "What is in the image?",
                               **generation)
    merged = caption_and_answer(*load_blip2(str(tmp_path / "merged"), "none"), images, "What is in the image?", **generation)
    base = caption_and_answer(*load_blip2(tiny_t5_dir, "none"), images, "What is in the image?", **generation)
    assert merged == tuned != base
