"""`src.training.training_step`, the optimizer step finetune_vqav2_lora.py and bench/gpu_check.py share,
against a hand-written step; and the LoRA defaults that both, and the memory plan, take from src."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from helpers import REPO, script_lora


def test_accumulated_step_equals_one_backward_of_the_mean_loss(tiny_model_dir):
    from src.data import load_samples
    from src.modeling import end_token_id, load_blip2
    from src.modeling import make_accelerator
    from src.training import LoraSettings, add_lora, make_optimizer, train_batch, training_loss, training_step

    model, processor = load_blip2(tiny_model_dir, quantization="none", device="cpu")
    samples = load_samples("tiny", "train", str(REPO / "data"))
    batches = [train_batch(k, samples, processor, model.config, end_token_id(model), "vqa_opt", seed=0, micro_batch=4,
                           world_size=1, rank=0) for k in (0, 1)]
    torch.manual_seed(0)
    ours = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"),
                                             scope="language_model"), gradient_checkpointing=False).eval()  # no dropout
    for name, p in ours.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # B starts at zero; give A a gradient too
    reference = copy.deepcopy(ours)

    # by hand: the mean of the two micro-batch losses, one backward, clip, AdamW and the schedule
    optimizer, scheduler = make_optimizer(reference, 1e-2, 0.0, 0, 10)
    loss = (training_loss(reference, batches[0]) + training_loss(reference, batches[1])) / 2
    loss.backward()
    params = [p for p in reference.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, 0.01)
    optimizer.step()
    scheduler.step()

    accelerator = make_accelerator(gradient_accumulation_steps=2)
    optimizer, scheduler = make_optimizer(ours, 1e-2, 0.0, 0, 10)
    ours, optimizer = accelerator.prepare(ours, optimizer)
    got_loss, got_norm, skipped = training_step(ours, iter(batches), accelerator, optimizer, scheduler, 0.01)
    assert skipped is False

    assert got_loss == pytest.approx(loss.item(), rel=1e-5)
    assert got_norm == pytest.approx(norm.item(), rel=1e-4) and got_norm > 0.01  # the clip was active
    changed = 0
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
            assert a.grad is None  # gradients cleared for the next step
            changed += 1
    assert changed and scheduler.get_last_lr() == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi / 10))])  # cosine, step 1 of 10
    with pytest.raises(ValueError, match="1 micro-batches for an accelerator accumulating 2"):
        training_step(ours, iter(batches[:1]), accelerator, optimizer, scheduler, 0.01)


@pytest.mark.slow
def test_the_lora_defaults_are_read_from_the_fine_tuning_script(tmp_path):
    """One place for the LoRA values: the script's settings block. src.config.script_settings reads it
    without running the script (as bench/ does), and the memory plan follows an edit of it."""
    import finetune_vqav2_lora as script
    from src.config import script_settings
    from bench.memory_plan import plan_memory
    from src.training import LoraSettings

    lora = LoraSettings.of_settings(vars(script))
    assert lora == script_lora()
    assert (script.LORA_R, script.LORA_ALPHA, script.LORA_DROPOUT, script.LORA_SCOPE) == (
        lora.r, lora.alpha, lora.dropout, lora.scope)
    assert script.TARGET_MODULES == "auto" and lora.target_modules == ("auto",)  # the model family's (src/family.py)
    edited = tmp_path / "finetune_vqav2_lora.py"
    edited.write_text((REPO / "finetune_vqav2_lora.py").read_text().replace("LORA_R: int = 16 ", "LORA_R: int = 4 ", 1)
                      .replace('TARGET_MODULES: str | list = "auto"', 'TARGET_MODULES: str | list = "q_proj, v_proj"', 1))
    edited_lora = LoraSettings.of_settings(script_settings(edited))
    assert edited_lora == LoraSettings(4, lora.alpha, lora.dropout, ("q_proj", "v_proj"), lora.scope)
    plan = plan_memory(None, lora=edited_lora)
    assert (plan["lora"]["r"], plan["lora"]["targets"], plan["lora"]["scope"]) == (4, ["q_proj", "v_proj"], lora.scope)
    # "auto" plans the OPT default of the default model
    from src.family import OPT

    assert plan_memory(None, lora=lora)["lora"]["targets"] == list(OPT.lora_targets)
    assert inspect.signature(plan_memory).parameters["lora"].default is inspect.Parameter.empty  # no second copy

def test_lora_inside_the_vision_tower_trains(tiny_model_dir, tmp_path):
    """--lora_scope=vision_model: the ViT then runs with gradients (it crashed in backward: its inputs were under
    no_grad), and its LoRA weights move away from their zero start."""
    from safetensors.torch import load_file

    from helpers import run_script

    out = tmp_path / "out"
    run_script("finetune_vqav2_lora.py", f"--model_id={tiny_model_dir}", "--dataset=tiny", "--use_4bit=False",
               "--lora_scope=vision_model", "--target_modules=fc1,fc2", "--train_steps=2", "--per_device_batch=2",
               "--grad_accum=1", "--lr=1e-2", "--warmup_steps=0", "--save_every=2", "--preview_samples=0",
               "--num_workers=0", f"--output_dir={out}", check=True)
    weights = load_file(out / "lora_adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all("vision_model" in k for k in lora_b)
    assert all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: it trained
