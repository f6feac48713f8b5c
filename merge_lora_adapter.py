"""Merge the fine-tuned LoRA adapter into BLIP-2 and save it as one plain model folder (README: 导出合并后的模型).

    python merge_lora_adapter.py                           # outputs/lora_adapter -> outputs/blip2-vqav2-merged
    python merge_lora_adapter.py --merge_dtype=float16 --overwrite=True
    python merge_lora_adapter.py --adapter_dir=outputs/lora_adapter_checkpoints/step-000200 --merged_dir=outputs/m200
    # offline CPU smoke run, after the offline quick start's fine-tuning (README: 离线 CPU 快速体验)
    python merge_lora_adapter.py --model_id=outputs/tiny-blip2

Loads MODEL_ID in float32 as the adapter was trained on it (DEQUANTIZE): for a QLoRA adapter (use_4bit in
the training_config.json next to it) each 4-bit layer's weight is the NF4 round trip it computed with in
training (quantised from this machine's compute dtype: bf16 or fp16 on its GPU, fp32 without one), else
unquantised. Applies the adapter, merges it into the weights in float32 (peft merge_and_unload), and casts
once to MERGE_DTYPE: a float32 merge is W + B @ A * alpha / r to float32 rounding. It saves the model with its processor, a model card README.md and the resolved settings
(merge_config.json) to MERGED_DIR. It is all written into a hidden folder next to MERGED_DIR and
renamed into place at the end, so MERGED_DIR never holds half a model. The folder loads without peft:
load_blip2(MERGED_DIR, "none"), Blip2ForConditionalGeneration.from_pretrained, or --model_id= of any
script. The float32 merge of the 2.7B model takes about 14 GiB: on the GPU when that much is free, else on
the CPU (DEVICE=""; the banner says which and why).
"""

from src.config import apply_overrides, next_command
from src.errors import run_main

# -----------------------------------------------------------------------------
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # the base model the adapter was trained on
ADAPTER_DIR: str = "{output_dir}/lora_adapter"  # what finetune_vqav2_lora.py wrote, or one of its checkpoints
MERGED_DIR: str = "{output_dir}/blip2-vqav2-merged"  # the merged model's folder
MERGE_DTYPE: str = "bfloat16"  # precision of the saved weights: "bfloat16", "float16" or "float32"
DEQUANTIZE: str = "auto"  # merge onto the NF4-dequantised base: "auto" (when the adapter was trained 4-bit), "yes", "no"
DEVICE: str = ""  # "" = cuda when its free memory holds the float32 model, else cpu
OVERWRITE: bool = False  # True: replace the merged model in MERGED_DIR (only what its merge wrote; your files there stay)
OUTPUT_DIR: str = "outputs"  # {output_dir} in ADAPTER_DIR and MERGED_DIR
DEBUG: bool = False
# -----------------------------------------------------------------------------


def main():
    from src.preflight import (check_adapter_dir, check_adapter_fits, check_download_room, check_merged_dir, check_model_dir,
                               check_output_dir, check_quantization, check_value)

    config = apply_overrides(globals(), check=check_value)
    from importlib.metadata import version
    from pathlib import Path

    from src import merging as M
    from src.config import write_config
    from src.errors import UserError
    from src.files import recover_replace
    from src.family import family_of
    from src.modeling import apply_adapter, compute_dtype, default_device, load_blip2, resolve_adapter_dir
    from src.locks import hold_output_lock

    adapter = resolve_adapter_dir(ADAPTER_DIR, OUTPUT_DIR)
    if adapter is None:
        raise UserError("--adapter_dir= is empty: pass the LoRA adapter to merge (default {output_dir}/lora_adapter, "
                        "what finetune_vqav2_lora.py writes)")
    merged = Path(resolve_adapter_dir(MERGED_DIR, OUTPUT_DIR))  # "{output_dir}" and "~" as in ADAPTER_DIR
    parent = check_output_dir(merged.parent, "--merged_dir")
    merged = parent / merged.name
    with hold_output_lock(parent):  # one run writes there
        # 1. where it goes, what the adapter is and how it was trained: all before the slow model load
        recover_replace(merged, M.not_the_merges)  # a replace killed halfway: its old folder back in place
        check_merged_dir(merged, OVERWRITE, {"adapter": adapter, "base model": MODEL_ID})
        check_model_dir(MODEL_ID)
        check_download_room(MODEL_ID)
        check_adapter_dir(adapter, MODEL_ID)  # missing, damaged, or made for a model of other shapes
        training_file, training = M.read_training_config(adapter)
        dequantize = M.base_was_4bit(DEQUANTIZE, adapter, training_file, training)
        device, why = M.merge_device(DEVICE, MODEL_ID)
        check_quantization("4bit" if dequantize else "none", device)
        config.update(adapter_dir=adapter, merged_dir=str(merged), device=device, dequantized=dequantize,
                      training_config=str(training_file) if training_file else None)
        # what the adapter trained on goes with it: the evaluations' leakage guard reads it from merge_config.json
        config.update({k: training[k] for k in ("training_data", "training_image_ids") if k in (training or {})})
        import torch  # (bad input is told before these imports)

        from src.training import describe_wrapped, saving_folder

        # 2. the base in float32 as the adapter saw it: NF4 as in training and back (QLoRA), or unquantised
        model, processor = load_blip2(MODEL_ID, "none", device=device, dtype=torch.float32)
        nf4_from = None
        if dequantize:  # quantised from the dtype this machine's training loads weights in
            quantized_from = compute_dtype(default_device(), family_of(model.config))
            nf4_from = str(quantized_from).removeprefix("torch.")
            M.nf4_round_trip(model, quantized_from)
        # 3. the adapter, merged into the float32 weights
        check_adapter_fits(model, adapter)
        model = apply_adapter(model, adapter)
        wrapped = model.base_model.targeted_module_names
        print("***** Merging the LoRA adapter *****")
        nf4 = f"4-bit NF4 from {nf4_from}, dequantised"
        trained = {True: "trained on a 4-bit base", False: "trained on an unquantised base"}.get(
            (training or {}).get("use_4bit"), "training not recorded")
        print(f"  base: {MODEL_ID} ({nf4 if dequantize else 'unquantised'}; the adapter: {trained}; "
              f"--dequantize={DEQUANTIZE})")
        print(f"  device: {device} ({why})")
        print(f"  adapter: {adapter}, {len(wrapped)} layers: {describe_wrapped(wrapped)}")
        print(f"  merged in float32, saved in {MERGE_DTYPE}: {merged}")
        model = M.merge_lora(model)
        kept = M.cast_for_saving(model, getattr(torch, MERGE_DTYPE))
        config.update(merged_in="float32", kept_float32=kept, nf4_from=nf4_from,
                      versions={p: version(p) for p in ("torch", "transformers", "peft")})
        total = sum(p.numel() for p in model.parameters())
        # 4. written into a hidden folder beside, renamed into place when complete; the user's files in it stay
        with saving_folder(merged, "the merged model", f"{merged} is as it was: free some space and run the merge "
                           "again", keep=M.not_the_merges) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            card = M.model_card(model_id=MODEL_ID, adapter=adapter, folder=str(merged), training_file=training_file,
                                training=training, dequantized=dequantize, dtype=MERGE_DTYPE, kept_fp32=kept)
            (tmp / "README.md").write_text(card, encoding="utf-8")
            config["files"] = sorted([p.name for p in tmp.iterdir()] + [M.MERGE_CONFIG])  # what a later merge replaces
            write_config(config, tmp / M.MERGE_CONFIG)  # last: marks the folder as a merged model
    print(f"merged model saved to {merged} ({total:,} parameters, {MERGE_DTYPE}); it loads without peft: "
          f"load_blip2({str(merged)!r}, \"none\")")
    print(next_command("create_vqav2_baseline.py", model_id=merged, quantization="none", run_name="vqav2_merged",
                       output_dir=OUTPUT_DIR if OUTPUT_DIR != "outputs" else None))


if __name__ == "__main__":
    run_main(main)
