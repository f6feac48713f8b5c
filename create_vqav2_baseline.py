"""Zero-shot BLIP-2 on a frozen random sample of the VQAv2 validation questions (README step 3).

    python create_vqav2_baseline.py                                  # 1000 questions of VQAv2 val2014
    python create_vqav2_baseline.py --dataset=vqav2_hub                # VQAv2 val from the hub (lmms-lab/VQAv2), no COCO download
    python create_vqav2_baseline.py --max_samples=5000 --eval_batch=64
    python create_vqav2_baseline.py --quantization=none --max_samples=0 --output_dir=outputs/paper_setting  # as the paper
    python create_vqav2_baseline.py --split=testdev --output_dir=outputs/testdev   # all of test-dev, for EvalAI
    accelerate launch --multi_gpu --num_processes 2 create_vqav2_baseline.py   # several GPUs
    # offline CPU smoke run: the offline twin (python -m twin) on easy-VQA (pip install easy-vqa)
    python -m twin outputs/tiny-blip2
    python create_vqav2_baseline.py --model_id=outputs/tiny-blip2 --quantization=none --dataset=easy_vqa --max_samples=50

Draws MAX_SAMPLES question ids with SEED and freezes them in <output_dir>/vqav2_sample_ids.json
(evaluate_vqav2_finetuned.py reuses exactly these), answers them with the BLIP-2 paper's VQA
prompt and decoding, and writes <output_dir>/vqav2_baseline.jsonl (one row per question),
vqav2_baseline_metrics.json and the official results file vqav2_baseline_results.json. The accuracy comes with its
95% interval; for a checkpoint and prompt with a published number (src/prompts.py PUBLISHED) also that number, the
settings that differ from it, and a warning when the run lands far below it (docs/details.md).
Killed? Run the same command again: finished rows are kept and only the rest is answered.

--split=testdev / --split=test (VQAv2 test-dev2015 / test2015: questions only, the answers are held by
the EvalAI server; data/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json and ..._test2015_questions.json,
images in data/images/test2015/, or --dataset=vqav2_hub): every question of the split is answered
(MAX_TEST_SAMPLES), nothing is scored, and vqa_OpenEnded_mscoco_test-dev2015_vqav2_baseline_results.json
(or ..._test2015_...) is written: the file to submit to EvalAI. It answers every test2015 question, as EvalAI
wants in each phase (the test-dev phase scores the test-dev ones). Use an output folder of its own per split.
"""

import sys

from src.config import apply_overrides
from src.errors import UserError, run_main

# -----------------------------------------------------------------------------
DATASET: str = "vqav2"  # "vqav2" (data/vqa + data/images), "vqav2_hub" (HF_DATASET), "easy_vqa" (pip package) or "tiny"
HF_DATASET: str = "lmms-lab/VQAv2"  # vqav2_hub: hub dataset id, or a local folder holding data/validation-*.parquet
HF_DATASET_REVISION: str = ""  # vqav2_hub: commit hash (or branch/tag) to pin; "" = newest
HUB_STALL_S: float = 120.0  # vqav2_hub: a hub read that brings under 64 KiB for this many seconds stops the run
SPLIT: str = "val"  # "val" (scored here), or "testdev" / "test" (no answers: writes the EvalAI file to submit)
DATA_DIR: str = "data"
MAX_SAMPLES: int = 1000  # val: questions in the frozen sample (0 = the whole split)
MAX_TEST_SAMPLES: int = 0  # testdev / test: questions answered; 0 = all, as EvalAI needs (more: a smoke run, it warns)
SEED: int = 42  # draws the sample
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"
QUANTIZATION: str = "4bit"  # "4bit" (NF4), "8bit" (GPU only) or "none"
EVAL_BATCH: int = 32  # questions per generate() call
NUM_WORKERS: int = 2  # DataLoader workers decoding images while the model generates
VQA_PROMPT: str = "auto"  # the model family's paper prompt: vqa_opt "Question: {} Answer:" (OPT), vqa_t5 "... Short answer:" (Flan-T5)
VQA_DECODING: str = "auto"  # vqa_beam5: beam 5, length penalty -1, 1-10 new tokens (src/prompts.py)
OUTPUT_DIR: str = "outputs"
RUN_NAME: str = "vqav2_baseline"  # file prefix: <run_name>.jsonl, _metrics.json, _results.json
ALLOW_TRAIN_OVERLAP: bool = False  # a merged model: True answers even questions about pictures it trained on
DEBUG: bool = False
# -----------------------------------------------------------------------------


def main():
    from src.preflight import (check_model, check_output_dir, check_output_files, check_train_overlap, check_value,
                               trained_folder, training_data_note)

    config = apply_overrides(globals(), check=check_value)
    if SPLIT in ("testdev", "test") and any(a.lower().startswith(("--max_samples=", "--max-samples=")) for a in sys.argv[1:]):
        raise UserError(f"--max_samples={MAX_SAMPLES} draws the val sample; --split={SPLIT} answers every question, "
                        f"as EvalAI needs (for a smoke run: --max_test_samples={MAX_SAMPLES})")
    from src.data import (TEST_SPLITS, freeze_sample, hub_record, image_set, load_samples, read_frozen_sample,
                          submission_question_ids)
    from src.evaluation import SAMPLE_IDS_FILE, eval_record, evalai_file_name, run_vqa, score_and_write
    from src.formatting import reference_lines
    from src.i18n import texts
    from src.modeling import generation_names, load_blip2, make_accelerator
    from src.locks import hold_output_lock

    accelerator = make_accelerator()  # one process, or one per GPU under `accelerate launch`
    check_model(MODEL_ID, QUANTIZATION, str(accelerator.device))
    out_dir = check_output_dir(OUTPUT_DIR)
    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, VQA_PROMPT, VQA_DECODING)  # "auto": the model family's own
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
    testing = SPLIT in TEST_SPLITS  # no answers: nothing is scored, the EvalAI file is written
    written = [f"{RUN_NAME}{suffix}" for suffix in (".jsonl", "_metrics.json", "_results.json", "_config.json")]
    check_output_files(out_dir, [SAMPLE_IDS_FILE, *written] + ([evalai_file_name(SPLIT, RUN_NAME)] if testing else []))
    with hold_output_lock(out_dir, enabled=accelerator.is_main_process):  # one run writes into a folder
        # 1. the data, and the sample drawn once and frozen: every rerun and the fine-tuned evaluation reuse it
        samples = load_samples(DATASET, SPLIT, DATA_DIR, hf_dataset=HF_DATASET, hf_revision=HF_DATASET_REVISION,
                               cache_dir=out_dir, hub_stall_s=HUB_STALL_S)
        if DATASET == "vqav2_hub":  # the dataset and commit read (the default may have moved): in _config.json
            config["hub_source"] = hub_record(out_dir, SPLIT)
        submission_ids = submission_question_ids(samples, DATASET, SPLIT, DATA_DIR, hf_dataset=HF_DATASET,
                                                 hf_revision=HF_DATASET_REVISION, cache_dir=out_dir,
                                                 hub_stall_s=HUB_STALL_S) if testing else None
        n = MAX_TEST_SAMPLES if testing else MAX_SAMPLES
        if accelerator.is_main_process:
            freeze_sample(out_dir / SAMPLE_IDS_FILE, DATASET, SPLIT, samples, n, SEED)
        accelerator.wait_for_everyone()
        chosen = read_frozen_sample(out_dir / SAMPLE_IDS_FILE, samples, DATASET, SPLIT, cache_dir=out_dir,
                                    hub_stall_s=HUB_STALL_S)
        if testing and len(chosen) < len(samples) and accelerator.is_main_process:
            print(f"warning: --max_test_samples={MAX_TEST_SAMPLES}: EvalAI wants an answer for every one of the "
                  f"{len(samples):,} {SPLIT} questions; this run answers {len(chosen):,} and the EvalAI file gives the "
                  "rest \"\" (scored as wrong): a smoke run, not a submission (--max_test_samples=0 and another "
                  "--output_dir for that)", flush=True)
        if trained := trained_folder(None, MODEL_ID):  # a merged model: the leakage guard on its adapter's record
            config["training_data"] = check_train_overlap(trained, [(image_set(DATASET, SPLIT), s.image_id)
                                                                    for s in chosen], ALLOW_TRAIN_OVERLAP)
            if accelerator.is_main_process:
                print(training_data_note(config["training_data"], trained), flush=True)
        # 2. the base model answers (resumable: rows already written are kept)
        model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=str(accelerator.device))
        vqa_prompt, vqa_decoding = generation_names(MODEL_ID, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
        config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
        record = eval_record(model_id=MODEL_ID, adapter=None, quantization=QUANTIZATION, dataset=DATASET,
                             vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, split=SPLIT)
        run_vqa(chosen, out_dir / f"{RUN_NAME}.jsonl", model=model, processor=processor, accelerator=accelerator,
                record=record, batch_size=EVAL_BATCH, num_workers=NUM_WORKERS, desc=RUN_NAME)
        # 3. score (val) and write, or write the EvalAI file (testdev / test) (main process)
        if accelerator.is_main_process:
            score_and_write(chosen, out_dir, RUN_NAME, config=config, record=record, split=SPLIT,
                            submission_ids=submission_ids,
                            published_lines=lambda ref: reference_lines(ref, texts("en")))


if __name__ == "__main__":
    run_main(main)
