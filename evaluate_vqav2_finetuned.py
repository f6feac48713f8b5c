"""Evaluate the QLoRA-fine-tuned BLIP-2 on exactly the baseline's questions (README step 5).

    python evaluate_vqav2_finetuned.py
    python evaluate_vqav2_finetuned.py --dataset=vqav2_hub             # when the baseline used the hub dataset
    python evaluate_vqav2_finetuned.py --adapter_dir=outputs/lora_adapter --eval_batch=64
    accelerate launch --multi_gpu --num_processes 2 evaluate_vqav2_finetuned.py
    # offline CPU smoke run, after the smoke runs of create_vqav2_baseline.py and finetune_vqav2_lora.py:
    python evaluate_vqav2_finetuned.py --model_id=outputs/tiny-blip2 --quantization=none --dataset=easy_vqa

Reuses the frozen sample <output_dir>/vqav2_sample_ids.json, the same prompt and decoding, loads
the base model with the adapter, and writes vqav2_finetuned.jsonl, vqav2_finetuned_metrics.json and
vqav2_finetuned_results.json. Then prints exact match and VQA accuracy of baseline and fine-tuned
with the change, per answer type, the paired bootstrap 95% interval of the change, how many
questions got better / worse / stayed, and N_CASES random cases side by side.
"""

from src.config import apply_overrides
from src.errors import run_main

# -----------------------------------------------------------------------------
DATASET = "vqav2"  # must be the dataset the baseline sample was drawn from ("vqav2", "vqav2_hub", "easy_vqa", "tiny")
HF_DATASET = "lmms-lab/VQAv2"  # vqav2_hub: the baseline's hub dataset id or local parquet folder
HF_DATASET_REVISION = ""  # vqav2_hub: the baseline's revision; "" = newest
SPLIT = "val"
DATA_DIR = "data"
MODEL_ID = "Salesforce/blip2-opt-2.7b"  # the base model the adapter was trained on
QUANTIZATION = "4bit"  # keep it equal to the baseline's for a fair comparison
ADAPTER_DIR = ""  # the adapter finetune_vqav2_lora.py wrote; "" = <output_dir>/lora_adapter
EVAL_BATCH = 32
NUM_WORKERS = 2
VQA_PROMPT = "vqa_opt"
VQA_DECODING = "vqa_beam5"
OUTPUT_DIR = "outputs"  # holds vqav2_sample_ids.json and vqav2_baseline.jsonl
BASELINE_RUN = "vqav2_baseline"
RUN_NAME = "vqav2_finetuned"
N_CASES = 5  # random questions printed side by side
BOOTSTRAP_RESAMPLES = 1000
SEED = 0  # for the cases and the bootstrap
DEBUG = False
# -----------------------------------------------------------------------------


def main():
    config = apply_overrides(globals())
    import os
    import random

    from src.compare import compare_rows
    from src.errors import UserError
    from src.evaluation import evaluate_sample
    from src.io import read_jsonl
    from src.runtime import check_output_dir

    check_output_dir(OUTPUT_DIR)  # an empty --output_dir= is refused before anything else
    adapter = ADAPTER_DIR or os.path.join(OUTPUT_DIR, "lora_adapter")
    baseline_path = os.path.join(OUTPUT_DIR, f"{BASELINE_RUN}.jsonl")
    if not os.path.exists(baseline_path):
        raise UserError(f"baseline results not found: {baseline_path}; run `python create_vqav2_baseline.py` "
                        "first (same --output_dir and --dataset)")
    config["adapter_dir"] = adapter
    rows, _ = evaluate_sample(dataset=DATASET, split=SPLIT, data_dir=DATA_DIR, max_samples=0, seed=0,
                              model_id=MODEL_ID, quantization=QUANTIZATION, adapter=adapter, eval_batch=EVAL_BATCH,
                              num_workers=NUM_WORKERS, vqa_prompt=VQA_PROMPT, vqa_decoding=VQA_DECODING,
                              output_dir=OUTPUT_DIR, run_name=RUN_NAME, draw_sample=False, config=config,
                              hf_dataset=HF_DATASET, hf_dataset_revision=HF_DATASET_REVISION)
    if rows is None:  # not the main process
        return
    base_rows = read_jsonl(baseline_path)
    cmp = compare_rows(base_rows, rows, n_resamples=BOOTSTRAP_RESAMPLES, seed=SEED)
    cov = cmp["coverage"]
    if cov["only_baseline"] or cov["only_finetuned"]:
        print(f"note: the baseline file has {cov['only_baseline']} question(s) this run lacks and this run "
              f"{cov['only_finetuned']} the baseline lacks; only the {cmp['n']} common questions are compared. "
              "Finish the baseline with `python create_vqav2_baseline.py` (same settings).")
    from src.formatting import console_comparison
    from src.i18n import texts

    print()
    print(console_comparison(cmp, texts("en")))
    pairs = cmp["pairs"]
    if pairs and N_CASES > 0:
        print(f"{min(N_CASES, len(pairs))} random cases:")
        for p in random.Random(SEED).sample(pairs, min(N_CASES, len(pairs))):
            print(f"  [{p['question_id']}] {p['question']}  (ground truth: {p['gt_answers'][0]!r}...)")
            print(f"      baseline:   {p['baseline_answer']!r} ({p['baseline_vqa']:.2f})")
            print(f"      fine-tuned: {p['finetuned_answer']!r} ({p['finetuned_vqa']:.2f})")
    print("next: python compare_baseline_finetuned.py" + (f" --output_dir={OUTPUT_DIR}" if OUTPUT_DIR != "outputs" else ""))


if __name__ == "__main__":
    run_main(main)
