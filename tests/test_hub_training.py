"""The course without COCO: README steps 3-5 with --dataset=vqav2_hub against a local hub (tests/hub_server.py)
serving easy-VQA in lmms-lab/VQAv2's parquet layout. Fine-tuning trains on validation minus the frozen sample's
pictures; the adapter records its training pictures and every evaluation refuses questions about them unless
told --allow_train_overlap=True; a killed hub fine-tuning resumes to the adapter of an uninterrupted one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, killed_at_marker, load_tuned, module_fixture, random_twin, run_script, start_script
from hub_server import HubServer, hub_env, lmms_features

from src.data import freeze_sample, load_samples
from src.errors import UserError
from src.data import picture_ids
from src.preflight import check_train_overlap, trained_folder, training_data_note

TRAIN_IDS = 100_000  # easy-VQA train pictures and questions join its val ones under ids of their own
QUICK_START = ["--train_steps=300", "--per_device_batch=16", "--grad_accum=1", "--lr=3e-3", "--warmup_steps=20"]


def write_easy_vqa_hub(folder: Path, train_images: int = 1000, row_group: int = 250) -> Path:
    """easy-VQA's val questions and those of its first `train_images` train pictures as one "validation" split
    in lmms-lab/VQAv2's layout (data/validation-0000k-of-00002.parquet), row groups of `row_group` rows."""
    from datasets import Dataset

    rows = []
    for split, offset in (("val", 0), ("train", TRAIN_IDS)):
        for s in load_samples("easy_vqa", split, REPO / "data"):
            if split == "train" and s.image_id >= train_images:
                continue
            rows.append({"question_type": s.question_type, "multiple_choice_answer": s.multiple_choice_answer,
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                     for k, a in enumerate(s.answers)],
                         "image_id": s.image_id + offset, "answer_type": s.answer_type,
                         "question_id": s.question_id + 10 * offset, "question": s.question,
                         "image": {"bytes": Path(s.image_path).read_bytes(), "path": None}})
    random.Random(0).shuffle(rows)
    (folder / "data").mkdir(parents=True)
    for k in range(2):
        Dataset.from_list(rows[k::2], features=lmms_features()).to_parquet(
            folder / "data" / f"validation-{k:05d}-of-00002.parquet", batch_size=row_group)
    return folder


@module_fixture
def easy_hub(tmp_path_factory) -> Path:
    return write_easy_vqa_hub(tmp_path_factory.mktemp("easy_hub") / "repo")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@module_fixture
def course(easy_hub, tiny_model_dir, tmp_path_factory) -> dict:
    """The quick start's steps 3-5 and the comparison with --dataset=vqav2_hub, no data folder at all, a held-out
    curve, and two rate-limited answers while the fine-tuning caches its pictures."""
    root = tmp_path_factory.mktemp("hub_course")
    out = root / "out"
    common = [f"--model_id={tiny_model_dir}", "--dataset=vqav2_hub", f"--data_dir={root / 'no_data'}",
              f"--output_dir={out}"]
    with HubServer({"lmms-lab/VQAv2": easy_hub}) as hub:
        env = hub_env(hub, root)
        runs = {"baseline": run_script("create_vqav2_baseline.py", *common, "--max_samples=400", env=env, check=True)}
        hub.fail("range", 429, times=2, retry_after="0")
        runs["train"] = run_script("finetune_vqav2_lora.py", *common, *QUICK_START, "--eval_every=150",
                                   "--eval_samples=60", env=env, check=True)
        runs["evaluate"] = run_script("evaluate_vqav2_finetuned.py", *common, env=env, check=True)
    runs["compare"] = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", check=True)
    assert not (root / "no_data").exists()
    return {"out": out, "runs": runs, "root": root, "common": common}


@pytest.mark.slow
def test_hub_fine_tuning_leaves_out_the_frozen_sample_and_records_its_pictures(course, easy_hub):
    out = course["out"]
    config = json.loads((out / "lora_adapter" / "training_config.json").read_text())
    data = config["training_data"]
    val = load_samples("vqav2_hub", "val", hf_dataset=str(easy_hub), cache_dir=course["root"] / "check")
    frozen = set(json.loads((out / "vqav2_sample_ids.json").read_text())["question_ids"])
    evaluated = {s.image_id for s in val if s.question_id in frozen}
    heldout = set(json.loads((out / "heldout_sample_ids.json").read_text())["image_ids"])
    assert heldout and not heldout & evaluated  # the held-out slice: val pictures neither evaluated nor trained on
    pool = [s for s in val if s.image_id not in evaluated | heldout]
    assert data["dataset"] == "vqav2_hub" and data["split"] == "val" and data["images_from"] == "COCO val2014"
    assert data["hf_dataset"] == "lmms-lab/VQAv2" and data["revision"]
    assert data["pool_questions"] == len(pool) and data["excluded_images"] == len(evaluated | heldout) > 300
    trained = set(config["training_image_ids"])
    assert trained and not trained & (evaluated | heldout) and trained <= {s.image_id for s in pool}
    assert data["images"] == len(trained) and 0 < data["questions"] <= 300 * 16
    # only the pictures the steps read (and the frozen sample's and the slice's) were cached
    cached = {int(p.stem) for p in (out / "vqav2_hub" / "images").glob("*.png")}
    assert cached == trained | evaluated | heldout
    points = [r["heldout"]["accuracy"] for r in rows_of(out / "lora_adapter" / "train_log.jsonl") if "heldout" in r]
    assert len(points) == 2 and points[-1] > 50, points
    # the 429s were waited out, the rule and the pool were printed, the evaluation said where the adapter came from
    train = course["runs"]["train"]
    assert "answered HTTP 429" in train.stdout + train.stderr
    assert f"training data: {data['questions']:,} questions on {len(trained):,} pictures of lmms-lab/VQAv2 val" in train.stdout
    assert "none of these pictures is among them" in course["runs"]["evaluate"].stdout
    eval_config = json.loads((out / "vqav2_finetuned_config.json").read_text())
    assert eval_config["training_data"]["overlap_images"] == 0
    summary = (out / "comparisons" / "summary.txt").read_text()
    assert "lmms-lab/VQAv2" in summary and f"{data['questions']:,}" in summary


@pytest.mark.slow
def test_the_twin_reads_the_image_after_hub_fine_tuning(course, tiny_model_dir):
    """The grounding thresholds of tests/test_pipeline.py on a hub-trained adapter."""
    from src.prompts import get_decoding
    from twin_story import accuracy_by_kind, one_word_share, shuffled_image_control

    out = course["out"]
    base = accuracy_by_kind(rows_of(out / "vqav2_baseline.jsonl"))
    ft_rows = rows_of(out / "vqav2_finetuned.jsonl")
    ft = accuracy_by_kind(ft_rows)
    assert ft["colour"]["n"] >= 30 and ft["shape"]["n"] >= 30, ft
    assert ft["colour"]["accuracy"] >= 85 and ft["shape"]["accuracy"] >= 55, (base, ft)
    assert one_word_share(ft_rows) >= 95
    model, processor = load_tuned(tiny_model_dir, "4bit", str(out / "lora_adapter"))
    control = shuffled_image_control(model, processor, ft_rows, "vqa_opt", get_decoding("vqa_beam5"))
    assert control["accuracy"] <= 35, control


@pytest.mark.slow
def test_an_evaluation_on_the_training_pictures_is_refused_unless_allowed(course, easy_hub, tiny_model_dir):
    """A sample drawn after training (another seed, another folder) shares pictures with the adapter's."""
    root, adapter = course["root"], course["out"] / "lora_adapter"
    out = root / "redrawn"
    common = [f"--model_id={tiny_model_dir}", "--dataset=vqav2_hub", f"--output_dir={out}", "--quantization=none"]
    with HubServer({"lmms-lab/VQAv2": easy_hub}) as hub:
        env = hub_env(hub, root)
        run_script("create_vqav2_baseline.py", *common, "--max_samples=60", "--seed=7", env=env, check=True)
        refused = run_script("evaluate_vqav2_finetuned.py", *common, f"--adapter_dir={adapter}", env=env)
        assert not (out / "vqav2_finetuned.jsonl").exists()  # refused before the model answered anything
        allowed = run_script("evaluate_vqav2_finetuned.py", *common, f"--adapter_dir={adapter}",
                             "--allow_train_overlap=True", env=env, check=True)
    trained = set(json.loads((adapter / "training_config.json").read_text())["training_image_ids"])
    rows = rows_of(out / "vqav2_finetuned.jsonl")
    hits = [r for r in rows if r["image_id"] in trained]
    assert hits, "the redrawn sample should share pictures with the training"
    assert_one_line_error(refused, f"share {len({r['image_id'] for r in hits}):,} pictures",
                                 f"({len(hits):,} questions", str(adapter), "--allow_train_overlap=True")
    assert f"warning: {len(hits):,} of these questions ask about" in allowed.stdout
    overlap = json.loads((out / "vqav2_finetuned_config.json").read_text())["training_data"]
    assert (overlap["overlap_questions"], overlap["overlap_images"]) == (len(hits), len({r["image_id"] for r in hits}))
    # the comparison checks the same rows: refused, then allowed with the note in the summary
    assert_one_line_error(run_script("compare_baseline_finetuned.py", f"--output_dir={out}"), "--allow_train_overlap=True")
    run_script("compare_baseline_finetuned.py", f"--output_dir={out}", "--allow_train_overlap=True", check=True)
    assert f"{len(hits):,}" in (out / "comparisons" / "summary.txt").read_text()


@pytest.mark.slow
def test_hub_fine_tuning_before_the_baseline_is_one_line(tmp_path):
    proc = run_script("finetune_vqav2_lora.py", "--dataset=vqav2_hub", f"--model_id={random_twin()}",
                      "--use_4bit=False", f"--output_dir={tmp_path}", "--hf_dataset=/nonexistent")
    assert_one_line_error(proc, "vqav2_sample_ids.json does not exist yet",
                          f"python create_vqav2_baseline.py --dataset=vqav2_hub --output_dir={tmp_path}")


def test_the_guard_on_records_pictures_and_splits(tmp_path):
    """In-process: which adapters pass, which refuse, and what the note says."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    val = {"dataset": "vqav2_hub", "split": "val", "images_from": "COCO val2014", "hf_dataset": "lmms-lab/VQAv2",
           "questions": 30, "images": 3, "excluded": "the 2 pictures of the frozen evaluation sample"}
    (adapter / "training_config.json").write_text(json.dumps({"training_data": val, "training_image_ids": [1, 2, 3]}))
    with pytest.raises(UserError, match=r"share 1 pictures \(2 questions, image ids 3\)"):
        check_train_overlap(adapter, [("COCO val2014", 3), ("COCO val2014", 3), ("COCO val2014", 9)], False)
    allowed = check_train_overlap(adapter, [("COCO val2014", 3), ("COCO val2014", 3)], True)
    assert (allowed["overlap_images"], allowed["overlap_questions"]) == (1, 2)
    assert training_data_note(allowed, adapter).startswith("warning: 2 of these questions ask about 1 pictures")
    # test-dev (test2015 pictures) from a val-trained adapter: no overlap, and it says so
    testdev = check_train_overlap(adapter, [("COCO test2015", 3)], False)
    assert testdev["overlap_images"] == 0
    assert "ask about COCO test2015, another picture set: fine (a test-dev submission too)" in \
        training_data_note(testdev, adapter)
    # COCO train2014: another picture set by construction; no record: a note, no check
    (adapter / "training_config.json").write_text(json.dumps({"training_data": {**val, "split": "train",
                                                                                "images_from": "COCO train2014"}}))
    assert check_train_overlap(adapter, [("COCO val2014", 3)], False)["overlap_images"] == 0
    (adapter / "training_config.json").write_text("{}")
    assert check_train_overlap(adapter, [("COCO val2014", 3)], False) is None
    assert "records no training data" in training_data_note(None, adapter)
    # a checkpoint (config.json) and a merged model (merge_config.json; its config.json is the model's) carry it too
    checkpoint, merged = tmp_path / "step-000010", tmp_path / "merged"
    for folder, name in ((checkpoint, "config.json"), (merged, "merge_config.json")):
        folder.mkdir()
        (folder / name).write_text(json.dumps({"training_data": val, "training_image_ids": [3]}))
        with pytest.raises(UserError, match=r"share 1 pictures \(1 questions, image ids 3\)"):
            check_train_overlap(folder, [("COCO val2014", 3)], False)
    (merged / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    assert check_train_overlap(merged, [("COCO val2014", 3)], True)["overlap_images"] == 1
    # which folder holds the record: the adapter; else the model when it is a merged one; else none
    assert trained_folder(str(adapter), str(merged)) == str(adapter)
    assert trained_folder(None, str(merged)) == str(merged)
    assert trained_folder(None, str(checkpoint)) is None and trained_folder(None, "Salesforce/blip2-opt-2.7b") is None
    # pictures recognised by their names: COCO files, easy-VQA's folders, the hub image cache
    cache = tmp_path / "vqav2_hub" / "images"
    cache.mkdir(parents=True)
    (cache / "sources.json").write_text(json.dumps({"3": {"file": "000000000003.jpg",
                                                          "source": "/x/data/validation-00000-of-00002.parquet#row=5"}}))
    paths = [Path("COCO_val2014_000000000007.jpg"), Path("data/easy_vqa/images/val/12.png"), cache / "000000000003.jpg",
             Path("baseline_images/pic_01.jpg")]
    assert picture_ids(paths) == [("COCO val2014", 7), ("easy_vqa val", 12), ("COCO val2014", 3)]


@pytest.mark.slow
def test_a_killed_hub_fine_tuning_resumes_to_the_uninterrupted_adapter(easy_hub, tmp_path):
    """Killed while caching its pictures (what is on disk is not fetched again) and after its first checkpoint."""
    import torch
    from safetensors.torch import load_file

    val = load_samples("vqav2_hub", "val", hf_dataset=str(easy_hub), cache_dir=tmp_path / "draw")
    args = ["finetune_vqav2_lora.py", f"--model_id={random_twin()}", "--dataset=vqav2_hub", "--use_4bit=False",
            "--train_steps=6", "--per_device_batch=4", "--grad_accum=1", "--lr=3e-3", "--warmup_steps=1",
            "--save_every=2", "--preview_samples=4", "--num_workers=0"]
    outs = {name: tmp_path / name for name in ("full", "killed")}
    for out in outs.values():
        out.mkdir()
        freeze_sample(out / "vqav2_sample_ids.json", "vqav2_hub", "val", val, 100, 42)
    with HubServer({"lmms-lab/VQAv2": easy_hub}) as hub:
        env = hub_env(hub, tmp_path)
        run_script(*args, f"--output_dir={outs['full']}", env=env, check=True)
        out = outs["killed"]
        images = out / "vqav2_hub" / "images"
        # source.json of the question cache, then two row groups' pictures: killed there
        proc = start_script(*args, f"--output_dir={out}", env=env, kill_at=("src.hub_data:write_json", 3),
                            hook_dir=tmp_path)
        assert killed_at_marker(proc)
        kept = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
        assert kept and set(json.loads((images / "sources.json").read_text())) == {str(int(n[:12])) for n in kept}
        proc = start_script(*args, f"--output_dir={out}", env=env, kill_at=("src.training:save_checkpoint", 1),
                            hook_dir=tmp_path)
        assert killed_at_marker(proc)
        assert {p.name: p.stat().st_mtime_ns for p in images.glob("*.png") if p.name in kept} == kept
        assert (out / "lora_adapter_checkpoints" / "step-000002").is_dir()
        run_script(*args, f"--output_dir={out}", env=env, check=True)
    a, b = (load_file(str(d / "lora_adapter" / "adapter_model.safetensors")) for d in outs.values())
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    configs = [json.loads((d / "lora_adapter" / "training_config.json").read_text()) for d in outs.values()]
    assert configs[0]["training_data"] == configs[1]["training_data"]
    assert configs[0]["training_image_ids"] == configs[1]["training_image_ids"]


@pytest.mark.slow
def test_the_demo_and_the_demo_captions_refuse_pictures_the_adapter_trained_on(tmp_path):
    """create_baseline.py and inference_demo.py know easy-VQA's pictures by their folder: one line, before
    the model loads; create_baseline.py with --allow_train_overlap=True answers them and its config says so."""
    from helpers import adapter_trained_on_examples, run_in_process

    model, adapter, pictures = adapter_trained_on_examples(tmp_path)
    common = [f"--model_id={model}", "--quantization=none", f"--adapter_dir={adapter}"]
    demo = run_in_process("inference_demo.py", *common, f"--examples_dir={pictures}", "--port=7961")
    assert_one_line_error(demo, "the example pictures in", "share 2 pictures (2 questions, image ids 0, 5)",
                          "--allow_train_overlap=True")
    args = ["create_baseline.py", *common, f"--images_dir={pictures}", f"--output_dir={tmp_path / 'out'}"]
    assert_one_line_error(run_in_process(*args), f"the pictures in {pictures} share 2 pictures")
    assert "MODEL LOAD STARTED" not in demo.stderr
    allowed = run_in_process(*args, "--allow_train_overlap=True")
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: 2 of these questions ask about 2 pictures" in allowed.stdout
    config = json.loads((tmp_path / "out" / "baseline_finetuned.jsonl.config.json").read_text())
    assert config["training_data"]["overlap_images"] == 2


@pytest.mark.parametrize("n, batch, accum, steps, world", [(50, 4, 2, 3, 1), (50, 4, 2, 9, 2), (30, 3, 1, 40, 1)])
def test_the_rows_cached_for_training_are_the_rows_the_steps_read(n, batch, accum, steps, world, monkeypatch):
    """Against src.training.micro_batch_indices itself, over every micro-batch of every process (several epochs)."""
    import finetune_vqav2_lora as script
    from src.training import micro_batch_indices

    for name, value in {"PER_DEVICE_BATCH": batch, "GRAD_ACCUM": accum, "TRAIN_STEPS": steps, "SEED": 5}.items():
        monkeypatch.setattr(script, name, value)
    read = {i for k in range(steps * accum) for rank in range(world) for i in micro_batch_indices(n, 5, batch, k, world, rank)}
    assert script.rows_the_steps_read(n, world) == sorted(read)
