"""The memory planner against real instantiations: parameter counts, bitsandbytes storage, peft LoRA counts."""

import dataclasses
import json
import math
import re

import pytest
import torch

from helpers import assert_one_line_error, module_fixture, run_script, script_lora
from src.modeling import QUANTIZATION_SKIP_MODULES
from src.memory_plan import ARCHITECTURE_JSON, held_bytes, load_blip2_config, nf4_weight_bytes, plan_memory

FULL_PARAMS = 3_744_761_856  # Salesforce/blip2-opt-2.7b with its 50,304-token vocabulary
LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$"


@module_fixture
def tiny_config(tiny_model_dir):
    from transformers import Blip2Config

    with open(f"{tiny_model_dir}/config.json", encoding="utf-8") as f:
        return Blip2Config(**json.load(f))


@module_fixture
def tiny_real_model(tiny_config):
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(0)
    return Blip2ForConditionalGeneration(tiny_config)  # real tensors on CPU


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_tiny_counts_equal_a_real_model(tiny_config, tiny_real_model):
    model = tiny_real_model
    decoder = model.language_model.model.decoder
    assert model.language_model.lm_head.weight is decoder.embed_tokens.weight  # tied: one tensor
    expected = {
        "vision_model": _numel(model.vision_model),
        "query_tokens": model.query_tokens.numel(),
        "qformer": _numel(model.qformer),
        "language_projection": _numel(model.language_projection),
        "language_model.embed_tokens": decoder.embed_tokens.weight.numel(),
        "language_model.embed_positions": _numel(decoder.embed_positions),
        "language_model.layers": _numel(decoder.layers),
        "language_model.final_norm_etc": _numel(model.language_model)
        - _numel(decoder.embed_tokens) - _numel(decoder.embed_positions) - _numel(decoder.layers),
    }
    plan = plan_memory(tiny_config, lora=script_lora())
    assert {k: v["params"] for k, v in plan["parts"].items()} == expected
    assert plan["total_params"] == sum(p.numel() for p in model.parameters()) == sum(expected.values())
    # 16/32-bit columns are params x bytes (fp16 upcasts the Q-Former and query tokens to fp32, as transformers does)
    assert plan["precisions"]["fp32"]["bytes"] == 4 * plan["total_params"]
    assert plan["precisions"]["bf16"]["bytes"] == 2 * plan["total_params"]
    upcast = expected["qformer"] + expected["query_tokens"]
    assert plan["precisions"]["fp16"]["bytes"] == 2 * plan["total_params"] + 2 * upcast


@pytest.mark.parametrize("shape", [(300, 257), (2560, 640)])
def test_nf4_bytes_equal_bitsandbytes_storage(shape):
    bnb = pytest.importorskip("bitsandbytes")
    out_features, in_features = shape
    linear = torch.nn.Linear(in_features, out_features)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=True, compute_dtype=torch.bfloat16,
                              compress_statistics=True, quant_type="nf4")
    layer.load_state_dict(linear.state_dict())
    layer = layer.to("cpu")  # quantises
    state = layer.weight.quant_state
    stored = [layer.weight, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    actual = sum(t.numel() * t.element_size() for t in stored)
    assert state.blocksize == 64 and state.state2.blocksize == 256
    assert nf4_weight_bytes(out_features * in_features) == actual


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tiny_nf4_plan_equals_a_real_4bit_load(tiny_model_dir, dtype):
    """What transformers really quantises, keeps and upcasts, and the bytes it really holds."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, Blip2ForConditionalGeneration

    model = Blip2ForConditionalGeneration.from_pretrained(
        tiny_model_dir, dtype=dtype, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                               llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES),
    )
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    actual = held_bytes(model)

    plan = plan_memory(tiny_model_dir, lora=script_lora(), compute_dtype=str(dtype).removeprefix("torch."))
    assert plan["bnb"]["quantized_linears"] == sorted(quantized)
    assert plan["precisions"]["nf4"]["bytes"] == actual
    assert {"qformer", "lm_head", "vision_model", "language_projection"} <= set(plan["bnb"]["modules_to_not_convert"])
    assert quantized and all(n.startswith("language_model.model.decoder.layers.") for n in quantized)
    qformer_dtype = torch.float32 if dtype == torch.float16 else dtype
    assert model.qformer.layernorm.weight.dtype == qformer_dtype and model.query_tokens.dtype == qformer_dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="LLM.int8 and the GPU load path need CUDA")
@pytest.mark.parametrize("quantization", ["8bit", "4bit", "none"])
def test_tiny_plan_equals_a_real_cuda_load(tiny_model_dir, quantization):
    bnb = pytest.importorskip("bitsandbytes")
    from src.modeling import load_blip2

    model, _ = load_blip2(tiny_model_dir, quantization=quantization, device="cuda")
    plan = plan_memory(tiny_model_dir, lora=script_lora(), compute_dtype=str(model.dtype).removeprefix("torch."))
    layer = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit, "none": ()}[quantization]
    quantized = sorted(n for n, m in model.named_modules() if layer and isinstance(m, layer))
    column = {"8bit": "int8", "4bit": "nf4", "none": {torch.bfloat16: "bf16", torch.float16: "fp16"}[model.dtype]}[quantization]
    assert quantized == (plan["bnb"]["quantized_linears"] if layer else [])
    assert held_bytes(model) == plan["precisions"][column]["bytes"]


@pytest.mark.slow
def test_full_parts_add_up_to_the_stated_total():
    plan = plan_memory(None, lora=script_lora())  # the shipped Salesforce/blip2-opt-2.7b architecture, on the meta device
    parts = {k: v["params"] for k, v in plan["parts"].items()}
    assert sum(parts.values()) == plan["total_params"] == FULL_PARAMS
    assert parts["language_model.embed_tokens"] == 50_304 * 2560  # the tied lm_head is not counted again
    assert parts["query_tokens"] == 32 * 768
    assert plan["precisions"]["bf16"]["bytes"] == 2 * FULL_PARAMS
    # host RAM while loading: the largest single tensor is the (tied) token embedding, 50,304 x 2,560
    assert plan["host_ram"]["largest_tensor_params"] == 50_304 * 2560
    assert plan["host_ram"]["largest_tensor"].endswith("embed_tokens.weight")
    # 32 OPT layers x r16 x (4 attention projections 2560->2560, fc1 2560->10240, fc2 10240->2560)
    assert plan["lora"]["params"] == 32 * 16 * (4 * (2560 + 2560) + 2 * (2560 + 10240)) == 23_592_960
    assert re.fullmatch(plan["lora"]["regex"], "language_model.model.decoder.layers.0.fc1")
    assert not re.fullmatch(plan["lora"]["regex"], "vision_model.encoder.layers.0.mlp.fc1")
    assert plan["lora"]["total_bytes"] == 16 * plan["lora"]["params"]
    # only the OPT decoder's Linear layers are quantised: not the ViT-g, the projection, the Q-Former or lm_head
    assert plan["bnb"]["quantized_linear_count"] == 32 * 6
    assert plan["parts"]["vision_model"]["bytes"]["nf4"] == plan["parts"]["vision_model"]["bytes"]["bf16"]
    # on paper, QLoRA with batch 4 fits a 10 GB budget: weights + LoRA state leave > 5 GiB for activations
    assert plan["qlora_training"]["total_bytes"] < 4.5 * 1024**3
    assert plan["qlora_training"]["total_bytes"] == plan["precisions"]["nf4"]["bytes"] + plan["lora"]["total_bytes"]


def test_shipped_json_is_a_blip2_config():
    raw = json.loads(ARCHITECTURE_JSON.read_text())
    config = load_blip2_config("Salesforce/blip2-opt-2.7b")  # known id: the shipped file, no network
    assert config.text_config.vocab_size == raw["text_config"]["vocab_size"] == 50_304
    assert config.vision_config.num_hidden_layers == 39 and config.qformer_config.cross_attention_frequency == 2
    assert config.image_token_index == 50265 and config.text_config.tie_word_embeddings


def test_lora_count_equals_peft(tiny_config):
    from peft import LoraConfig, get_peft_model
    from transformers import Blip2ForConditionalGeneration

    plan = plan_memory(tiny_config, lora=dataclasses.replace(script_lora(), r=16))
    for regex in (LORA_REGEX, plan["lora"]["regex"]):  # the brief's regex and the one src.training hands to peft
        peft_model = get_peft_model(Blip2ForConditionalGeneration(tiny_config), LoraConfig(r=16, lora_alpha=32, target_modules=regex))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert plan["lora"]["params"] == trainable > 0
        wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
        assert plan["lora"]["modules"] == len(wrapped)


def test_the_fine_tuning_script_prints_the_table_alone(tiny_model_dir, tmp_path):
    """--memory_plan_only=True: the estimate for MODEL_ID with the script's LoRA, and nothing else (no data, no training)."""
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--lora_r=8", "--memory_plan_only=True",
                      "--dataset=vqav2", f"--data_dir={tmp_path / 'no-data'}", f"--output_dir={tmp_path / 'out'}",
                      check=True, timeout=120)
    assert "total" in proc.stdout and "LoRA r=8" in proc.stdout and "not estimated" in proc.stdout
    assert not (tmp_path / "out").exists()
    from safetensors import safe_open

    with safe_open(f"{tiny_model_dir}/model.safetensors", "pt") as f:  # the twin's checkpoint, header only
        largest = max(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert "host RAM while loading" in proc.stdout and f"({largest:,} params" in proc.stdout
    proc = run_script("finetune_vqav2_lora.py", f"--model_id={tmp_path / 'nowhere'}", "--memory_plan_only=True")
    assert_one_line_error(proc, "nowhere", "pass a config.json, a model folder")
    assert "no memory estimate" not in proc.stdout
