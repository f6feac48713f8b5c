"""QLoRA fine-tuning of BLIP-2 on VQAv2 train (README step 4): 4-bit NF4 base + LoRA adapters.

    python finetune_vqav2_lora.py                                   # 1000 steps on VQAv2 train2014
    python finetune_vqav2_lora.py --dataset=vqav2_hub               # no COCO: the hub's val minus the evaluated pictures
    python finetune_vqav2_lora.py --train_steps=2000 --per_device_batch=8 --lr=1e-4
    python finetune_vqav2_lora.py --model_id=Salesforce/blip2-flan-t5-xl   # any BLIP-2 checkpoint (OPT or Flan-T5)
    python finetune_vqav2_lora.py --report_to=tensorboard            # curves: tensorboard --logdir outputs/tf-logs
    python finetune_vqav2_lora.py --eval_every=200                   # held-out accuracy every 200 steps, best adapter kept
    accelerate launch --multi_gpu --num_processes 2 finetune_vqav2_lora.py   # data-parallel on 2 GPUs
    # offline CPU smoke run: the offline twin (python -m twin) on easy-VQA (pip install easy-vqa)
    python -m twin outputs/tiny-blip2
    python finetune_vqav2_lora.py --model_id=outputs/tiny-blip2 --dataset=easy_vqa --train_steps=20 --lr=3e-3

The example is laid out for the model's family (src/family.py, read from its config). OPT: the
evaluation prompt "Question: {q} Answer:" followed by " {answer}" and the end token (the newline), the
loss on the answer tokens only (image, prompt and padding are masked). Flan-T5: the prompt
"Question: {q} Short answer:" goes to the encoder, "{answer}</s>" is the decoder's target. The answer
is the most frequent of the ten human answers. The adapter records its training questions
(training_config.json "training_data", and for val-trained ones the picture ids): every evaluation refuses
questions about those pictures unless told --allow_train_overlap=True. Every SAVE_EVERY steps a checkpoint (adapter,
optimizer, scheduler, step, RNG, config) goes to <output_dir>/lora_adapter_checkpoints/; a rerun of
the same command resumes from the newest one. The final adapter (safetensors), processor,
resolved config, train_log.jsonl and loss_curve.png go to <output_dir>/lora_adapter/.
With --eval_every=N the model answers a frozen held-out slice of val questions (EVAL_SAMPLES, on images in
neither the training examples nor the frozen evaluation sample) every N steps and after the last, scored
with the official VQA metric: the step's row of train_log.jsonl gets a "heldout" entry, loss_curve.png a
second panel, and the adapter of the best held-out accuracy is kept in <output_dir>/lora_adapter_best/.
With --report_to=tensorboard the same steps' loss, learning rate, gradient norm and skipped-step count
also go to TensorBoard, in <log_dir>/<output folder's name>-<hash of its path>/; a resumed run continues that curve.
"""

from src.config import apply_overrides, next_command
from src.errors import run_main

# -----------------------------------------------------------------------------
DATASET: str = "vqav2"  # "vqav2" (COCO train2014 + JSON), "vqav2_hub" (the hub's val minus the evaluated pictures,
                         # no COCO download: after create_vqav2_baseline.py --dataset=vqav2_hub), "easy_vqa" or "tiny"
HF_DATASET: str = "lmms-lab/VQAv2"  # vqav2_hub: the baseline's hub dataset id or local parquet folder
HF_DATASET_REVISION: str = ""  # vqav2_hub: the baseline's revision; "" = newest
HUB_STALL_S: float = 120.0  # vqav2_hub: a hub read that brings under 64 KiB for this many seconds stops the run
DATA_DIR: str = "data"
MAX_SAMPLES: int = 0  # training questions to draw with SEED (0 = the whole train split, or vqav2_hub's whole pool)
MODEL_ID: str = "Salesforce/blip2-opt-2.7b"
USE_4BIT: bool = True  # QLoRA: frozen base in 4-bit NF4 with double quantisation
LORA_R: int = 16  # LoRA rank (bench/ reads the LoRA settings from here)
LORA_ALPHA: int = 32
LORA_DROPOUT: float = 0.05
TARGET_MODULES: str | list = "auto"  # Linear layers to adapt: "auto" = the family's for the scope (language model: OPT
                         # q_proj,k_proj,v_proj,out_proj,fc1,fc2, Flan-T5 q,k,v,o,wi_0,wi_1,wo; Q-Former: query,key,
                         # value,dense + language_projection); or a list / comma-separated names ...
LORA_SCOPE: str = "language_model"  # ... inside "language_model", "qformer" or "both" (docs/lora_scopes.md)
TRAIN_STEPS: int = 1000  # optimizer steps
PER_DEVICE_BATCH: int = 4  # questions per process per micro-batch
GRAD_ACCUM: int = 4  # micro-batches per optimizer step
LR: float = 1e-4  # peak learning rate (AdamW)
WARMUP_STEPS: int = 50  # linear warmup, then cosine decay to 0
WEIGHT_DECAY: float = 0.0
MAX_GRAD_NORM: float = 1.0
GRADIENT_CHECKPOINTING: bool = True
SAVE_EVERY: int = 200  # steps between checkpoints
KEEP_CHECKPOINTS: int = 2  # newest checkpoints kept
NUM_WORKERS: int = 2  # DataLoader workers decoding images
SEED: int = 42
VQA_PROMPT: str = "auto"  # the evaluation's prompt: "auto" = the family's own (vqa_opt for OPT, vqa_t5 for Flan-T5)
PREVIEW_SAMPLES: int = 8  # after training, answer this many held-out (val) questions with the trained model
PREVIEW_DECODING: str = "auto"  # decoding of that preview (the evaluation's; "auto" = vqa_beam5)
EVAL_EVERY: int = 0  # steps between held-out evaluations (and one after the last step); 0 = none
EVAL_SAMPLES: int = 200  # questions of the held-out slice (val, on images in neither the training data nor the
                         # frozen evaluation sample; drawn once with SEED into <output_dir>/heldout_sample_ids.json)
EVAL_DECODING: str = "auto"  # their decoding: "auto" = the evaluation's preset (vqa_beam5); greedy is cheaper
OUTPUT_DIR: str = "outputs"
REPORT_TO: str = ""  # "tensorboard": per-step curves in LOG_DIR (pip install tensorboard); "" = none
LOG_DIR: str = "{output_dir}/tf-logs"  # the tracker's folder ({output_dir} = OUTPUT_DIR); AutoDL's panel reads /root/tf-logs
DEBUG: bool = False
# -----------------------------------------------------------------------------

# settings a resumed run must share with the checkpoint it resumes from
RESUME_MUST_MATCH = ("dataset", "training_data", "max_samples", "model_id", "use_4bit", "lora_r", "lora_alpha",
                     "lora_dropout", "target_modules", "lora_scope", "train_steps", "per_device_batch", "grad_accum", "lr",
                     "warmup_steps", "weight_decay", "seed", "vqa_prompt", "world_size")


def main():
    from src.preflight import check_model, check_output_dir, check_value

    config = apply_overrides(globals(), check=check_value)
    import torch

    from src.locks import hold_output_lock
    from src.family import OPT, T5, family_of
    from src.modeling import known_family, load_blip2_config, make_accelerator, mixed_precision
    from src.tracking import check_report_to

    tracker = check_report_to(REPORT_TO)  # an unknown name or a missing package: one line, before any work
    log_dir = LOG_DIR.replace("{output_dir}", OUTPUT_DIR.rstrip("/\\") or OUTPUT_DIR)

    # every value was checked by src.preflight.check_value: counts, LR, dropout, prompt, decoding
    device = "cuda" if torch.cuda.is_available() else "cpu"
    family = known_family(MODEL_ID)  # no download (a hub id seen the first time: known once it loads)
    if family is None and mixed_precision(device, OPT) != mixed_precision(device, T5):
        family = family_of(load_blip2_config(MODEL_ID))  # a GPU without bf16: the precision depends on it
    if family is not None:
        resolve_family_settings(config, family)
    # bf16 on GPUs with native bf16, fp16 with loss scaling on older ones (T4, V100; fp32 for Flan-T5), fp32 on CPU
    mixed = mixed_precision(device, family or OPT)
    # accumulate() in src.training.training_step syncs gradients on every GRAD_ACCUM-th micro-batch
    tracking = {"log_with": tracker, "project_dir": log_dir} if tracker else {}
    accelerator = make_accelerator(mixed_precision=mixed, gradient_accumulation_steps=GRAD_ACCUM, **tracking)
    config["world_size"] = accelerator.num_processes
    check_model(MODEL_ID, "4bit" if USE_4BIT else "none", str(accelerator.device))
    out_dir = check_output_dir(OUTPUT_DIR)
    if tracker:
        check_output_dir(log_dir, "--log_dir")
    with hold_output_lock(out_dir, enabled=accelerator.is_main_process):  # one run writes into a folder
        train(config, accelerator, out_dir, mixed, tracker)


def train(config: dict, accelerator, out_dir, mixed: str, tracker: str | None = None):
    """Load the data and the model, resume from the newest good checkpoint, train, save the adapter."""
    import functools

    from accelerate.utils import set_seed

    from src.family import family_of
    from src.modeling import base_fingerprint, end_token_id, load_blip2
    from src import tracking, training as T

    ckpt_root = out_dir / "lora_adapter_checkpoints"
    if DATASET == "vqav2_hub":  # val minus the evaluated pictures: the slice first, then the pool leaves it out
        with accelerator.main_process_first():  # one process downloads the slice's pictures and writes its file
            heldout = draw_heldout(out_dir, [], write=accelerator.is_main_process, train_split="val")
        samples = training_samples(config, out_dir, accelerator, frozenset(s.image_id for s in heldout))
    else:
        samples = training_samples(config, out_dir, accelerator)
        heldout = draw_heldout(out_dir, samples, write=accelerator.is_main_process)  # [] without --eval_every
    set_seed(SEED)
    lora = lora_settings()
    model, processor = load_blip2(MODEL_ID, "4bit" if USE_4BIT else "none", device=str(accelerator.device))
    resolve_family_settings(config, family_of(model.config))  # "auto" settings of a hub id seen the first time
    config["base_fingerprint"] = base_fingerprint(model)  # what the adapter is applied to later is compared with it
    model_config, end_id = model.config, end_token_id(model)
    model = T.set_train_mode(T.add_lora(model, lora, gradient_checkpointing=GRADIENT_CHECKPOINTING))
    optimizer, scheduler = T.make_optimizer(model, LR, WEIGHT_DECAY, WARMUP_STEPS, TRAIN_STEPS)
    trainable, total = model.get_nb_trainable_parameters()  # peft's count: 4-bit weights unpacked
    wrapped = model.base_model.targeted_module_names

    # not the scheduler: accelerate's wrapper would step it once per process at every optimizer step
    model, optimizer = accelerator.prepare(model, optimizer)
    ckpt, start_step = resume(config, ckpt_root, accelerator, model, optimizer, scheduler)
    world = accelerator.num_processes
    read_batch = functools.partial(T.train_batch, samples=samples, processor=processor, model_config=model_config,
                                   end_id=end_id, prompt=VQA_PROMPT, seed=SEED, micro_batch=PER_DEVICE_BATCH,
                                   world_size=world, rank=accelerator.process_index)
    if accelerator.is_main_process:
        print("***** Running QLoRA fine-tuning *****")
        split = config["training_data"]["split"]
        print(f"  examples: {len(samples)} ({DATASET} {split})   steps: {TRAIN_STEPS} (from {start_step})   "
              f"batch: {PER_DEVICE_BATCH} x {GRAD_ACCUM} accum x {world} process(es) = "
              f"{PER_DEVICE_BATCH * GRAD_ACCUM * world} per step")
        print(f"  base: {MODEL_ID} ({'4-bit NF4' if USE_4BIT else 'full precision'})   mixed precision: {mixed}")
        print(f"  trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
        print(f"  LoRA r={LORA_R} alpha={LORA_ALPHA} dropout={LORA_DROPOUT} on {len(wrapped)} modules: "
              f"{T.describe_wrapped(wrapped)}")
        if ckpt is not None:
            print(f"  resumed from {ckpt}")
    curves = tracking.OptionalCurves(accelerator, on=bool(tracker) and accelerator.is_main_process)
    if tracker:
        start_tracking(accelerator, curves, tracker, config, out_dir, start_step)
    curve = HeldoutCurve(heldout, config, accelerator, model, processor, out_dir, curves)
    if curve.due(start_step):  # a run killed during the held-out evaluation of the step it resumes from
        curve.point(start_step)
    run_steps(config, accelerator, model, optimizer, scheduler, read_batch, start_step, ckpt_root, curves, curve)
    check_replicas_agree(accelerator, model)
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(model), processor, config, out_dir, ckpt_root / "train_log.jsonl", curve)
    # every rank waits for the main process to finish saving before the process group goes away
    accelerator.wait_for_everyone()
    curves.call("end_training")


# --- the training questions: the train split, or for vqav2_hub the val split minus every evaluated picture --

def training_samples(config: dict, out_dir, accelerator, heldout_image_ids: frozenset[int] = frozenset()) -> list:
    """The training questions (MAX_SAMPLES of them drawn with SEED), and their record in config["training_data"]
    (+ "training_image_ids" for a val-trained adapter), which the evaluations check (src.preflight.check_train_overlap).
    vqav2_hub has no train split: its pool is val minus the pictures of the frozen evaluation sample and of the
    held-out slice (`heldout_image_ids`: the same on every run of an output folder, or resume refuses), and only
    the pictures of the rows the steps read are cached (main process first)."""
    import hashlib

    from src.data import (hub_record, image_set, load_samples, materialize_images, read_sample_ids, sample_question_ids,
                          select)
    from src.errors import UserError
    from src.evaluation import SAMPLE_IDS_FILE
    from src.files import read_json

    split, record = "train", {}
    if DATASET != "vqav2_hub":
        pool, excluded = load_samples(DATASET, "train", DATA_DIR), set()
        record["excluded"] = "nothing: the train split shares no picture with val, test-dev or test"
    else:
        split, frozen_path = "val", out_dir / SAMPLE_IDS_FILE
        if not frozen_path.exists():
            raise UserError(f"fine-tuning on vqav2_hub trains on VQAv2 val minus the pictures of the frozen evaluation "
                            f"sample, and {frozen_path} does not exist yet: run step 3 first, python "
                            f"create_vqav2_baseline.py --dataset=vqav2_hub --output_dir={OUTPUT_DIR}")
        pool = load_samples(DATASET, split, hf_dataset=HF_DATASET, hf_revision=HF_DATASET_REVISION,
                            cache_dir=out_dir, hub_stall_s=HUB_STALL_S)
        frozen = read_json(frozen_path, "sample-ids file")
        evaluated = set()  # a frozen test-dev / test sample asks about test2015 pictures: none of val's
        if isinstance(frozen, dict) and frozen.get("split") == split:  # drawn from vqav2_hub or vqav2 (same pictures)
            evaluated = {s.image_id for s in select(pool, read_sample_ids(frozen_path, frozen.get("dataset"), split),
                                                    str(frozen_path))}
        excluded = evaluated | set(heldout_image_ids)
        pool = [s for s in pool if s.image_id not in excluded]
        record["excluded"] = (f"the {len(evaluated):,} pictures of the frozen evaluation sample ({SAMPLE_IDS_FILE})"
                              + (f" and {len(heldout_image_ids):,} of the held-out slice" if heldout_image_ids else ""))
    if MAX_SAMPLES:
        pool = select(pool, sample_question_ids(pool, MAX_SAMPLES, SEED), f"{DATASET} {split}")
    read = rows_the_steps_read(len(pool), accelerator.num_processes)
    if DATASET == "vqav2_hub":
        with accelerator.main_process_first():  # one process downloads, the others then find the files
            cached = materialize_images([pool[i] for i in read], DATASET, out_dir, split, HUB_STALL_S)
        for i, s in zip(read, cached):
            pool[i] = s
    image_ids = sorted({pool[i].image_id for i in read})
    source = hub_record(out_dir, split) if DATASET == "vqav2_hub" else {}  # the dataset and commit read
    config["training_data"] = {
        "dataset": DATASET, "split": split, "images_from": image_set(DATASET, split),
        "hf_dataset": source.get("dataset"), "revision": source.get("revision"),
        "questions": len(read), "images": len(image_ids), "pool_questions": len(pool),
        "pool_images": len({s.image_id for s in pool}), "excluded_images": len(excluded), **record,
        "image_ids_sha256": hashlib.sha256(",".join(map(str, image_ids)).encode()).hexdigest()}
    if split != "train":  # a split that evaluations read: the guard needs the very pictures
        config["training_image_ids"] = image_ids
    if accelerator.is_main_process:
        from src.preflight import describe_training_data

        print(f"training data: {describe_training_data(config['training_data'])}; the steps read "
              f"{len(read):,} of the pool's {len(pool):,} questions", flush=True)
    return pool


def rows_the_steps_read(n: int, world: int) -> list[int]:
    """The indices into n training samples that TRAIN_STEPS optimizer steps read on `world` processes: each
    epoch's seeded permutation of src.training.micro_batch_indices, as far as the steps go into it."""
    import torch

    from src.training import micro_batch_indices

    micro_batch_indices(n, SEED, PER_DEVICE_BATCH, 0, world, 0)  # fewer samples than one global batch: its line
    per_epoch = n // (PER_DEVICE_BATCH * world) * PER_DEVICE_BATCH * world
    left, epoch, rows = TRAIN_STEPS * GRAD_ACCUM * PER_DEVICE_BATCH * world, 0, set()
    while left > 0 and len(rows) < n:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch))
        rows.update(perm[:min(left, per_epoch)].tolist())
        left, epoch = left - per_epoch, epoch + 1
    return sorted(rows)


def preview_questions(out_dir) -> list:
    """Val questions the adapter never trained on, for the preview: vqav2_hub's frozen evaluation sample
    (its pictures are cached), else the whole val split."""
    from src.data import read_frozen_sample
    from src.evaluation import SAMPLE_IDS_FILE

    val = val_samples(out_dir)
    if DATASET != "vqav2_hub":
        return val
    return read_frozen_sample(out_dir / SAMPLE_IDS_FILE, val, DATASET, "val", out_dir, HUB_STALL_S)


def val_samples(out_dir) -> list:
    """The val split of DATASET (vqav2_hub: the question table, cached in the output folder; no pictures yet)."""
    from src.data import load_samples

    if DATASET != "vqav2_hub":
        return load_samples(DATASET, "val", DATA_DIR)
    return load_samples(DATASET, "val", hf_dataset=HF_DATASET, hf_revision=HF_DATASET_REVISION, cache_dir=out_dir,
                        hub_stall_s=HUB_STALL_S)


HELDOUT_FILE = "heldout_sample_ids.json"  # the held-out slice, in the output folder beside the evaluation's sample


def draw_heldout(out_dir, train_samples, write: bool, train_split: str = "train") -> list:
    """The held-out slice: EVAL_SAMPLES val questions drawn once with SEED from the images in neither the
    training examples (by file, and by image id when they come from val too) nor the frozen evaluation sample
    (by image id), frozen in <output_dir>/heldout_sample_ids.json and read back from there; [] when EVAL_EVERY
    is 0."""
    if not EVAL_EVERY:
        return []
    from src.data import materialize_images, read_sample_ids, sample_question_ids, select
    from src.errors import UserError
    from src.evaluation import SAMPLE_IDS_FILE
    from src.files import read_json, write_json

    path, eval_path = out_dir / HELDOUT_FILE, out_dir / SAMPLE_IDS_FILE
    val = val_samples(out_dir)
    if path.exists():
        ids, frozen = read_sample_ids(path, DATASET, "val"), read_json(path, "held-out slice file")
        if (frozen.get("seed"), frozen.get("eval_samples")) != (SEED, EVAL_SAMPLES):
            raise UserError(f"{path} holds a held-out slice drawn with seed={frozen.get('seed')} "
                            f"eval_samples={frozen.get('eval_samples')}, but this run asks for --seed={SEED} "
                            f"--eval_samples={EVAL_SAMPLES}; the slice is frozen: use those settings, or another "
                            "--output_dir for a new slice")
        return materialize_images(select(val, ids, str(path)), DATASET, out_dir, "val", HUB_STALL_S)
    if not eval_path.exists():
        raise UserError(f"--eval_every={EVAL_EVERY}: the held-out slice must avoid the images of the frozen evaluation "
                        f"sample {eval_path}, which is not there yet; run create_vqav2_baseline.py first (README step 3, "
                        "same --output_dir and --dataset), or train with --eval_every=0")
    taken = {s.image_id for s in select(val, read_sample_ids(eval_path, DATASET, "val"), str(eval_path))}
    if train_split == "val":  # one split: the same image id is the same picture
        taken |= {s.image_id for s in train_samples}
    trained = {s.image_path for s in train_samples}
    pool = [s for s in val if s.image_id not in taken and s.image_path not in trained]
    if not pool:
        raise UserError(f"--eval_every={EVAL_EVERY}: every {DATASET} val image is in the training examples or the "
                        f"frozen evaluation sample, so no held-out slice can be drawn; use another --dataset, "
                        "or train with --eval_every=0")
    chosen = select(pool, sample_question_ids(pool, EVAL_SAMPLES, SEED), f"{DATASET} val")
    chosen = materialize_images(chosen, DATASET, out_dir, "val", HUB_STALL_S)  # vqav2_hub: cache the pictures
    if write:  # every process draws the same slice; one writes it
        write_json(path, {"dataset": DATASET, "split": "val", "seed": SEED, "eval_samples": EVAL_SAMPLES,
                          "n": len(chosen), "question_ids": [s.question_id for s in chosen],
                          "image_ids": sorted({s.image_id for s in chosen}),
                          "excluded": f"images of {SAMPLE_IDS_FILE} and of the training examples"})
    return chosen


class HeldoutCurve:
    """The held-out accuracy at every EVAL_EVERY-th step and the last: the slice answered with the
    evaluation's prompt and batched code (src.evaluation.run_vqa: split over the processes, gathered,
    resumable), scored with the official metric, written into that step's row of the training log and the
    tracker; the adapter of the best step (the earliest on a tie) is kept in <output_dir>/lora_adapter_best/."""

    def __init__(self, heldout: list, config: dict, accelerator, model, processor, out_dir, curves):
        self.heldout, self.config, self.accelerator, self.curves = heldout, config, accelerator, curves
        self.model, self.processor = model, processor
        self.ckpt_root = out_dir / "lora_adapter_checkpoints"
        self.log_path = self.ckpt_root / "train_log.jsonl"
        self.best_dir = out_dir / "lora_adapter_best"

    def due(self, step: int) -> bool:
        return bool(self.heldout) and step > 0 and (step % EVAL_EVERY == 0 or step == TRAIN_STEPS)

    def point(self, step: int) -> None:
        """Answer and score the slice with the model of `step` (its checkpoint is saved already)."""
        import json

        import torch

        from src.evaluation import eval_record, read_rows, run_vqa
        from src.files import read_jsonl, write_jsonl
        from src.vqa_eval import score_rows
        from src import tracking, training as T

        acc, model = self.accelerator, self.accelerator.unwrap_model(self.model)
        answers = self.ckpt_root / "heldout" / f"step-{step:06d}.jsonl"
        record = eval_record(model_id=MODEL_ID, adapter=f"step {step}", quantization="4bit" if USE_4BIT else "none",
                             dataset=DATASET, vqa_prompt=VQA_PROMPT, vqa_decoding=EVAL_DECODING, split="val")
        model.eval()
        # answering takes no randomness from training: a run resumed after this point continues identically
        with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
            run_vqa(self.heldout, answers, model=model, processor=self.processor, accelerator=acc, record=record,
                    batch_size=PER_DEVICE_BATCH, desc=f"held-out (step {step})")
        T.set_train_mode(model)
        if not acc.is_main_process:
            return
        scored = score_rows([r for r in read_rows(answers).values() if not r.get("error")])
        point = {"accuracy": scored["vqa_accuracy"], "questions": scored["n"], "decoding": EVAL_DECODING,
                 "per_answer_type": {t: m["vqa_accuracy"] for t, m in sorted(scored["per_answer_type"].items())}}
        print(f"held-out accuracy at step {step}: {point['accuracy']:.2f} ("
              + ", ".join(f"{t} {a:.2f}" for t, a in point["per_answer_type"].items())
              + f"; {point['questions']} questions, {EVAL_DECODING})", flush=True)
        rows = read_jsonl(self.log_path)
        for row in rows:
            if row["step"] == step and row.get("heldout") != point:
                row["heldout"] = point
                self.curves.call("log", tracking.heldout_values(point), step=step)
                write_jsonl(self.log_path, rows)
        best = max(((r["heldout"]["accuracy"], -r["step"]) for r in rows if "heldout" in r), default=(None, None))
        config = json.loads(json.dumps({**self.config, "best": {"step": step, "heldout_accuracy": best[0]}}))
        if best[1] == -step and read_json_or_none(self.best_dir / "training_config.json") != config:  # not kept yet
            T.save_final_adapter(self.best_dir, model, self.processor, config, self.log_path, draw_loss=draw_loss)

    def summary(self) -> None:
        """The curve in one line and where the best adapter is (main process, after the final adapter)."""
        from src.files import read_jsonl

        points = [(r["step"], r["heldout"]["accuracy"]) for r in read_jsonl(self.log_path) if "heldout" in r]
        if not self.heldout or not points:
            return
        best = max(points, key=lambda p: (p[1], -p[0]))
        print(f"held-out accuracy ({len(self.heldout)} val questions, {EVAL_DECODING}): "
              + ", ".join(f"step {s} {a:.2f}" for s, a in points))
        print(f"best: step {best[0]} ({best[1]:.2f}), kept in {self.best_dir}; to evaluate it: python "
              f"evaluate_vqav2_finetuned.py ... --adapter_dir={self.best_dir} --run_name=vqav2_finetuned_best")


def read_json_or_none(path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def draw_loss(rows: list[dict], path) -> None:
    """loss_curve.png: the loss per step, and the held-out accuracy when there is one."""
    from src.charts import plot_loss

    plot_loss(rows, path, f"QLoRA on {DATASET}: {MODEL_ID}")


def start_tracking(accelerator, curves, tracker: str, config: dict, out_dir, start_step: int) -> None:
    """The tracker's run is named after the output folder (its name and path hash), so a resumed run (same
    folder) continues its curve at step start_step + 1; TensorBoard hides what an interrupted attempt logged
    after that step."""
    from pathlib import Path

    from src import tracking

    run_name = tracking.tracker_run_name(out_dir)
    hparams = {k: v for k, v in config.items() if k != "training_image_ids"}  # the list: in training_config.json
    curves.call("init_trackers", run_name, config=tracking.tracker_config(hparams),
                init_kwargs={tracker: {"purge_step": start_step + 1}})  # TensorBoard's
    if curves.on:
        log_dir = Path(accelerator.logging_dir)
        print(f"  {tracker}: {log_dir / run_name} (tensorboard --logdir {log_dir})")


def resolve_family_settings(config: dict, family) -> None:
    """"auto" in VQA_PROMPT, PREVIEW_DECODING, EVAL_DECODING and TARGET_MODULES becomes the model family's own
    (src/family.py; the targets for LORA_SCOPE); a prompt or preset of the other family is refused in one
    line. The resolved values go into the config, which a resumed run must match."""
    global VQA_PROMPT, PREVIEW_DECODING, EVAL_DECODING, TARGET_MODULES
    from src.family import lora_targets, resolve

    VQA_PROMPT = resolve("prompt", VQA_PROMPT, family, MODEL_ID)
    PREVIEW_DECODING = resolve("decoding", PREVIEW_DECODING, family, MODEL_ID, flag="--preview_decoding")
    EVAL_DECODING = resolve("decoding", EVAL_DECODING, family, MODEL_ID, flag="--eval_decoding")
    TARGET_MODULES = list(lora_targets(TARGET_MODULES, family, LORA_SCOPE))
    # the family, for the adapter checks: a Q-Former adapter's layer names are the same in both families
    config.update(vqa_prompt=VQA_PROMPT, preview_decoding=PREVIEW_DECODING, eval_decoding=EVAL_DECODING,
                  target_modules=TARGET_MODULES, family=family.name)


def lora_settings():
    from src.training import LoraSettings

    return LoraSettings.of_settings(globals())


def resume(config: dict, ckpt_root, accelerator, model, optimizer, scheduler):
    """Restore the newest checkpoint that verifies, if its settings match; (checkpoint or None, its step).
    Every process takes its own random state and the fp16 loss scale back; the training log is cut back
    to exactly the steps that checkpoint contains."""
    import json

    from src.errors import UserError
    from src.files import read_jsonl_lines, resolved_if_local, write_jsonl
    from src import training as T

    main_proc = accelerator.is_main_process
    start_step = 0
    ckpt, skipped = T.latest_checkpoint(ckpt_root)
    for note in skipped:
        if main_proc:
            print(f"warning: {note}")
    if ckpt is not None:
        saved = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        same = lambda k, v: resolved_if_local(v) if k == "model_id" else v  # noqa: E731 (/x/./m is /x/m)
        diffs = [k for k in RESUME_MUST_MATCH if same(k, saved.get(k)) != same(k, config.get(k))]
        if diffs:
            raise UserError(
                f"{ckpt} was made with different settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diffs)}; "
                f"now {', '.join(f'{k}={config.get(k)!r}' for k in diffs)}); use the same settings to resume, "
                f"or delete {ckpt_root} (or use another --output_dir) to start over")
        start_step = T.load_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, scheduler,
                                       rank=accelerator.process_index, scaler=accelerator.scaler)
    log_path = ckpt_root / "train_log.jsonl"
    if main_proc:
        kept = []
        for line, row in read_jsonl_lines(log_path, allow_torn_tail=True) if log_path.exists() else []:
            if type(row.get("step")) is not int or type(row.get("loss")) not in (int, float):
                raise UserError(f"{log_path}, line {line}: a training-log row without an integer 'step' and a numeric "
                                "'loss' (edited?); fix or delete that line and rerun, training resumes from the checkpoint")
            if row["step"] <= start_step:
                kept.append(row)
        write_jsonl(log_path, kept)
        for answers in (ckpt_root / "heldout").glob("step-*.jsonl*"):  # redone with the steps after start_step
            if answers.name[5:11].isdigit() and int(answers.name[5:11]) > start_step:
                answers.unlink()
    return ckpt, start_step


def run_steps(config: dict, accelerator, model, optimizer, scheduler, read_batch, start_step: int, ckpt_root, curves,
              curve) -> None:
    """Optimizer steps start_step+1 .. TRAIN_STEPS (`src.training.training_step`), one log row each (and a
    point of each curve), a checkpoint every SAVE_EVERY steps and after the last; at a held-out step the
    checkpoint first, then the held-out point, so a kill during it loses no step."""
    import itertools
    import time

    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from src.errors import UserError
    from src.files import JsonlAppender, read_jsonl
    from src import tracking, training as T

    main_proc = accelerator.is_main_process
    log_path = ckpt_root / "train_log.jsonl"
    # the tracker's count of skipped steps goes on from the steps the resumed checkpoint holds
    skipped_so_far = sum(bool(r.get("skipped")) for r in read_jsonl(log_path)) if main_proc and log_path.exists() else 0
    # the micro-batches still to read, each by read_batch in a worker; own generator: creating the loader must not
    # consume the global RNG (resume == uninterrupted)
    batches = iter(DataLoader(range(start_step * GRAD_ACCUM, TRAIN_STEPS * GRAD_ACCUM), batch_size=None, shuffle=False,
                              collate_fn=read_batch, num_workers=NUM_WORKERS,
                              generator=torch.Generator().manual_seed(SEED)))
    bar = tqdm(total=TRAIN_STEPS, initial=start_step, desc="train", unit="step", disable=not main_proc,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(start_step + 1, TRAIN_STEPS + 1):
        try:
            result = T.training_step(model, itertools.islice(batches, GRAD_ACCUM), accelerator, optimizer,
                                     scheduler, MAX_GRAD_NORM)
        except T.NonFiniteLoss as e:
            bar.close()
            last = T.checkpoint_dirs(ckpt_root)
            raise UserError(f"the training loss became {e.loss} at step {step}; stopped without saving it. "
                            f"The last good checkpoint is {last[-1] if last else 'none (no checkpoint yet)'}. "
                            f"Lower --lr (now {LR}) or check the data, then rerun to resume from there") from None
        lr = scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{lr:.2e}")
        if main_proc:
            elapsed = time.perf_counter() - t0
            seen = (step - start_step) * PER_DEVICE_BATCH * GRAD_ACCUM * accelerator.num_processes
            # a step fp16's loss scaling skipped (overflowing gradients): no update, no schedule step
            JsonlAppender(log_path).write([{  # one per row: a held-out point rewrites the file
                "step": step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm, "skipped": result.skipped,
                "elapsed_s": round(elapsed, 2), "samples_per_s": round(seen / elapsed, 2)}])
            skipped_so_far += result.skipped
            curves.call("log", tracking.tracker_values(result, lr, skipped_so_far), step=step)  # no-op without a tracker
        if step % SAVE_EVERY == 0 or step == TRAIN_STEPS or curve.due(step):
            rng_states = gather_object([T.rng_state()])  # every rank's, in rank order: each resumes from its own
            if main_proc:
                T.save_checkpoint(ckpt_root, step, accelerator.unwrap_model(model), optimizer, scheduler,
                                  config, KEEP_CHECKPOINTS, rng_states=rng_states, scaler=accelerator.scaler)
            accelerator.wait_for_everyone()
        if curve.due(step):
            curve.point(step)
    bar.close()


def save_adapter(model, processor, config: dict, out_dir, log_path, curve) -> None:
    """The final adapter folder, the held-out preview and the closing lines (main process only)."""
    from src.files import read_jsonl
    from src import training as T

    adapter_dir = out_dir / "lora_adapter"
    rows = read_jsonl(log_path)
    T.save_final_adapter(adapter_dir, model, processor, config, log_path, draw_loss=draw_loss)
    preview(model, processor, adapter_dir)
    first, last = rows[0]["loss"] if rows else float("nan"), rows[-1]["loss"] if rows else float("nan")
    print(f"training loss {first:.4f} (step 1) -> {last:.4f} (step {TRAIN_STEPS}); adapter saved to {adapter_dir}")
    curve.summary()
    print(next_command("evaluate_vqav2_finetuned.py", model_id=MODEL_ID, dataset=DATASET,
                       hf_dataset=HF_DATASET if DATASET == "vqav2_hub" and HF_DATASET != "lmms-lab/VQAv2" else None,
                       quantization=None if USE_4BIT else "none", adapter_dir=adapter_dir,
                       output_dir=OUTPUT_DIR if OUTPUT_DIR != "outputs" else None))


def check_replicas_agree(accelerator, model):
    """Under data parallelism every process must end with the same LoRA weights; say so (or fail)."""
    import torch
    from accelerate.utils import gather_object

    from src.errors import UserError

    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in model.parameters() if p.requires_grad)
    sums = gather_object([(accelerator.process_index, total)])
    values = [v for _, v in sorted(sums)]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise UserError(f"LoRA weights differ between processes after training (checksums {values}); "
                        "the data-parallel run went out of sync")
    if accelerator.is_main_process:
        print(f"LoRA weights identical on all {len(values)} processes (checksum {values[0]:.6f})")


def preview(model, processor, adapter_dir):
    """Answer PREVIEW_SAMPLES held-out questions with the in-memory model; saved in preview.jsonl so
    the reloaded adapter can be checked against them (tests/test_pipeline.py)."""
    if PREVIEW_SAMPLES <= 0:
        return

    from src.data import sample_question_ids, select
    from src.errors import UserError
    from src.images import load_image
    from src.inference import generate_for_images
    from src.files import write_jsonl
    from src.prompts import format_prompt, get_decoding

    try:
        val = preview_questions(adapter_dir.parent)
    except UserError as e:
        print(f"(no preview: {e})")
        return
    chosen = select(val, sample_question_ids(val, PREVIEW_SAMPLES, SEED), f"{DATASET} val")
    model.eval()
    images = [load_image(s.image_path) for s in chosen]
    answers = generate_for_images(model, processor, images, [format_prompt(VQA_PROMPT, s.question) for s in chosen],
                                  get_decoding(PREVIEW_DECODING))
    rows = [{"question_id": s.question_id, "question": s.question, "answer": a, "gt_answers": s.answers,
             "decoding": PREVIEW_DECODING} for s, a in zip(chosen, answers)]
    write_jsonl(adapter_dir / "preview.jsonl", rows)
    print(f"preview on {len(rows)} held-out {DATASET} questions (in-memory model):")
    for r in rows:
        print(f"  {r['question']!r} -> {r['answer']!r} (truth {r['gt_answers'][0]!r})")


if __name__ == "__main__":
    run_main(main)
