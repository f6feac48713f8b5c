"""Evaluate the QLoRA-fine-tuned BLIP-2 on exactly the baseline's questions (README step 5).

    python evaluate_vqav2_finetuned.py
    python evaluate_vqav2_finetuned.py --dataset=vqav2_hub             # when the baseline used the hub dataset
    python evaluate_vqav2_finetuned.py --adapter_dir=outputs/lora_adapter --eval_batch=64
    accelerate launch --multi_gpu --num_processes 2 evaluate_vqav2_finetuned.py
    # offline CPU smoke run, after the smoke runs of create_vqav2_baseline.py and finetune_vqav2_lora.py:
    python evaluate_vqav2_finetuned.py --model_id=outputs/tiny-blip2 --quantization=none --dataset=easy_vqa

Reuses the frozen sample <output_dir>/vqav2_sample_ids.json, the same prompt and decoding, loads
the base model with the adapter in ADAPTER_DIR (default <output_dir>/lora_adapter), and writes
vqav2_finetuned.jsonl, vqav2_finetuned_metrics.json and vqav2_finetuned_results.json. Then prints
exact match and VQA accuracy of baseline and fine-tuned with the change, per answer type, the paired
bootstrap 95% interval of the change (resampling whole images), how many questions got better / worse / stayed, and N_CASES
random cases side by side. ADAPTER_DIR="" is refused: the base model's run is create_vqav2_baseline.py.
--split=testdev / --split=test (after create_vqav2_baseline.py with that split and --output_dir): the
baseline's questions are answered, nothing is scored or compared (no public answers), and
vqa_OpenEnded_mscoco_test-dev2015_vqav2_finetuned_results.json (or ..._test2015_...) is the file to submit to EvalAI.
Questions about pictures the adapter trained on (its training_config.json records them) are refused in one
line before the model loads; --allow_train_overlap=True evaluates them anyway and the results config says how many.
"""

from src.config import apply_overrides, next_command
from src.errors import run_main

# -----------------------------------------------------------------------------
DATASET: str = "vqav2"  # must be the dataset the baseline sample was drawn from ("vqav2", "vqav2_hub", "easy_vqa", "tiny")
HF_DATASET: str = "lmms-lab/VQAv2"  # vqav2_hub: the baseline's hub dataset id or local parquet folder
HF_DATASET_REVISION: str = ""  # vqav2_hub: the baseline's revision; "" = newest
SPLIT: str = "val"  # the baseline's split: "val", or "testdev" / "test" (no answers: writes the EvalAI file, no comparison)
DATA_DIR: str = "data"
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"  # the base model the adapter was trained on
QUANTIZATION: str = "4bit"  # keep it equal to the baseline's for a fair comparison
ADAPTER_DIR: str = "{output_dir}/lora_adapter"  # the adapter finetune_vqav2_lora.py wrote ({output_dir} = OUTPUT_DIR)
EVAL_BATCH: int = 32
NUM_WORKERS: int = 2
VQA_PROMPT: str = "auto"  # the baseline's: "auto" = the model family's own (vqa_opt for OPT, vqa_t5 for Flan-T5)
VQA_DECODING: str = "auto"  # the baseline's: "auto" = vqa_beam5 (beam 5, length penalty -1, 1-10 new tokens)
OUTPUT_DIR: str = "outputs"  # holds vqav2_sample_ids.json and vqav2_baseline.jsonl
BASELINE_RUN: str = "vqav2_baseline"
RUN_NAME: str = "vqav2_finetuned"
N_CASES: int = 5  # random questions printed side by side
BOOTSTRAP_RESAMPLES: int = 1000
SEED: int = 0  # for the cases and the bootstrap
ALLOW_TRAIN_OVERLAP: bool = False  # True: evaluate even questions about pictures the adapter trained on (the results say so)
DEBUG: bool = False
# -----------------------------------------------------------------------------


def main():
    from src.preflight import (check_adapter_fits, check_model, check_output_dir, check_output_files,
                               check_train_overlap, check_value, training_data_note)

    config = apply_overrides(globals(), check=check_value)
    from src.data import TEST_SPLITS, hub_record, image_set, load_samples, read_frozen_sample, submission_question_ids
    from src.errors import UserError
    from src.evaluation import (SAMPLE_IDS_FILE, eval_record, evalai_file_name, no_answers_line, run_vqa,
                                score_and_write)
    from src.compare import check_result_rows, check_same_setup, print_comparison, settings_of
    from src.files import read_jsonl_lines, resolved_if_local
    from src.modeling import apply_adapter, generation_names, load_blip2, make_accelerator, resolve_adapter_dir
    from src.locks import hold_output_lock

    out_dir = check_output_dir(OUTPUT_DIR)  # an empty --output_dir= is refused before anything else
    adapter = resolve_adapter_dir(ADAPTER_DIR, OUTPUT_DIR)
    if adapter is None:
        raise UserError("--adapter_dir= is empty: this script evaluates a fine-tuned LoRA adapter (default "
                        "{output_dir}/lora_adapter); the base model's answers come from python create_vqav2_baseline.py")
    testing = SPLIT in TEST_SPLITS  # no answers: nothing to score or compare, the EvalAI file is written
    baseline_path = out_dir / f"{BASELINE_RUN}.jsonl"
    if not baseline_path.exists() and not testing:  # a test split needs only the baseline's frozen sample
        raise UserError(f"baseline results not found: {baseline_path}; run `python create_vqav2_baseline.py` "
                        "first (same --output_dir and --dataset)")
    base_rows = check_result_rows(read_jsonl_lines(baseline_path), baseline_path) \
        if baseline_path.exists() else []  # a bad line: said now, not after
    config["adapter_dir"] = adapter
    vqa_prompt, vqa_decoding = generation_names(MODEL_ID, VQA_PROMPT, VQA_DECODING)  # "auto": the model family's own
    config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
    differs: list[str] = []  # said before the work: a fair comparison needs the baseline's setup
    check_same_setup(settings_of(base_rows, str(baseline_path), differs),
                     {"model_id": resolved_if_local(MODEL_ID), "quantization": QUANTIZATION, "adapter": adapter}, differs)
    for line in differs:
        print(f"warning: {line}", flush=True)
    accelerator = make_accelerator()  # one process, or one per GPU under `accelerate launch`
    check_model(MODEL_ID, QUANTIZATION, str(accelerator.device), adapter)
    written = [f"{RUN_NAME}{suffix}" for suffix in (".jsonl", "_metrics.json", "_results.json", "_config.json")]
    check_output_files(out_dir, [SAMPLE_IDS_FILE, *written] + ([evalai_file_name(SPLIT, RUN_NAME)] if testing else []))
    with hold_output_lock(out_dir, enabled=accelerator.is_main_process):  # one run writes into a folder
        # 1. the data, and the baseline's frozen sample
        samples = load_samples(DATASET, SPLIT, DATA_DIR, hf_dataset=HF_DATASET, hf_revision=HF_DATASET_REVISION,
                               cache_dir=out_dir)
        if DATASET == "vqav2_hub":  # the dataset and commit read (the default may have moved): in _config.json
            config["hub_source"] = hub_record(out_dir, SPLIT)
        chosen = read_frozen_sample(out_dir / SAMPLE_IDS_FILE, samples, DATASET, SPLIT, cache_dir=out_dir)
        # the leakage guard: questions about the adapter's training pictures are refused (or, allowed, recorded)
        config["training_data"] = check_train_overlap(adapter, [(image_set(DATASET, SPLIT), s.image_id) for s in chosen],
                                                      ALLOW_TRAIN_OVERLAP)
        if accelerator.is_main_process:
            print(training_data_note(config["training_data"], adapter), flush=True)
        submission_ids = submission_question_ids(samples, DATASET, SPLIT, DATA_DIR, hf_dataset=HF_DATASET,
                                                 hf_revision=HF_DATASET_REVISION, cache_dir=out_dir) if testing else None
        # 2. the base model with the adapter answers (resumable: rows already written are kept)
        model, processor = load_blip2(MODEL_ID, QUANTIZATION, device=str(accelerator.device))
        if adapter:
            check_adapter_fits(model, adapter)  # trained on this very base, or one line says what to pass
            model = apply_adapter(model, adapter)
        vqa_prompt, vqa_decoding = generation_names(MODEL_ID, vqa_prompt, vqa_decoding, model)  # a hub id seen the first time
        config.update(vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding)
        record = eval_record(model_id=MODEL_ID, adapter=adapter, quantization=QUANTIZATION, dataset=DATASET,
                             vqa_prompt=vqa_prompt, vqa_decoding=vqa_decoding, split=SPLIT)
        run_vqa(chosen, out_dir / f"{RUN_NAME}.jsonl", model=model, processor=processor, accelerator=accelerator,
                record=record, batch_size=EVAL_BATCH, num_workers=NUM_WORKERS, desc=RUN_NAME)
        if not accelerator.is_main_process:
            return
        # 3. score and write
        rows, _ = score_and_write(chosen, out_dir, RUN_NAME, config=config, record=record, split=SPLIT,
                                  submission_ids=submission_ids)
    if testing:  # 4. nothing to compare without answers
        print("no baseline comparison: " + no_answers_line(f"{RUN_NAME}.jsonl", SPLIT,
                                                           out_dir / evalai_file_name(SPLIT, RUN_NAME)))
        return
    # 4. against the baseline, question by question
    print_comparison(base_rows, rows, n_cases=N_CASES, n_resamples=BOOTSTRAP_RESAMPLES, seed=SEED)
    print(next_command("compare_baseline_finetuned.py", output_dir=OUTPUT_DIR if OUTPUT_DIR != "outputs" else None,
                       finetuned_file=f"{RUN_NAME}.jsonl" if RUN_NAME != "vqav2_finetuned" else None,
                       allow_train_overlap=ALLOW_TRAIN_OVERLAP or None))


if __name__ == "__main__":
    run_main(main)
