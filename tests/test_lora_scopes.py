"""Where the LoRA goes (LORA_SCOPE): the language model, the Q-Former with its projection, or both, on the OPT and
the Flan-T5 twin. Per scope the trainable parameters are exactly those of the expected layers (found here from the
model's own module names), the memory plan counts what training reports, an adapter fits its own family and the
other family refuses it in one line; in the full tier the two scopes beyond the default fine-tune on the OPT
twin, and "both" on the Flan-T5 twin (gradients reach every adapted layer), change the answers, evaluate, and merge
into a model that answers as base + adapter (the default scope, language_model, is what every other fine-tuning
test trains, test_merge.py's merges included), and a 4-bit "both" adapter merges onto the NF4-dequantised language
model and the plain Q-Former."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.memory_plan import format_plan, plan_memory
from helpers import (REPO, assert_one_line_error, module_fixture, random_adapter, random_twin, run_in_process,
                     run_script, script_lora)

SCOPES = ("language_model", "qformer", "both")
QUESTIONS = 16  # the frozen easy-VQA sample each family's scopes are evaluated on
TRAIN = ["--dataset=easy_vqa", "--train_steps=4", "--per_device_batch=8", "--grad_accum=1", "--lr=1e-2",
         "--warmup_steps=1", "--save_every=1000", "--preview_samples=0", "--num_workers=0"]


def expected_layers(model, scope: str) -> set[str]:
    """The layers a scope adapts, from the model's module names alone: every Linear of the language model but its
    output head, and every Linear of the Q-Former plus the projection into the language model."""
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lm = {n for n in linears if n.startswith("language_model.") and n != "language_model.lm_head"}
    qformer = {n for n in linears if n.startswith("qformer.")} | {"language_projection"}
    return {"language_model": lm, "qformer": qformer, "both": lm | qformer}[scope]


def scope_adapter(model_dir: str, folder: Path, scope: str, family: str) -> Path:
    """An adapter of `scope` with random weights, saved with the training config the fine-tuning script writes
    beside it (the family it records is what tells a Q-Former adapter's family)."""
    random_adapter(model_dir, folder, ("auto",), scope)
    (folder / "training_config.json").write_text(json.dumps({"model_id": model_dir, "use_4bit": False,
                                                             "lora_scope": scope, "family": family}))
    return folder


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["opt", "t5"])
def test_each_scope_trains_exactly_its_layers_and_the_memory_plan_counts_them(family, scope):
    from transformers import Blip2ForConditionalGeneration

    from src.training import LoraSettings, add_lora

    folder = random_twin(family)  # the twin's layers, without waiting for its pre-training
    lora = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("auto",), scope=scope)
    base = Blip2ForConditionalGeneration.from_pretrained(folder)
    layers = expected_layers(base, scope)
    model = add_lora(base, lora, gradient_checkpointing=False)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {f"base_model.model.{layer}.lora_{ab}.default.weight" for layer in layers for ab in "AB"}
    assert ("language_projection" in layers) == (scope != "language_model")
    assert any(n.startswith("qformer.") for n in layers) == (scope != "language_model")
    assert any(n.startswith("language_model.") for n in layers) == (scope != "qformer")
    plan = plan_memory(folder, lora=lora, compute_dtype="float32")["lora"]
    assert (plan["params"], plan["modules"]) == (sum(trainable.values()), len(layers))
    assert plan["parts"] == sorted({layer.split(".")[0] for layer in layers})


@pytest.mark.parametrize("scope", SCOPES)
def test_a_scope_adapter_fits_its_family_and_the_other_family_refuses_it_in_one_line(scope, tiny_model_dir,
                                                                                     tiny_t5_dir, tmp_path):
    """The twins' Q-Former and projection have the same shapes in both families, so a Q-Former adapter's family
    is the one its training config records."""
    from src.preflight import adapter_mismatch, check_adapter_dir
    from transformers import Blip2ForConditionalGeneration

    dirs = {"opt": tiny_model_dir, "t5": tiny_t5_dir}
    titles = {"opt": "BLIP-2 on OPT (decoder-only)", "t5": "BLIP-2 on Flan-T5 (encoder-decoder)"}
    for family, other in (("opt", "t5"), ("t5", "opt")):
        adapter = scope_adapter(dirs[family], tmp_path / family, scope, family)
        check_adapter_dir(adapter, dirs[family])
        assert adapter_mismatch(Blip2ForConditionalGeneration.from_pretrained(dirs[family]), adapter) is None
        proc = run_in_process("mini_infer.py", f"--model_id={dirs[other]}", "--quantization=none",
                              f"--adapter_dir={adapter}", f"--output_dir={tmp_path / 'out'}")
        assert_one_line_error(proc, f"it adapts {titles[family]}", f"the model is {titles[other]}")
        assert "MODEL LOAD STARTED" not in proc.stderr  # refused before the model loads


# --- full tier: the scopes beyond the default fine-tune, evaluate and merge on both twins ------------------------

def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@module_fixture
def opt_scopes(tiny_model_dir, tmp_path_factory):
    """The scopes beyond the default: language_model is trained, evaluated and merged by the other tests."""
    return scope_runs(tiny_model_dir, tmp_path_factory.mktemp("opt-scopes"), "opt", ("qformer", "both"))


@module_fixture
def t5_scopes(tiny_t5_dir, tmp_path_factory):
    """On Flan-T5 only what differs by family: "both" adapts the Q-Former and projection as on OPT and the T5 layers
    of the language model (each scope's T5 layer names are checked without training, above)."""
    return scope_runs(tiny_t5_dir, tmp_path_factory.mktemp("t5-scopes"), "t5", ("both",))


def scope_runs(model: str, out: Path, family: str, scopes: tuple[str, ...]) -> dict:
    """A zero-shot baseline on a frozen sample, then per scope: fine-tuning (unquantised, a few steps), the
    evaluation of its adapter on that sample and a float32 merge. One run per scope serves every check below:
    the adapter's layers, the moved lora_B, the changed answers, the banner's count and the merge's answers."""
    run_script("create_vqav2_baseline.py", f"--model_id={model}", "--dataset=easy_vqa", f"--max_samples={QUESTIONS}",
               "--quantization=none", "--num_workers=0", f"--output_dir={out}", check=True)
    runs = {}
    for scope in scopes:
        train = run_script("finetune_vqav2_lora.py", f"--model_id={model}", *TRAIN, "--use_4bit=False",
                           f"--lora_scope={scope}", f"--output_dir={out / scope}", check=True)
        adapter = out / scope / "lora_adapter"
        evaluate = run_script("evaluate_vqav2_finetuned.py", f"--model_id={model}", "--dataset=easy_vqa",
                              "--quantization=none", f"--adapter_dir={adapter}", f"--run_name=finetuned_{scope}",
                              "--num_workers=0", f"--output_dir={out}", check=True)
        merge = run_script("merge_lora_adapter.py", f"--model_id={model}", f"--adapter_dir={adapter}",
                           f"--merged_dir={out / scope / 'merged'}", "--merge_dtype=float32", "--device=cpu", check=True)
        runs[scope] = {"train": train, "evaluate": evaluate, "merge": merge, "adapter": adapter,
                       "merged": out / scope / "merged", "rows": rows_of(out / f"finetuned_{scope}.jsonl")}
    return {"model": model, "family": family, "baseline": rows_of(out / "vqav2_baseline.jsonl"), "runs": runs}


@pytest.fixture(params=["opt", "t5"])
def scopes(request, opt_scopes, t5_scopes):
    """Both families' runs named here, not fetched by name, so that conftest sees the module fixtures and keeps these
    tests on the module's one worker (each run made once)."""
    return {"opt": opt_scopes, "t5": t5_scopes}[request.param]


def test_each_scope_fine_tunes_every_adapted_layer_and_changes_the_answers(scopes):
    from safetensors.torch import load_file
    from transformers import Blip2ForConditionalGeneration

    base = Blip2ForConditionalGeneration.from_pretrained(scopes["model"])
    zero_shot = {r["question_id"]: r["answer"] for r in scopes["baseline"]}
    for scope, run in scopes["runs"].items():
        config = json.loads((run["adapter"] / "training_config.json").read_text())
        assert (config["lora_scope"], config["family"]) == (scope, scopes["family"])
        weights = load_file(str(run["adapter"] / "adapter_model.safetensors"))
        layers = {k.removeprefix("base_model.model.").removesuffix(".lora_B.weight") for k in weights if "lora_B" in k}
        assert layers == expected_layers(base, scope), scope
        # lora_B starts at zero: every one moved, so gradients reached each adapted layer (the Q-Former's too)
        assert all(weights[k].abs().sum() > 0 for k in weights if "lora_B" in k), scope
        rows = run["rows"]
        assert len(rows) == QUESTIONS and {r["question_id"] for r in rows} == set(zero_shot)
        changed = sum(r["answer"] != zero_shot[r["question_id"]] for r in rows)
        assert changed >= QUESTIONS // 4, (scope, changed)


def test_the_training_banner_counts_what_the_memory_plan_counts(scopes):
    """The table `python -m bench.memory_plan` prints for the model and scope, and the trainable parameters peft
    reports in training: one number."""
    import dataclasses
    import re

    for scope, run in scopes["runs"].items():
        out = run["train"].stdout
        lora = dataclasses.replace(script_lora(), scope=scope)
        table = format_plan(plan_memory(scopes["model"], lora=lora, compute_dtype="float32"), "none")
        planned = re.search(r"LoRA r=16 on (\d+) Linear modules .*?: ([\d,]+) params;", table)
        trained = re.search(r"trainable parameters: ([\d,]+) of", out)
        wrapped = re.search(r"LoRA r=16 alpha=32 dropout=[\d.]+ on (\d+) modules", out)
        assert planned and trained and wrapped, out[-3000:]
        assert planned.group(2) == trained.group(1) and planned.group(1) == wrapped.group(1), scope


def test_each_scope_merges_into_a_model_that_answers_as_base_plus_adapter(scopes):
    """The float32 merge of an unquantised adapter answers the frozen sample exactly as the evaluation of
    base + adapter did, and loads without peft's wrappers."""
    from src.images import load_image
    from src.inference import generate_batch
    from src.modeling import load_blip2
    from src.prompts import format_prompt, get_decoding

    rows = scopes["baseline"]
    for scope, run in scopes["runs"].items():
        model, processor = load_blip2(str(run["merged"]), "none", device="cpu")
        assert not any("lora" in name for name, _ in model.named_parameters())
        images = [load_image(REPO / r["image_path"]) for r in rows]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        got = generate_batch(model, processor, pixels, [format_prompt(r["prompt"], r["question"]) for r in rows],
                             get_decoding(rows[0]["decoding"]["preset"]))
        expected = {r["question_id"]: r["raw_answer"] for r in run["rows"]}
        assert got == [expected[r["question_id"]] for r in rows], scope
        assert "unquantised" in run["merge"].stdout and "merged in float32, saved in float32" in run["merge"].stdout


def test_a_4bit_both_adapter_merges_onto_the_dequantised_language_model_and_the_plain_qformer(tiny_model_dir,
                                                                                             tmp_path):
    """QLoRA with LORA_SCOPE=both: the merge adds B @ A to the NF4 round trip of each quantised language-model
    weight and to the plain Q-Former and projection weights (never quantised); nothing else moves."""
    from safetensors.torch import load_file
    from test_merge import QUANTISED, lora_updates, nf4_round_trip

    out = tmp_path / "both4"
    # one step at full learning rate (a 4-bit step is slow on a CPU; a warm-up step's rate is 0 and moves nothing)
    one_step = [a for a in TRAIN if not a.startswith(("--train_steps", "--per_device_batch", "--warmup_steps"))]
    run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", *one_step, "--train_steps=1",
               "--per_device_batch=2", "--warmup_steps=0", "--lora_scope=both", f"--output_dir={out}", check=True)
    merged = out / "merged"
    proc = run_script("merge_lora_adapter.py", f"--model_id={tiny_model_dir}", f"--adapter_dir={out / 'lora_adapter'}",
                      f"--merged_dir={merged}", "--merge_dtype=float32", "--device=cpu", check=True)
    assert "4-bit NF4 from float32, dequantised" in proc.stdout
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    saved = load_file(str(merged / "model.safetensors"))
    updates = lora_updates(out / "lora_adapter")
    assert any(n.startswith("qformer.") for n in updates) and "language_projection.weight" in updates
    assert any(QUANTISED.match(n) for n in updates)
    assert all(u.abs().sum() > 0 for u in updates.values())  # B left zero: the merge would move nothing
    assert saved.keys() == base.keys()
    for name, w in base.items():
        w = nf4_round_trip(w) if QUANTISED.match(name) else w.float()
        expected = w + updates.get(name, torch.zeros_like(w))
        torch.testing.assert_close(saved[name], expected, rtol=1e-6, atol=1e-6, msg=name)


def test_a_run_resumed_with_another_scope_is_refused_in_one_line(opt_scopes, tmp_path):
    """The qformer run's checkpoint (same folder) is not resumed by a run with --lora_scope=both."""
    folder = opt_scopes["runs"]["qformer"]["adapter"].parent
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={opt_scopes['model']}", *TRAIN, "--use_4bit=False",
                      "--lora_scope=both", f"--output_dir={folder}")
    assert_one_line_error(proc, "lora_scope='qformer'", "lora_scope='both'", "different settings")
