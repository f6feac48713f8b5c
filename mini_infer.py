"""Caption one image and answer one question about it: the quickest first look at BLIP-2.

    python mini_infer.py                                   # baseline_images/pic_01.jpg, Salesforce/blip2-opt-2.7b
    python mini_infer.py --image=data/picture_02.jpg --question="What animal is this?"
    # offline CPU smoke run with the offline twin (a tiny captioner of easy-VQA shapes; it knows no photos):
    python -m twin outputs/tiny-blip2 && python mini_infer.py --model_id=outputs/tiny-blip2 --quantization=none

Prints the caption and the answer and writes them, with the resolved config, to
<output_dir>/mini_infer.json. One run at a time writes into an output folder (<output_dir>/.output.lock).
"""

from src.config import apply_overrides
from src.errors import run_main

# -----------------------------------------------------------------------------
IMAGE: str = "baseline_images/pic_01.jpg"  # the picture to describe
QUESTION: str = "What is in the image?"  # asked with the VQA prompt
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # hub id or a local folder saved with save_pretrained
QUANTIZATION: str = "4bit"  # "4bit" (NF4), "8bit" (GPU only) or "none"
ADAPTER_DIR: str = ""  # LoRA adapter folder, e.g. {output_dir}/lora_adapter ("" = base model; {output_dir} = OUTPUT_DIR)
VQA_PROMPT: str = "auto"  # name in src/prompts.py; "auto" = the model family's own (vqa_opt for OPT, vqa_t5 for Flan-T5)
VQA_DECODING: str = "auto"  # "auto" = vqa_beam5, the BLIP-2 paper decoding: beam 5, length penalty -1, <= 10 tokens
CAPTION_PROMPT: str = "caption"
CAPTION_DECODING: str = "caption_beam5"
DEVICE: str = ""  # "" = cuda if available, else cpu
OUTPUT_DIR: str = "outputs"  # where mini_infer.json goes
DEBUG: bool = False  # show tracebacks
# -----------------------------------------------------------------------------


def main():
    from src.preflight import check_adapter_fits, check_model, check_output_dir, check_value

    config = apply_overrides(globals(), check=check_value)
    from src.images import load_image
    from src.inference import caption_rows
    from src.files import write_json
    from src.modeling import apply_adapter, generation_names, load_blip2, resolve_adapter_dir
    from src.prompts import check_question
    from src.locks import hold_output_lock

    # every input and the output folder are checked before the slow model load
    question = check_question(QUESTION)
    adapter = resolve_adapter_dir(ADAPTER_DIR, OUTPUT_DIR)  # None = base model
    out_dir = check_output_dir(OUTPUT_DIR)
    image = load_image(IMAGE, exif_orientation=True)  # a user's photo: upright as its camera meant
    check_model(MODEL_ID, QUANTIZATION, DEVICE, adapter)
    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, VQA_PROMPT, VQA_DECODING)  # "auto": the model family's own
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
    with hold_output_lock(out_dir):
        model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=DEVICE or None)
        if adapter:
            check_adapter_fits(model, adapter)  # trained on this very base, or one line says what to pass
            model = apply_adapter(model, adapter)
        vqa_prompt, vqa_decoding = generation_names(MODEL_ID, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
        config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
        result = caption_rows(model, processor, [IMAGE], {IMAGE: image}, question, model_id=MODEL_ID, adapter=adapter,
                              vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, caption_prompt=CAPTION_PROMPT,
                              caption_decoding=CAPTION_DECODING)[0]
        print(f"image:    {IMAGE}")
        print(f"caption:  {result['caption']}")
        print(f"question: {question}")
        print(f"answer:   {result['answer']}")
        write_json(out_dir / "mini_infer.json", {"result": result, "config": config})


if __name__ == "__main__":
    run_main(main)
