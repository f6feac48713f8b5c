"""4-bit NF4 on CPU: the tiny model loads, generates, and can still be trained with LoRA afterwards."""

import pytest
import torch
from PIL import Image

from helpers import random_twin
from src.inference import generate_for_images
from src.prompts import format_prompt, get_decoding

bnb = pytest.importorskip("bitsandbytes")


def lora_step_after_generation(model_dir, disable_repacking=True):
    import src.modeling as modeling
    from peft import LoraConfig, get_peft_model

    from src.training import freeze_base

    model, processor = modeling.load_blip2(model_dir, quantization="4bit", device="cpu")
    if not disable_repacking:  # undo what load_blip2 switched off: bitsandbytes' default for this CPU
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = bnb.functional.has_avx512bf16()
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    answer = generate_for_images(model, processor, [image], [format_prompt("vqa_opt", "what color?")],
                                 get_decoding("vqa_beam5"))[0]
    model = freeze_base(model, gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)$"))
    model.train()
    enc = processor(images=[image], text=["Question: what color? Answer: red"], return_tensors="pt")
    loss = model(**enc, labels=enc["input_ids"].clone()).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    return n4, answer, loss, grads


def test_4bit_loads_generates_then_trains(tiny_model_dir):
    n4, answer, loss, grads = lora_step_after_generation(tiny_model_dir)
    assert n4 > 0, "no layer was quantised to 4 bit"
    assert answer
    assert torch.isfinite(loss)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_without_the_fix_the_cpu_repacking_trap_bites(tiny_model_dir):
    """Proves the test above covers the trap: on CPUs where bitsandbytes repacks 4-bit weights for
    inference (AVX512-BF16), training after an eval forward fails unless load_blip2 switches it off."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks (the trap cannot occur here)")
    with pytest.raises(RuntimeError, match="leaf Variable"):
        lora_step_after_generation(tiny_model_dir, disable_repacking=False)


# What runs in which dtype under load_blip2(..., "4bit") with transformers 5.25: its _keep_in_fp32_modules (the
# Q-Former, the query tokens, T5's `wo`) upcast only fp16 loads. bf16: GPUs with native bf16; fp16: older GPUs (OPT
# only: Flan-T5 computes in fp32 there); fp32: the CPU, and Flan-T5 on older GPUs. The 4-bit layers hold uint8.
FP32_UNDER_FP16 = ("qformer", "query_tokens", "wo")


@pytest.mark.parametrize("family, dtype", [("opt", torch.bfloat16), ("opt", torch.float16), ("opt", torch.float32),
                                           ("t5", torch.bfloat16), ("t5", torch.float32)])
def test_4bit_parts_run_in_the_dtypes_the_notes_say(family, dtype):
    from src.family import FAMILIES
    from src.modeling import load_blip2

    model, _ = load_blip2(random_twin(family), "4bit", device="cpu", dtype=dtype)
    seen = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() and tensor.dtype != torch.uint8:
            continue
        parts = set(name.split("."))
        upcast = dtype == torch.float16 and parts & set(FP32_UNDER_FP16)
        expected = torch.uint8 if tensor.dtype == torch.uint8 else torch.float32 if upcast else dtype
        assert tensor.dtype == expected, (name, tensor.dtype)
        seen[next(iter(parts & set(FP32_UNDER_FP16)), name.split(".")[0])] = tensor.dtype
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(m.compute_dtype == dtype and m.weight.dtype == torch.uint8 for m in quantised)
    assert {"qformer", "query_tokens", "vision_model", "language_projection"} <= set(seen)
    assert ("wo" in seen) == (family == "t5")  # unquantised, in the load's dtype like the rest
    assert FAMILIES[family].fp16_ok == (family == "opt")  # no fp16 row for Flan-T5 (test_real_model_needs.py)
