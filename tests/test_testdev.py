"""VQAv2 test-dev / test: questions without answers, answered whole and written as the EvalAI results file.

The data here is the official test layout built from data/tiny.jsonl's questions: the questions files
v2_OpenEnded_mscoco_test-dev2015_questions.json (a subset) and ..._test2015_questions.json (all of them) in
the official schema, no annotation file, and the pictures renamed into images/test2015/. The scripts run as
subprocesses on the offline twin; the EvalAI file is checked against the questions files themselves.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, killed_at_marker, module_fixture, random_adapter, run_script, start_script

from src.data import load_samples, submission_question_ids
from src.errors import UserError

TINY = [json.loads(line) for line in (REPO / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]
TEST_IDS = sorted(t["question_id"] for t in TINY)  # test2015: every question
TESTDEV_IDS = sorted(q for q in TEST_IDS if q % 1000 != 1)  # test-dev: a subset of test2015, as the real one is
EVALAI_FILE = "vqa_OpenEnded_mscoco_test-dev2015_vqav2_baseline_results.json"
EVALAI_FT_FILE = "vqa_OpenEnded_mscoco_test-dev2015_vqav2_finetuned_results.json"


def official_questions(subtype: str, ids: list[int]) -> dict:
    """A questions file in the schema of v2_OpenEnded_mscoco_test-dev2015_questions.json."""
    by_id = {t["question_id"]: t for t in TINY}
    return {"info": {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org", "version": "2.0",
                     "year": 2017, "contributor": "VQA Team", "date_created": "2017-04-26 17:07:13"},
            "task_type": "Open-Ended", "data_type": "mscoco",
            "license": {"url": "http://creativecommons.org/licenses/by/4.0/",
                        "name": "Creative Commons Attribution 4.0 International License"},
            "data_subtype": subtype,
            "questions": [{"image_id": by_id[q]["image_id"], "question": by_id[q]["question"], "question_id": q}
                          for q in ids]}


def write_test_layout(data_dir: Path) -> Path:
    (data_dir / "vqa").mkdir(parents=True)
    (data_dir / "images" / "test2015").mkdir(parents=True)
    (data_dir / "vqa" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(
        json.dumps(official_questions("test-dev2015", TESTDEV_IDS)))
    (data_dir / "vqa" / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(
        json.dumps(official_questions("test2015", TEST_IDS)))
    for t in TINY:
        shutil.copyfile(REPO / t["image_path"], data_dir / "images" / "test2015" / f"COCO_test2015_{t['image_id']:012d}.jpg")
    return data_dir


@module_fixture
def official_test_data(tmp_path_factory) -> Path:
    return write_test_layout(tmp_path_factory.mktemp("testdev") / "data")


@module_fixture
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter saved as the fine-tuning script saves it (random weights: it changes answers)."""
    folder = tmp_path_factory.mktemp("adapter") / "lora_adapter"
    return random_adapter(tiny_model_dir, folder, ("q_proj", "v_proj"))


def baseline(model: str, data_dir: Path, out: Path, *args, check: bool = False):
    return run_script("create_vqav2_baseline.py", f"--model_id={model}", "--quantization=none", "--dataset=vqav2",
                      "--split=testdev", f"--data_dir={data_dir}", f"--output_dir={out}", "--eval_batch=2",
                      "--num_workers=0", *args, check=check)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines_with(text: str, fragment: str) -> list[str]:
    return [line for line in text.splitlines() if fragment in line]


# --- reading the official test layout -----------------------------------------------------------------

def test_testdev_questions_become_samples_without_answers(official_test_data):
    samples = load_samples("vqav2", "testdev", official_test_data)
    assert [s.question_id for s in samples] == TESTDEV_IDS
    by_id = {t["question_id"]: t for t in TINY}
    for s in samples:
        assert s.question == by_id[s.question_id]["question"] and s.image_id == by_id[s.question_id]["image_id"]
        assert s.answers == [] and not s.has_answers
        assert (s.multiple_choice_answer, s.answer_type, s.question_type) == (None, None, None)
        assert s.image_path == (official_test_data / "images" / "test2015" / f"COCO_test2015_{s.image_id:012d}.jpg").as_posix()
        assert Path(s.image_path).read_bytes() == (REPO / by_id[s.question_id]["image_path"]).read_bytes()
    # EvalAI wants every test2015 question in each phase: the test-dev file is padded to the test2015 file's ids
    assert submission_question_ids(samples, "vqav2", "testdev", official_test_data) == TEST_IDS
    test = load_samples("vqav2", "test", official_test_data)
    assert submission_question_ids(test, "vqav2", "test", official_test_data) == TEST_IDS


def test_test_files_that_do_not_fit_are_one_line(official_test_data, tmp_path):
    data = write_test_layout(tmp_path / "data")
    (data / "vqa" / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(
        json.dumps(official_questions("test2015", TESTDEV_IDS)))  # the test2015 file saved under the test-dev name
    with pytest.raises(UserError, match="holds the questions of test2015 .*not test-dev2015"):
        load_samples("vqav2", "testdev", data)
    (data / "vqa" / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(
        json.dumps(official_questions("test2015", TESTDEV_IDS[:3])))
    samples = load_samples("vqav2", "testdev", official_test_data)
    with pytest.raises(UserError, match="test-dev question ids are not among the test2015 questions"):
        submission_question_ids(samples, "vqav2", "testdev", data)
    (data / "vqa" / "v2_OpenEnded_mscoco_test2015_questions.json").unlink()
    with pytest.raises(UserError, match="file not found: .*test2015_questions.json; see v2_Questions_Test_mscoco.zip"):
        submission_question_ids(samples, "vqav2", "testdev", data)
    for dataset in ("easy_vqa", "tiny"):
        with pytest.raises(UserError, match="does not have; use --dataset=vqav2"):
            load_samples(dataset, "testdev", data)


# --- the scripts ----------------------------------------------------------------------------------------

def test_testdev_run_writes_the_evalai_file_and_scores_nothing(tiny_model_dir, adapter, official_test_data, tmp_path):
    out = tmp_path / "out"
    proc = baseline(tiny_model_dir, official_test_data, out, check=True)
    rows = rows_of(out / "vqav2_baseline.jsonl")
    assert sorted(r["question_id"] for r in rows) == TESTDEV_IDS and len(rows) == len(TESTDEV_IDS)  # each once
    for r in rows:
        assert r["split"] == "testdev" and r["gt_answers"] == [] and r["error"] is None
        assert isinstance(r["answer"], str) and r["vqa_accuracy"] is None and r["exact_match"] is None
    metrics = json.loads((out / "vqav2_baseline_metrics.json").read_text())
    assert metrics["scored"] is False and metrics["n_scored"] == 0 and metrics["n"] == len(TESTDEV_IDS)
    assert metrics["vqa_accuracy"] is None and metrics["exact_match"] is None  # no accuracy, not a 0 %
    assert metrics["split"] == "testdev" and metrics["evalai_file"] == EVALAI_FILE
    frozen = json.loads((out / "vqav2_sample_ids.json").read_text())
    assert frozen["split"] == "testdev" and frozen["question_ids"] == TESTDEV_IDS  # the whole split by default

    # the EvalAI file: [{"question_id": int, "answer": str}] for every test2015 question, once each
    submission = json.loads((out / EVALAI_FILE).read_text())
    test2015 = json.loads((official_test_data / "vqa" / "v2_OpenEnded_mscoco_test2015_questions.json").read_text())
    assert sorted(e["question_id"] for e in submission) == sorted(q["question_id"] for q in test2015["questions"])
    assert all(set(e) == {"question_id", "answer"} and type(e["question_id"]) is int and isinstance(e["answer"], str)
               for e in submission)
    answer_of = {r["question_id"]: r["answer"] for r in rows}
    assert {e["question_id"]: e["answer"] for e in submission} == {q: answer_of.get(q, "") for q in TEST_IDS}
    assert len(lines_with(proc.stdout, "no answers to score")) == 1
    assert lines_with(proc.stdout, f"submit {out / EVALAI_FILE} to EvalAI (VQA Challenge, phase Test-Dev)")
    assert "warning" not in proc.stdout + proc.stderr.replace("UserWarning", "")

    # the fine-tuned run: the baseline's questions, its own EvalAI file, and no comparison
    proc = run_script("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                      f"--adapter_dir={adapter}", "--dataset=vqav2", "--split=testdev", f"--data_dir={official_test_data}",
                      f"--output_dir={out}", "--eval_batch=2", "--num_workers=0", check=True)
    ft = json.loads((out / EVALAI_FT_FILE).read_text())
    assert [e["question_id"] for e in ft] == [e["question_id"] for e in submission]
    ft_rows = rows_of(out / "vqav2_finetuned.jsonl")
    assert [r["question_id"] for r in ft_rows] == [r["question_id"] for r in rows]
    assert {e["question_id"]: e["answer"] for e in ft} == {q: {r["question_id"]: r["answer"] for r in ft_rows}.get(q, "")
                                                          for q in TEST_IDS}
    assert lines_with(proc.stdout, "no baseline comparison: vqav2_finetuned.jsonl is a testdev run: it has no answers "
                                   f"to compare; submit {out / EVALAI_FT_FILE} to EvalAI")
    assert not lines_with(proc.stdout, "VQA accuracy")

    # the comparison script and the demo's comparison tab: one line, no report
    report = tmp_path / "report"
    proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", f"--report_dir={report}", check=True)
    line = (f"vqav2_baseline.jsonl is a testdev run: it has no answers to compare; submit {out / EVALAI_FILE} to "
            "EvalAI (VQA Challenge, phase Test-Dev)\nvqav2_finetuned.jsonl is a testdev run: it has no answers to "
            f"compare; submit {out / EVALAI_FT_FILE} to EvalAI (VQA Challenge, phase Test-Dev)")
    assert proc.stdout.strip() == line  # both runs' files, not only the zero-shot one
    result = json.loads((report / "comparison.json").read_text())
    assert result["mode"] == "no_answers" and result["message"] == line
    assert sorted(p.name for p in report.iterdir()) == ["comparison.json", "config.json"]
    from src.demo_app import comparison_view

    from src.demo_app import md_text

    text, table, charts, cases, report_file = comparison_view(report, "en")
    assert text.startswith("### No answers to compare") and (table, charts, cases, report_file) == (None, [], [], None)
    assert f"{md_text('vqav2_baseline.jsonl')} is a testdev run" in text and md_text(str(out / EVALAI_FILE)) in text
    assert md_text(str(out / EVALAI_FT_FILE)) in text
    zh = comparison_view(report, "zh")[0]
    assert zh.startswith("### 没有可对比的答案") and md_text(str(out / EVALAI_FILE)) in zh and "Test\\-Dev" in zh


def test_max_test_samples_warns_and_a_killed_run_keeps_its_rows(tiny_model_dir, official_test_data, tmp_path):
    out = tmp_path / "out"
    proc = start_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                        "--dataset=vqav2", "--split=testdev", f"--data_dir={official_test_data}", f"--output_dir={out}",
                        "--eval_batch=2", "--num_workers=0", "--max_test_samples=6",
                        kill_at=("src.files:JsonlAppender.write", 2), hook_dir=tmp_path)
    assert killed_at_marker(proc), "the run finished before the second batch was written"
    kept = rows_of(out / "vqav2_baseline.jsonl")
    assert len(kept) == 4
    proc = baseline(tiny_model_dir, official_test_data, out, "--max_test_samples=6", check=True)
    assert "6 questions, 4 already done, 2 to go" in proc.stdout
    warnings = lines_with(proc.stdout, "warning: --max_test_samples=6")
    assert len(warnings) == 1 and f"every one of the {len(TESTDEV_IDS)} testdev questions" in warnings[0]
    by_id = {r["question_id"]: r for r in rows_of(out / "vqav2_baseline.jsonl")}
    assert len(by_id) == 6 and all(by_id[k["question_id"]] == k for k in kept)  # the finished rows, as written
    frozen = json.loads((out / "vqav2_sample_ids.json").read_text())
    assert frozen["max_samples"] == 6 and set(frozen["question_ids"]) <= set(TESTDEV_IDS)
    submission = {e["question_id"]: e["answer"] for e in json.loads((out / EVALAI_FILE).read_text())}
    assert sorted(submission) == TEST_IDS
    assert [q for q, a in submission.items() if q not in frozen["question_ids"] and a != ""] == []


def test_a_val_sample_and_a_testdev_run_do_not_mix(tiny_model_dir, official_test_data, adapter, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "vqav2_sample_ids.json").write_text(json.dumps(
        {"dataset": "vqav2", "split": "val", "seed": 42, "max_samples": 1000, "n": 3, "question_ids": [1, 2, 3]}))
    proc = baseline(tiny_model_dir, official_test_data, out)
    assert_one_line_error(proc, "was drawn from dataset=vqav2 split=val", "split=testdev", "--split")
    proc = run_script("evaluate_vqav2_finetuned.py", f"--model_id={tiny_model_dir}", "--quantization=none",
                      "--dataset=vqav2", "--split=testdev", f"--data_dir={official_test_data}", f"--output_dir={out}",
                      f"--adapter_dir={adapter}")  # the adapter is checked before the data
    assert_one_line_error(proc, "was drawn from dataset=vqav2 split=val", "split=testdev")
    assert not (out / "vqav2_baseline.jsonl").exists() and not (out / EVALAI_FILE).exists()


def test_val_rows_in_the_folder_are_not_taken_for_testdev_answers(tiny_model_dir, official_test_data, tmp_path):
    """A val run's rows whose frozen-sample file was deleted: a test-dev run into that folder refuses them in one
    line (the split is part of what a resumed row must match) and writes no EvalAI file from val answers."""
    from src.evaluation import eval_record

    out = tmp_path / "out"
    out.mkdir()
    record = eval_record(model_id=tiny_model_dir, adapter=None, quantization="none", dataset="vqav2",
                         vqa_prompt="vqa_opt", vqa_decoding="vqa_beam5", split="val")
    rows = [{"question_id": q, "image_id": 1, "image_path": "x.jpg", "question": "?", "raw_answer": "yes",
             "answer": "yes", "gt_answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the",
             "vqa_accuracy": 1.0, "exact_match": 1.0, "error": None, **record} for q in TESTDEV_IDS[:3]]
    (out / "vqav2_baseline.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = baseline(tiny_model_dir, official_test_data, out)
    assert_one_line_error(proc, "split='val'", "split='testdev'", "delete that file")
    assert not (out / EVALAI_FILE).exists()
    assert len((out / "vqav2_baseline.jsonl").read_text().splitlines()) == 3  # the val rows are left as they were


def test_max_samples_with_a_test_split_is_one_line_not_ignored(tiny_model_dir, official_test_data, tmp_path):
    """--max_samples=5 --split=testdev answered the whole split in silence: now one line naming --max_test_samples."""
    proc = baseline(tiny_model_dir, official_test_data, tmp_path / "out", "--max_samples=5")
    assert_one_line_error(proc, "--max_samples=5 draws the val sample", "--split=testdev", "--max_test_samples=5")
    assert not (tmp_path / "out").exists()


def test_error_rows_are_asked_again_and_the_file_is_not_called_ready_until_they_are(tiny_model_dir, official_test_data,
                                                                                    tmp_path):
    """A test-dev picture missing: its question becomes an error row and the run does not say "submit"; once the
    picture is back, the same command asks that question again and the EvalAI file is complete."""
    data = tmp_path / "data"
    shutil.copytree(official_test_data, data)
    by_id = {t["question_id"]: t for t in TINY}
    picture = data / "images" / "test2015" / f"COCO_test2015_{by_id[TESTDEV_IDS[0]]['image_id']:012d}.jpg"
    hidden = picture.with_name("hidden.jpg")
    picture.rename(hidden)
    out = tmp_path / "out"
    proc = baseline(tiny_model_dir, data, out, check=True)
    assert "is not ready to submit" in proc.stdout and "submit " not in proc.stdout.replace("ready to submit", "")
    missing = {r["question_id"] for r in rows_of(out / "vqav2_baseline.jsonl") if r["error"]}
    assert TESTDEV_IDS[0] in missing
    hidden.rename(picture)
    proc = baseline(tiny_model_dir, data, out, check=True)
    assert f"{len(missing)} to go ({len(missing)} of them error rows asked again)" in proc.stdout
    rows = rows_of(out / "vqav2_baseline.jsonl")
    assert len(rows) == len(TESTDEV_IDS) and not [r for r in rows if r["error"]]
    assert f"submit {out / EVALAI_FILE} to EvalAI" in proc.stdout
    answers = {e["question_id"]: e["answer"] for e in json.loads((out / EVALAI_FILE).read_text())}
    assert all(answers[q] == r["answer"] for r in rows for q in missing if r["question_id"] == q)  # the new answers


# --- the hub path (lmms-lab/VQAv2 data/testdev-*.parquet) ---------------------------------------------------

def write_testdev_parquet(folder: Path, split_file: str, ids: list[int]) -> Path:
    """lmms-lab's test splits as parquet: question_id, image_id, question and the image, no answer columns
    (the features of lmms-lab/VQAv2_TOY's test splits)."""
    from datasets import Dataset, Features, Image, Value

    features = Features({"question_id": Value("int64"), "image_id": Value("int64"), "question": Value("string"),
                         "image": Image()})
    by_id = {t["question_id"]: t for t in TINY}
    rows = [{"question_id": q, "image_id": by_id[q]["image_id"], "question": by_id[q]["question"],
             "image": {"bytes": (REPO / by_id[q]["image_path"]).read_bytes(), "path": None}} for q in ids]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(folder / "data" / split_file, batch_size=3)
    return folder


def test_hub_testdev_parquet_gives_the_json_samples_and_the_evalai_file(tiny_model_dir, official_test_data, tmp_path):
    hub = write_testdev_parquet(tmp_path / "hub", "testdev-00000-of-00001.parquet", TESTDEV_IDS)
    write_testdev_parquet(hub, "test-00000-of-00001.parquet", TEST_IDS)
    from_hub = load_samples("vqav2_hub", "testdev", hf_dataset=str(hub), cache_dir=tmp_path / "cache")
    from_json = load_samples("vqav2", "testdev", official_test_data)
    assert [{k: v for k, v in asdict(s).items() if k != "image_path"} for s in from_hub] == \
        [{k: v for k, v in asdict(s).items() if k != "image_path"} for s in from_json]
    assert submission_question_ids(from_hub, "vqav2_hub", "testdev", hf_dataset=str(hub),
                                   cache_dir=tmp_path / "cache") == TEST_IDS
    out = tmp_path / "out"
    run_script("create_vqav2_baseline.py", f"--model_id={tiny_model_dir}", "--quantization=none",
               "--dataset=vqav2_hub", f"--hf_dataset={hub}", "--split=testdev", f"--output_dir={out}",
               "--eval_batch=4", "--num_workers=0", check=True)
    rows = rows_of(out / "vqav2_baseline.jsonl")
    assert sorted(r["question_id"] for r in rows) == TESTDEV_IDS and all(r["gt_answers"] == [] for r in rows)
    images = {Path(r["image_path"]) for r in rows}
    assert all(p.is_file() and p.parent == out / "testdev" / "vqav2_hub" / "images" for p in images)
    submission = json.loads((out / EVALAI_FILE).read_text())
    assert sorted(e["question_id"] for e in submission) == TEST_IDS
    assert not (out / "vqav2_hub").exists()  # the val cache folder is left alone
