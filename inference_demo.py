"""Gradio demo (README step 7): give it a picture, ask a question, see BLIP-2's caption and answer.

    python inference_demo.py                                  # http://127.0.0.1:7860, Chinese page
    python inference_demo.py --lang=en                        # the page in English
    python inference_demo.py --adapter_dir=runs/a/lora_adapter --port=8080
    python inference_demo.py --run_comparison=True            # rebuild assets/comparisons/ first, then serve
    python inference_demo.py --host=0.0.0.0                   # reachable from other machines (prints a warning)
    # offline CPU smoke run with the tiny model (--adapter_dir= serves the base model only, leave it out to use
    # an adapter from the tiny-model smoke run of finetune_vqav2_lora.py); easy-VQA pictures as the examples
    # (converted into data/easy_vqa/ by the first --dataset=easy_vqa run of any script):
    python -m twin outputs/tiny-blip2
    python inference_demo.py --model_id=outputs/tiny-blip2 --quantization=none --adapter_dir=
    python inference_demo.py --model_id=outputs/tiny-blip2 \
        --examples_dir=data/easy_vqa/images/val --question="what color is the shape?"

Tab "Ask": upload, drop, paste or photograph (webcam) a picture, or click one of the example thumbnails
(EXAMPLES_DIR, at most MAX_EXAMPLES of them), type a question, press Ask. When a LoRA
adapter exists in ADAPTER_DIR (from `python finetune_vqav2_lora.py`; by default <output_dir>/lora_adapter,
"{output_dir}" standing for OUTPUT_DIR), the base model (adapter switched off) and the fine-tuned model
(adapter on) answer side by side, from the one model in memory. Example pictures the adapter trained on
(known by their file names: COCO_val2014_*.jpg, the hub image cache, easy-VQA's folders) are refused in one
line unless --allow_train_overlap=True.
Tab "Comparison": the numbers, charts and example cases that `python compare_baseline_finetuned.py`
wrote to COMPARISONS_DIR, re-read on every page load and on Reload.

Requests wait in a queue (at most MAX_QUEUE) and generation runs one request at a time. Files that are
not images, larger than MAX_UPLOAD_MB or with more pixels than src/images.py allows (decompression bombs
included: the size is read from the header, nothing is decoded) are refused with a message in the page.
LANG ("zh" or "en") sets every label and message of the page.
The Gradio API is `/ask` (Image, question) -> caption, base answer,
fine-tuned caption, fine-tuned answer, status; e.g. with gradio_client:
    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("baseline_images/pic_01.jpg"), "What is in the image?",
                                             api_name="/ask")
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

from src.config import apply_overrides
from src.errors import UserError, run_main
from src.i18n import check_lang

# -----------------------------------------------------------------------------
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # hub id or a local folder saved with save_pretrained
QUANTIZATION: str = "4bit"  # "4bit" (NF4), "8bit" (GPU only) or "none"
ADAPTER_DIR: str = "{output_dir}/lora_adapter"  # LoRA adapter from finetune_vqav2_lora.py; "" or missing = base model only
QUESTION: str = "What is in the image?"  # the question the page starts with
VQA_PROMPT: str = "auto"  # name in src/prompts.py; "auto" = the model family's own (vqa_opt for OPT, vqa_t5 for Flan-T5)
VQA_DECODING: str = "auto"  # "auto" = vqa_beam5, the BLIP-2 paper decoding: beam 5, length penalty -1, <= 10 tokens
CAPTION_PROMPT: str = "caption"
CAPTION_DECODING: str = "caption_beam5"
DEVICE: str = ""  # "" = cuda if available, else cpu
HOST: str = "127.0.0.1"  # address to serve on; "0.0.0.0" makes the demo reachable from other machines
PORT: int = 7860
SHARE: bool = False  # True: also create a public *.gradio.live link (needs internet)
MAX_QUEUE: int = 20  # requests allowed to wait for the model; more are refused with "queue is full"
MAX_UPLOAD_MB: float = 10.0  # largest upload accepted, in megabytes (pixels are limited by src/images.py)
EXAMPLES_DIR: str = "baseline_images"  # pictures offered as clickable thumbnails, e.g. data/easy_vqa/images/val
MAX_EXAMPLES: int = 24  # at most this many of them, first by file name
ALLOW_TRAIN_OVERLAP: bool = False  # True: offer example pictures the adapter trained on (it warns)
COMPARISONS_DIR: str = "assets/comparisons"  # what compare_baseline_finetuned.py wrote, shown in tab "Comparison"
RUN_COMPARISON: bool = False  # True: run compare_baseline_finetuned.py once before serving (the README's old behaviour)
OUTPUT_DIR: str = "outputs"  # where that comparison reads the result files; {output_dir} in ADAPTER_DIR
LANG: str = "zh"  # language of the page: "zh" (Chinese) or "en"
DEBUG: bool = False  # show tracebacks
# -----------------------------------------------------------------------------

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the port is taken."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port={port}: use a port between 1 and 65535, e.g. --port=7860")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot serve on {host}:{port} ({e.strerror or e}); another program (maybe another demo) "
                            f"uses it: pass a free port, e.g. --port={port + 1}") from None


def run_comparison(output_dir: str, report_dir: str) -> bool:
    """Run compare_baseline_finetuned.py once (its output goes to this terminal); True if it worked."""
    script = Path(__file__).resolve().parent / "compare_baseline_finetuned.py"
    print(f"running the comparison: python {script.name} --output_dir={output_dir} --report_dir={report_dir}",
          flush=True)
    proc = subprocess.run([sys.executable, str(script), f"--output_dir={output_dir}", f"--report_dir={report_dir}"])
    if proc.returncode != 0:
        print(f"warning: the comparison failed (exit code {proc.returncode}, see above); serving anyway, the "
              f"Comparison tab says what is missing", flush=True)
    return proc.returncode == 0


def main():
    from src.preflight import (check_adapter_dir, check_adapter_fits, check_model, check_train_overlap, check_value,
                               trained_folder, training_data_note)

    config = apply_overrides(globals(), check=check_value)  # prompts, decodings, upload limit, queue: checked
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    check_lang(LANG)
    check_port_free(HOST, PORT)
    if HOST not in _LOCAL_HOSTS:
        print(f"warning: serving on {HOST}:{PORT}, so the demo is reachable from other machines on the network "
              f"(use --host=127.0.0.1 to keep it local)", flush=True)
    if SHARE:
        print("warning: SHARE=True publishes the demo on a public gradio.live link that anyone with the address "
              "can use", flush=True)

    if RUN_COMPARISON:  # the report is seconds of work, shown even when the model turns out to be missing
        run_comparison(OUTPUT_DIR, COMPARISONS_DIR)

    from src.modeling import apply_adapter, generation_names, load_blip2, resolve_adapter_dir

    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, VQA_PROMPT, VQA_DECODING)  # "auto": the model family's own
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)

    adapter_dir = resolve_adapter_dir(ADAPTER_DIR, OUTPUT_DIR)  # None = base model only
    adapter = None
    if adapter_dir and (Path(adapter_dir) / "adapter_config.json").is_file():
        adapter = adapter_dir
        check_adapter_dir(adapter, MODEL_ID)  # damaged, made for another model, or merged into MODEL_ID already
    elif adapter_dir:
        print(f"no LoRA adapter in {adapter_dir} (adapter_config.json missing): only the base model answers; "
              f"train one with `python finetune_vqav2_lora.py` or pass --adapter_dir=<folder>", flush=True)

    if EXAMPLES_DIR and not Path(EXAMPLES_DIR).is_dir():
        print(f"no example pictures: {EXAMPLES_DIR} is not a folder (easy-VQA's pictures appear in "
              f"data/easy_vqa/images/ after the first run with --dataset=easy_vqa)", flush=True)
    elif (trained := trained_folder(adapter, MODEL_ID)) and EXAMPLES_DIR:  # the leakage guard: example pictures
        # the adapter (or the one merged into the model) trained on are refused
        from src.data import picture_ids
        from src.images import list_images

        try:
            examples = list_images(EXAMPLES_DIR)[:MAX_EXAMPLES]
        except UserError:  # no pictures there: the page goes on without examples
            examples = []
        config["training_data"] = check_train_overlap(trained, picture_ids(examples), ALLOW_TRAIN_OVERLAP,
                                                      what=f"the example pictures in {EXAMPLES_DIR}")
        print(training_data_note(config["training_data"], trained), flush=True)

    from src.demo_app import DEMO_CSS, DemoOptions, build_demo

    print(f"***** BLIP-2 demo *****\n  model: {MODEL_ID} ({QUANTIZATION})\n  adapter: {adapter or 'none'}\n"
          f"  comparisons: {COMPARISONS_DIR}\n  queue: {MAX_QUEUE} waiting, one generation at a time", flush=True)
    check_model(MODEL_ID, QUANTIZATION, DEVICE)
    model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=DEVICE or None)
    if adapter:
        check_adapter_fits(model, adapter)  # trained on this very base, or one line says what to pass
        model = apply_adapter(model, adapter)
    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
    options = DemoOptions(comparisons_dir=COMPARISONS_DIR, examples_dir=EXAMPLES_DIR, max_examples=MAX_EXAMPLES,
                          default_question=QUESTION, vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding,
                          caption_prompt=CAPTION_PROMPT, caption_decoding=CAPTION_DECODING, max_upload_mb=MAX_UPLOAD_MB,
                          max_queue=MAX_QUEUE, model_label=MODEL_ID, adapter_label=adapter_dir or "", lang=LANG,
                          config=config, overlap_images=(config.get("training_data") or {}).get("overlap_images", 0))
    demo = build_demo(model, processor, adapter_available=adapter is not None, options=options)
    allowed = [p for p in (COMPARISONS_DIR, EXAMPLES_DIR) if p]
    demo.launch(server_name=HOST, server_port=PORT, share=SHARE, max_file_size=int(MAX_UPLOAD_MB * 2**20),
                allowed_paths=allowed, show_error=True, css_paths=DEMO_CSS)


if __name__ == "__main__":
    run_main(main)
