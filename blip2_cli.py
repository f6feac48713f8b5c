"""Command-line BLIP-2: caption images and answer a question about them.

    python blip2_cli.py baseline_images/pic_01.jpg
    python blip2_cli.py baseline_images/ --question "What is in the image?" --json
    python blip2_cli.py photo.jpg --question "How many people are there?" --adapter_dir outputs/lora_adapter
    # offline CPU smoke run with the offline twin (python -m twin):
    python blip2_cli.py baseline_images/pic_01.jpg --model_id outputs/tiny-blip2 --quantization none

Without --question only captions are made. Exit code 0 on success; on failure one line on
stderr saying why, and exit code 2.
"""

import argparse
import json
import sys
from pathlib import Path

from src.errors import UserError, run_main
from src.family import AUTO
from src.images import list_images
from src.modeling import DEFAULT_MODEL_ID, QUANTIZATIONS
from src.prompts import DECODING, DEFAULT_CAPTION_DECODING, DEFAULT_VQA_DECODING, PROMPTS

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other failure
        raise UserError(f"{message} (see python blip2_cli.py --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blip2_cli.py", description="Caption images with BLIP-2 and answer a question about them.")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--question", "-q", default=None, help="question to ask about every image (omit for captions only)")
    p.add_argument("--model_id", default=DEFAULT_MODEL_ID, help=f"hub id or local folder (default {DEFAULT_MODEL_ID})")
    p.add_argument("--adapter_dir", default="",
                   help="LoRA adapter folder from finetune_vqav2_lora.py (default: none, the base model only)")
    p.add_argument("--quantization", default="4bit", choices=QUANTIZATIONS, help="weights: 4bit (NF4), 8bit (GPU), none")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--vqa_prompt", default=AUTO, choices=[AUTO] + [k for k, v in PROMPTS.items() if "{}" in v],
                   help="auto (default): the model family's own, vqa_opt for OPT, vqa_t5 for Flan-T5")
    p.add_argument("--vqa_decoding", default=AUTO, choices=[AUTO, *DECODING],
                   help=f"auto (default): {DEFAULT_VQA_DECODING}, the BLIP-2 paper's beam search")
    p.add_argument("--caption_decoding", default=DEFAULT_CAPTION_DECODING, choices=list(DECODING))
    p.add_argument("--device", default="", help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def collect_images(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += list_images(p)
        else:
            paths.append(p)
    return paths


def read_images(paths: list[Path]) -> tuple[list[Path], list]:
    """The readable images, each unreadable one reported on its own line (stderr); an error if none is."""
    from src.images import load_image, shown_path

    good, images, errors = [], [], []
    for p in paths:
        try:
            images.append(load_image(p, exif_orientation=True))
            good.append(p)
        except UserError as e:
            errors.append(shown_path(e))
            if len(paths) > 1:
                print(f"skipped: {errors[-1]}", file=sys.stderr)
    if not good:
        raise UserError(errors[0] if len(errors) == 1 else f"none of the {len(paths)} images could be read (see the lines above)")
    return good, images


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from src.inference import caption_rows
    from src.modeling import apply_adapter, generation_names, load_blip2
    from src.preflight import check_adapter_fits, check_model, check_value
    from src.prompts import check_question

    for name in ("batch_size", "model_id", "adapter_dir", "device"):  # the rules every script's settings follow
        setattr(args, name, check_value(name, getattr(args, name), parser.get_default(name)))
    question = check_question(args.question) if args.question is not None else None
    paths = collect_images([check_value("image", i) for i in args.images])
    n_given = len(paths)
    paths, images = read_images(paths)  # before the (slow) model load
    adapter = args.adapter_dir or None  # "" = base model only, as ADAPTER_DIR in the other scripts
    check_model(args.model_id, args.quantization, args.device, adapter)
    vqa_prompt, vqa_decoding = generation_names(args.model_id, args.vqa_prompt, args.vqa_decoding)  # no download
    model, processor = load_blip2(args.model_id, args.quantization, device=args.device or None)
    if adapter:
        check_adapter_fits(model, adapter)  # trained on this very base, or one line says what to pass
        model = apply_adapter(model, adapter)
    vqa_prompt, vqa_decoding = generation_names(args.model_id, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
    rows = caption_rows(model, processor, paths, dict(zip(paths, images)), question, model_id=args.model_id,
                        adapter=adapter, vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding,
                        caption_prompt="caption", caption_decoding=args.caption_decoding, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for row in rows:
            print(f"{row['image_path']}\n  caption: {row['caption']}")
            if question is not None:
                print(f"  Q: {question}\n  A: {row['answer']}")
    if len(paths) < n_given:
        print(f"{n_given - len(paths)} of {n_given} image(s) could not be read and were skipped (see above)",
              file=sys.stderr)


if __name__ == "__main__":
    run_main(main, debug="--debug" in sys.argv[1:])
