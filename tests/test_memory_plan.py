"""The memory planner against real instantiations: parameter counts, bitsandbytes storage, peft LoRA counts."""

import dataclasses
import json
import math
import re

import pytest
import torch

from bench.memory_plan import bnb_details, format_plan, held_bytes, nf4_weight_bytes, plan_memory
from helpers import REPO, assert_one_line_error, module_fixture, run_script, script_lora
from src.family import OPT, T5, family_of
from src.modeling import DEFAULT_MODEL_ID, KNOWN_ARCHITECTURES, load_blip2_config

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
                                               llm_int8_skip_modules=list(OPT.quantization_skip)),
    )
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    actual = held_bytes(model)

    plan = plan_memory(tiny_model_dir, lora=script_lora(), compute_dtype=str(dtype).removeprefix("torch."))
    bnb = bnb_details(tiny_model_dir)
    assert bnb["quantized_linears"] == sorted(quantized)
    assert plan["precisions"]["nf4"]["bytes"] == actual
    assert {"qformer", "lm_head", "vision_model", "language_projection"} <= set(bnb["modules_to_not_convert"])
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
    assert quantized == (bnb_details(tiny_model_dir)["quantized_linears"] if layer else [])
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
    assert bnb_details(None)["quantized_linear_count"] == 32 * 6
    assert plan["parts"]["vision_model"]["bytes"]["nf4"] == plan["parts"]["vision_model"]["bytes"]["bf16"]
    # on paper, QLoRA with batch 4 fits a 10 GB budget: weights + LoRA state leave > 5 GiB for activations
    assert plan["qlora_training"]["total_bytes"] < 4.5 * 1024**3
    assert plan["qlora_training"]["total_bytes"] == plan["precisions"]["nf4"]["bytes"] + plan["lora"]["total_bytes"]


def test_shipped_json_is_a_blip2_config():
    raw = json.loads(KNOWN_ARCHITECTURES[DEFAULT_MODEL_ID].read_text())
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


RESULTS_MD = REPO / "bench" / "RESULTS.md"


def test_the_bench_prints_one_models_table(tiny_model_dir, tmp_path):
    """`python -m bench.memory_plan --model_id=...`: the estimate for that model with the fine-tuning script's LoRA
    (here r=8), and nothing else (no RESULTS.md section, no data, no training)."""
    results = RESULTS_MD.read_text(encoding="utf-8")
    proc = run_script("-m", "bench.memory_plan", f"--model_id={tiny_model_dir}", "--lora_r=8", check=True, timeout=120)
    assert "total" in proc.stdout and "LoRA r=8" in proc.stdout and "not estimated" in proc.stdout
    assert "Model card" not in proc.stdout and RESULTS_MD.read_text(encoding="utf-8") == results
    from safetensors import safe_open

    with safe_open(f"{tiny_model_dir}/model.safetensors", "pt") as f:  # the twin's checkpoint, header only
        largest = max(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert "host RAM while loading" in proc.stdout and f"({largest:,} params" in proc.stdout
    # the total row: the weights as the run loads them (4-bit by default; on CPU the rest in fp32), the LoRA it adds
    plan = plan_memory(tiny_model_dir, lora=dataclasses.replace(script_lora(), r=8), compute_dtype="float32")
    total = next(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("total"))
    assert total == [f"{plan['total_params']:,}", f"{plan['precisions']['nf4']['bytes'] / 2**20:.3f}",
                     f"{plan['lora']['params']:,}"]
    layers = next(line.split() for line in proc.stdout.splitlines() if line.startswith("LM layers"))
    assert layers[-1] == total[-1] != "0"  # every LoRA parameter is in the language model's layers
    unquantised = next(line.split() for line in format_plan(plan, "none").splitlines() if line.startswith("total"))
    assert unquantised[2] == f"{plan['precisions']['fp32']['bytes'] / 2**20:.3f}"  # --use_4bit=False on CPU
    proc = run_script("-m", "bench.memory_plan", f"--model_id={tmp_path / 'nowhere'}")
    assert_one_line_error(proc, "nowhere", "model folder not found")


# --- the four public checkpoints (shipped architectures) and the Flan-T5 language model ----------------

SHIPPED = {  # Hub id: (family, image_token_index, parameters as listed for the Hub model, to 3 figures)
    "Salesforce/blip2-opt-2.7b": ("opt", 50265, 3.74e9),
    "Salesforce/blip2-opt-6.7b": ("opt", 50265, 7.75e9),
    "Salesforce/blip2-flan-t5-xl": ("t5", 32100, 3.94e9),
    "Salesforce/blip2-flan-t5-xxl": ("t5", 32100, 12.2e9),
}


def expected_params(arch: dict) -> int:
    """BLIP-2's parameter count from its config.json by formula: ViT-g, Q-Former, query tokens, projection and
    the language model, the T5 lm_head counted apart from the shared embedding (Flan-T5 checkpoints store it)."""
    v, q, t = arch["vision_config"], arch["qformer_config"], arch["text_config"]
    h, i = v["hidden_size"], v["intermediate_size"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    vision = (3 * v["patch_size"] ** 2 * h + h) + h + (patches + 1) * h + 2 * h  # patch conv, CLS, positions, post-LN
    vision += v["num_hidden_layers"] * ((h * 3 * h + 3 * h) + (h * h + h) + 4 * h + (h * i + i) + (i * h + h))
    qh, qi, e = q["hidden_size"], q["intermediate_size"], q["encoder_hidden_size"]
    self_attn = 4 * (qh * qh + qh) + 2 * qh
    cross = 2 * (qh * qh + qh) + 2 * (e * qh + qh) + 2 * qh
    ffn = (qh * qi + qi) + (qi * qh + qh) + 2 * qh
    crossing = len(range(0, q["num_hidden_layers"], q["cross_attention_frequency"]))
    qformer = 2 * qh + q["num_hidden_layers"] * (self_attn + ffn) + crossing * cross
    query_tokens = arch["num_query_tokens"] * qh
    if t["model_type"] == "opt":
        d, f, vocab = t["hidden_size"], t["ffn_dim"], t["vocab_size"]
        layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d  # q, k, v, out, fc1, fc2 (biases), 2 LNs
        lm = vocab * d + (t["max_position_embeddings"] + 2) * d + t["num_hidden_layers"] * layer + 2 * d
    else:
        d, f, vocab, inner = t["d_model"], t["d_ff"], t["vocab_size"], t["num_heads"] * t["d_kv"]
        attn, gated_ffn, bias = 4 * d * inner, 3 * d * f, t["relative_attention_num_buckets"] * t["num_heads"]
        encoder = t["num_layers"] * (attn + gated_ffn + 2 * d) + bias + d  # no biases; RMS norms of d
        decoder = t["num_decoder_layers"] * (2 * attn + gated_ffn + 3 * d) + bias + d
        lm = 2 * vocab * d + encoder + decoder  # shared + lm_head
    projection = qh * d + d
    return vision + qformer + query_tokens + projection + lm


@module_fixture
def shipped_plans():
    """plan_memory of every shipped architecture with the fine-tuning script's LoRA (target_modules "auto")."""
    return {model_id: plan_memory(model_id, lora=script_lora()) for model_id in SHIPPED}


@pytest.mark.parametrize("model_id", SHIPPED)
def test_every_shipped_architecture_loads_with_its_family(model_id):
    family, image_token, _ = SHIPPED[model_id]
    raw = json.loads(KNOWN_ARCHITECTURES[model_id].read_text(encoding="utf-8"))
    config = load_blip2_config(model_id)  # a known id: the shipped file, no network
    assert raw["model_type"] == "blip-2" and raw["num_query_tokens"] == config.num_query_tokens == 32
    assert family_of(raw).name == family_of(config).name == family
    assert config.image_token_index == raw["image_token_index"] == image_token
    assert config.use_decoder_only_language_model is (family == "opt")
    assert config.text_config.model_type == family
    if family == "t5":  # Flan-T5: an lm_head of its own, T5's ids
        assert raw["text_config"]["tie_word_embeddings"] is False
        assert (config.text_config.pad_token_id, config.text_config.eos_token_id,
                config.text_config.decoder_start_token_id) == (0, 1, 0)
    else:
        assert config.text_config.tie_word_embeddings and config.text_config.eos_token_id == 50118


@pytest.mark.slow
@pytest.mark.parametrize("model_id", SHIPPED)
def test_shipped_totals_equal_independent_counts(model_id, shipped_plans):
    plan = shipped_plans[model_id]
    arch = json.loads(KNOWN_ARCHITECTURES[model_id].read_text(encoding="utf-8"))
    assert plan["total_params"] == expected_params(arch) == sum(p["params"] for p in plan["parts"].values())
    assert f"{plan['total_params']:.3g}" == f"{SHIPPED[model_id][2]:.3g}"  # the Hub model's listed size
    assert plan["precisions"]["bf16"]["bytes"] == 2 * plan["total_params"]
    assert plan["family"] == SHIPPED[model_id][0]
    assert plan["untied_output_embedding"] is (plan["family"] == "t5")
    if model_id == "Salesforce/blip2-opt-2.7b":
        assert plan["total_params"] == FULL_PARAMS


@pytest.mark.slow
def test_flan_t5_lora_and_quantisation(shipped_plans):
    """Flan-T5-XL: "auto" LoRA on q, k, v, o, wi_0, wi_1, wo of 24 encoder blocks (attention + gated
    feed-forward) and 24 decoder blocks (self- and cross-attention + feed-forward); 4-bit on every other
    Linear of the language model, never on wo (transformers keeps it out) or lm_head."""
    plan = shipped_plans["Salesforce/blip2-flan-t5-xl"]
    d, ff, r = 2048, 5120, 16
    attention, feed_forward = 4 * r * (d + d), 3 * r * (d + ff)  # wi_0, wi_1: d->ff; wo: ff->d
    assert plan["lora"]["auto"] and plan["lora"]["targets"] == list(T5.lora_targets)
    assert plan["lora"]["modules"] == 24 * (4 + 3) + 24 * (4 + 4 + 3) == 432
    assert plan["lora"]["params"] == 24 * (attention + feed_forward) + 24 * (2 * attention + feed_forward)
    regex = plan["lora"]["regex"]
    for name in ("language_model.encoder.block.0.layer.1.DenseReluDense.wo",
                 "language_model.decoder.block.23.layer.1.EncDecAttention.q"):
        assert re.fullmatch(regex, name)
    assert not re.fullmatch(regex, "qformer.encoder.layer.0.attention.attention.query")

    bnb = bnb_details("Salesforce/blip2-flan-t5-xl")
    assert "wo" in bnb["modules_to_not_convert"] and "wo" in bnb["keep_in_fp32_modules"]
    assert not [n for n in bnb["quantized_linears"] if n.endswith(".wo") or "lm_head" in n]
    assert bnb["quantized_linear_count"] == 24 * 6 + 24 * 10 == 384
    assert all(n.startswith(("language_model.encoder.block.", "language_model.decoder.block."))
               for n in bnb["quantized_linears"])
    # the encoder layers at nf4 + bf16: q, k, v, o, wi_0, wi_1 in 4 bit; wo, the layer norms and the
    # relative-position bias (32 buckets x 32 heads, block 0) in bf16
    quantized = 4 * [d * d] + 2 * [d * ff]
    encoder = 24 * (sum(nf4_weight_bytes(n) for n in quantized) + 2 * (ff * d + 2 * d)) + 2 * 32 * 32
    assert plan["parts"]["language_model.encoder_layers"]["bytes"]["nf4"] == encoder
    assert plan["parts"]["language_model.lm_head"]["bytes"]["nf4"] == 2 * 32128 * d  # lm_head stays bf16
    assert "wo" in bnb["fp32_patterns"]["fp16"] and not bnb["fp32_patterns"]["bf16"]


@pytest.mark.slow
def test_opt_6_7b_lora_is_the_opt_default(shipped_plans):
    plan = shipped_plans["Salesforce/blip2-opt-6.7b"]
    d, ffn, r = 4096, 16384, 16
    assert plan["lora"]["modules"] == 32 * 6
    assert bnb_details("Salesforce/blip2-opt-6.7b")["quantized_linear_count"] == 32 * 6
    assert plan["lora"]["params"] == 32 * r * (4 * (d + d) + 2 * (d + ffn))
    assert plan["parts"]["language_model.embed_tokens"]["params"] == 50_304 * d  # tied lm_head counted once


def test_the_plan_adapts_the_layers_the_training_adapts(tiny_config):
    """"auto" (as LoraSettings holds TARGET_MODULES = "auto") is the family's layers; names are kept; a list naming
    no layer is refused as the fine-tuning script refuses it (both ask src.family.lora_targets)."""
    from src.errors import UserError

    lora = script_lora()
    auto = plan_memory(tiny_config, lora=lora)["lora"]
    assert auto["targets"] == list(OPT.lora_targets) and auto["auto"]
    named = plan_memory(tiny_config, lora=dataclasses.replace(lora, target_modules=("q_proj", "v_proj")))["lora"]
    assert named["targets"] == ["q_proj", "v_proj"] and not named["auto"]
    assert named["modules"] == 2 * tiny_config.text_config.num_hidden_layers
    with pytest.raises(UserError):
        plan_memory(tiny_config, lora=dataclasses.replace(lora, target_modules=(" ",)))
    with pytest.raises(UserError, match="not Linear layers: language_model.model.decoder.embed_tokens"):
        plan_memory(tiny_config, lora=dataclasses.replace(lora, target_modules=("embed_tokens",)))


# --- a tiny BLIP-2 on Flan-T5 (the shipped xl architecture, small sizes): what transformers really loads ------

TINY_T5_SIZES = {
    "num_query_tokens": 4,
    "vision_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": 32, "patch_size": 16},
    "qformer_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "encoder_hidden_size": 32},
    "text_config": {"d_model": 64, "d_ff": 96, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
                    "vocab_size": 136},
}


def _tiny_t5_config():
    from transformers import Blip2Config

    arch = json.loads(KNOWN_ARCHITECTURES["Salesforce/blip2-flan-t5-xl"].read_text(encoding="utf-8"))
    for key, sizes in TINY_T5_SIZES.items():
        arch[key] = {**arch[key], **sizes} if isinstance(sizes, dict) else sizes
    arch["image_token_index"] = 135
    return Blip2Config(**arch)


def _save_tiny_t5(folder, untied: bool) -> str:
    """A tiny Flan-T5 BLIP-2, saved as the Hub checkpoint is (untied: its own lm_head) or tied."""
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(_tiny_t5_config())
    if untied:  # as a Flan-T5 checkpoint: lm_head.weight stored beside shared.weight, other values
        lm = model.language_model
        lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight))
        model.all_tied_weights_keys.pop("language_model.lm_head.weight")
        lm.all_tied_weights_keys.pop("lm_head.weight")
    model.save_pretrained(folder)
    return str(folder)


@module_fixture
def tiny_t5_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-t5")
    return {untied: _save_tiny_t5(root / ("untied" if untied else "tied"), untied) for untied in (True, False)}


@pytest.mark.parametrize("untied", [True, False])
def test_t5_lm_head_is_counted_as_transformers_loads_it(tiny_t5_checkpoints, untied, tmp_path):
    """transformers 5 builds every T5 with lm_head tied to shared and unties it only when the checkpoint holds
    both: the plan of a model folder reads that off its tensor names; a config.json alone says it with
    tie_word_embeddings (the Hub's Flan-T5 config: false, the checkpoint has its own lm_head)."""
    from transformers import Blip2ForConditionalGeneration

    folder = tiny_t5_checkpoints[untied]
    loaded = Blip2ForConditionalGeneration.from_pretrained(folder)
    lm = loaded.language_model
    assert (lm.lm_head.weight is not lm.shared.weight) is untied
    plan = plan_memory(folder, lora=script_lora())
    assert plan["untied_output_embedding"] is untied
    assert plan["total_params"] == sum(p.numel() for p in loaded.parameters())
    assert ("language_model.lm_head.weight" in plan["tied_weights"]) is not untied
    with open(f"{folder}/config.json", encoding="utf-8") as f:
        config_only = json.load(f)
    config_only["text_config"]["tie_word_embeddings"] = False  # what the Hub's 4.47 config.json says
    (tmp_path / "config.json").write_text(json.dumps(config_only), encoding="utf-8")  # a folder without weights
    assert plan_memory(tmp_path, lora=script_lora())["untied_output_embedding"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tiny_t5_nf4_plan_equals_a_real_4bit_load(tiny_t5_checkpoints, dtype):
    """T5's wo and lm_head stay unquantised in a real 4-bit load, in the dtypes the plan says, and the plan
    prices every byte the loaded model holds."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, Blip2ForConditionalGeneration

    folder = tiny_t5_checkpoints[True]
    model = Blip2ForConditionalGeneration.from_pretrained(
        folder, dtype=dtype, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                               llm_int8_skip_modules=list(T5.quantization_skip)),
    )
    quantized = sorted(n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    plan = plan_memory(folder, lora=script_lora(), compute_dtype=str(dtype).removeprefix("torch."))
    assert bnb_details(folder)["quantized_linears"] == quantized and len(quantized) == 2 * 6 + 2 * 10
    assert plan["precisions"]["nf4"]["bytes"] == held_bytes(model)
    wo = model.language_model.encoder.block[0].layer[1].DenseReluDense.wo
    assert type(wo) is torch.nn.Linear and wo.weight.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert type(model.language_model.lm_head) is torch.nn.Linear and model.language_model.lm_head.weight.dtype == dtype


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["Salesforce/blip2-flan-t5-xl", "Salesforce/blip2-flan-t5-xxl",
                                      "Salesforce/blip2-opt-6.7b"])
def test_the_bench_plans_every_checkpoint_offline(model_id):
    """`python -m bench.memory_plan --model_id=<Hub id>` needs no network: the shipped architecture, the family's
    LoRA (README: the Flan-T5-XL command)."""
    results = RESULTS_MD.read_text(encoding="utf-8")
    proc = run_script("-m", "bench.memory_plan", f"--model_id={model_id}", env={"HF_HUB_OFFLINE": "1"}, check=True,
                      timeout=300)
    family, _, _ = SHIPPED[model_id]
    total = expected_params(json.loads(KNOWN_ARCHITECTURES[model_id].read_text(encoding="utf-8")))
    assert f"{total:,}" in proc.stdout  # the total row
    modules = 432 if family == "t5" else 192
    assert f"on {modules} Linear modules" in proc.stdout and "auto: the" in proc.stdout
    assert ("LM encoder layers (24)" in proc.stdout) is (family == "t5")
    assert RESULTS_MD.read_text(encoding="utf-8") == results


def test_the_plan_of_a_folder_without_a_model_config_is_refused(tmp_path):
    """The plan of a folder that holds no config.json: one line, not transformers' default config."""
    (tmp_path / "not-a-model").mkdir()
    proc = run_script("-m", "bench.memory_plan", f"--model_id={tmp_path / 'not-a-model'}")
    assert_one_line_error(proc, str(tmp_path / "not-a-model"), "no config.json", "not a model saved with save_pretrained")
