"""Caption the ten demo images in baseline_images/ and answer one question about each.

    python create_baseline.py                                        # base model -> outputs/baseline.jsonl
    python create_baseline.py --adapter_dir=outputs/lora_adapter     # fine-tuned -> outputs/baseline_finetuned.jsonl
    # offline CPU smoke run with the offline twin (python -m twin):
    python -m twin outputs/tiny-blip2 && python create_baseline.py --model_id=outputs/tiny-blip2 --quantization=none

One JSON row per image: image_path, caption, question, answer, model_id, adapter, prompt and
decoding settings (an unreadable image becomes a row with an "error" and the rest completes).
The resolved config goes to <output file>.config.json. One run at a time writes into an output folder
(<output_dir>/.output.lock); the model, adapter, images and output folder are checked before the model loads,
and with an adapter, pictures it trained on (known by their file names) are refused unless --allow_train_overlap=True.
"""

from src.config import apply_overrides, write_config
from src.errors import run_main

# -----------------------------------------------------------------------------
IMAGES_DIR: str = "baseline_images"  # the demo pictures (pic_01.jpg ... pic_10.jpg)
QUESTION: str = "What is in the image?"  # asked about every image
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # hub id or a local folder saved with save_pretrained
QUANTIZATION: str = "4bit"  # "4bit" (NF4), "8bit" (GPU only) or "none"
ADAPTER_DIR: str = ""  # LoRA adapter folder, e.g. {output_dir}/lora_adapter ("" = base model; {output_dir} = OUTPUT_DIR)
OUTPUT_DIR: str = "outputs"
OUTPUT_FILE: str = ""  # "" = baseline.jsonl, or baseline_finetuned.jsonl when ADAPTER_DIR is set
BATCH_SIZE: int = 10
VQA_PROMPT: str = "auto"  # "auto" = the model family's own (vqa_opt for OPT, vqa_t5 for Flan-T5)
VQA_DECODING: str = "auto"  # "auto" = vqa_beam5
CAPTION_PROMPT: str = "caption"
CAPTION_DECODING: str = "caption_beam5"
DEVICE: str = ""  # "" = cuda if available, else cpu
ALLOW_TRAIN_OVERLAP: bool = False  # True: answer even pictures the adapter trained on (the config says so)
DEBUG: bool = False
# -----------------------------------------------------------------------------

def main():
    from src.preflight import (check_adapter_fits, check_model, check_output_dir, check_output_files,
                               check_train_overlap, check_value, trained_folder, training_data_note)

    config = apply_overrides(globals(), check=check_value)
    from src.data import picture_ids
    from src.images import list_images, load_images
    from src.inference import caption_rows
    from src.files import write_jsonl
    from src.modeling import apply_adapter, generation_names, load_blip2, resolve_adapter_dir
    from src.prompts import check_question
    from src.locks import hold_output_lock

    # every input and the output folder are checked before the slow model load
    adapter = resolve_adapter_dir(ADAPTER_DIR, OUTPUT_DIR)  # None = base model
    question = check_question(QUESTION)
    paths = list_images(IMAGES_DIR)
    out_dir = check_output_dir(OUTPUT_DIR)
    out_path = out_dir / (OUTPUT_FILE or ("baseline_finetuned.jsonl" if adapter else "baseline.jsonl"))
    check_output_files(out_dir, [out_path.name], "--output_file")
    images, errors = load_images(paths, exif_orientation=True)  # photos: upright as their cameras meant
    check_model(MODEL_ID, QUANTIZATION, DEVICE, adapter)
    if trained := trained_folder(adapter, MODEL_ID):  # the leakage guard: pictures the adapter (or the one merged
        # into the model) trained on, known by their file names, are refused
        config["training_data"] = check_train_overlap(trained, picture_ids(paths), ALLOW_TRAIN_OVERLAP,
                                                      what=f"the pictures in {IMAGES_DIR}")
        print(training_data_note(config["training_data"], trained))
    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, VQA_PROMPT, VQA_DECODING)  # "auto": the model family's own
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)

    with hold_output_lock(out_dir):
        model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=DEVICE or None)
        if adapter:
            check_adapter_fits(model, adapter)  # trained on this very base, or one line says what to pass
            model = apply_adapter(model, adapter)
        vqa_prompt, vqa_decoding = generation_names(MODEL_ID, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
        config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
        good = [p for p in paths if p in images]
        print(f"captioning and answering {len(good)} images from {IMAGES_DIR} with {MODEL_ID}"
              + (f" + {adapter}" if adapter else ""))
        rows = caption_rows(model, processor, paths, images, question, model_id=MODEL_ID, adapter=adapter,
                            vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, caption_prompt=CAPTION_PROMPT,
                            caption_decoding=CAPTION_DECODING, errors=errors, batch_size=BATCH_SIZE)
        for p, row in zip(paths, rows):
            print(f"{p.name}: {row['caption']!r} | {question} -> {row['answer']!r}" if p in images
                  else f"{p.name}: ERROR {errors[p]}")
        write_jsonl(out_path, rows)
        write_config(config, str(out_path) + ".config.json")
    print(f"wrote {len(rows)} rows to {out_path}" + (f" ({len(errors)} unreadable images)" if errors else ""))


if __name__ == "__main__":
    run_main(main)
