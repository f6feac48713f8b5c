"""Zero-shot BLIP-2 on a frozen random sample of the VQAv2 validation questions (README step 3).

    python create_vqav2_baseline.py                                  # 1000 questions of VQAv2 val2014
    python create_vqav2_baseline.py --dataset=vqav2_hub                # VQAv2 val from the hub (lmms-lab/VQAv2), no COCO download
    python create_vqav2_baseline.py --max_samples=5000 --eval_batch=64
    accelerate launch --multi_gpu --num_processes 2 create_vqav2_baseline.py   # several GPUs
    # offline CPU smoke run: the offline twin (python -m src.tiny_model) on easy-VQA (pip install easy-vqa)
    python -m src.tiny_model outputs/tiny-blip2
    python create_vqav2_baseline.py --model_id=outputs/tiny-blip2 --quantization=none --dataset=easy_vqa --max_samples=50

Draws MAX_SAMPLES question ids with SEED and freezes them in <output_dir>/vqav2_sample_ids.json
(evaluate_vqav2_finetuned.py reuses exactly these), answers them with the BLIP-2 paper's VQA
prompt and decoding, and writes <output_dir>/vqav2_baseline.jsonl (one row per question),
vqav2_baseline_metrics.json and the official results file vqav2_baseline_results.json.
Killed? Run the same command again: finished rows are kept and only the rest is answered.
"""

from src.config import apply_overrides
from src.errors import run_main

# -----------------------------------------------------------------------------
DATASET = "vqav2"  # "vqav2" (data/vqa + data/images), "vqav2_hub" (HF_DATASET), "easy_vqa" (pip package) or "tiny"
HF_DATASET = "lmms-lab/VQAv2"  # vqav2_hub: hub dataset id, or a local folder holding data/validation-*.parquet
HF_DATASET_REVISION = ""  # vqav2_hub: commit hash (or branch/tag) to pin; "" = newest
SPLIT = "val"  # evaluation split
DATA_DIR = "data"
MAX_SAMPLES = 1000  # questions in the frozen sample (0 = the whole split)
SEED = 42  # draws the sample
MODEL_ID = "Salesforce/blip2-opt-2.7b"
QUANTIZATION = "4bit"  # "4bit" (NF4), "8bit" (GPU only) or "none"
EVAL_BATCH = 32  # questions per generate() call
NUM_WORKERS = 2  # DataLoader workers decoding images while the model generates
VQA_PROMPT = "vqa_opt"  # "Question: {} Answer:"
VQA_DECODING = "vqa_beam5"  # beam 5, length penalty -1, max 10 new tokens
OUTPUT_DIR = "outputs"
RUN_NAME = "vqav2_baseline"  # file prefix: <run_name>.jsonl, _metrics.json, _results.json
DEBUG = False
# -----------------------------------------------------------------------------


def main():
    config = apply_overrides(globals())
    from src.data import freeze_sample, load_samples, read_frozen_sample
    from src.evaluation import SAMPLE_IDS_FILE, eval_record, run_vqa, score_and_write
    from src.modeling import check_quantization, load_blip2, make_accelerator
    from src.outputs import check_output_dir, check_output_files, hold_output_lock

    accelerator = make_accelerator()  # one process, or one per GPU under `accelerate launch`
    check_quantization(QUANTIZATION, str(accelerator.device))
    out_dir = check_output_dir(OUTPUT_DIR)
    check_output_files(out_dir, [SAMPLE_IDS_FILE] + [f"{RUN_NAME}{suffix}" for suffix in
                                (".jsonl", "_metrics.json", "_results.json", "_config.json")])
    with hold_output_lock(out_dir, enabled=accelerator.is_main_process):  # one run writes into a folder
        # 1. the data, and the sample drawn once and frozen: every rerun and the fine-tuned evaluation reuse it
        samples = load_samples(DATASET, SPLIT, DATA_DIR, hf_dataset=HF_DATASET, hf_revision=HF_DATASET_REVISION,
                               cache_dir=out_dir)
        if accelerator.is_main_process:
            freeze_sample(out_dir / SAMPLE_IDS_FILE, DATASET, SPLIT, samples, MAX_SAMPLES, SEED)
        accelerator.wait_for_everyone()
        chosen = read_frozen_sample(out_dir / SAMPLE_IDS_FILE, samples, DATASET, SPLIT, cache_dir=out_dir)
        # 2. the base model answers (resumable: rows already written are kept)
        model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=str(accelerator.device))
        record = eval_record(model_id=MODEL_ID, adapter=None, quantization=QUANTIZATION, dataset=DATASET,
                             vqa_prompt=VQA_PROMPT, vqa_decoding=VQA_DECODING)
        run_vqa(chosen, out_dir / f"{RUN_NAME}.jsonl", model=model, processor=processor, accelerator=accelerator,
                record=record, batch_size=EVAL_BATCH, num_workers=NUM_WORKERS, desc=RUN_NAME)
        # 3. score and write (main process)
        if accelerator.is_main_process:
            score_and_write(chosen, out_dir, RUN_NAME, config=config, record=record, split=SPLIT)


if __name__ == "__main__":
    run_main(main)
