"""Strict data checks (one line naming the file and the first bad entry, before any model loads), and the
easy-VQA conversion under concurrent first use, a kill, and an incomplete earlier conversion."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, killed_at_marker, run_script, start_script

from src.data import load_samples
from src.errors import UserError
from src.locks import exclusive_lock
from src.vqa_eval import vqa_accuracy

TINY = [json.loads(line) for line in (REPO / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]
Q_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
A_FILE = "v2_mscoco_val2014_annotations.json"


def official(tiny=TINY):
    questions = [{"image_id": t["image_id"], "question": t["question"], "question_id": t["question_id"]} for t in tiny]
    annotations = [{"question_id": t["question_id"], "image_id": t["image_id"], "question_type": t["question_type"],
                    "answer_type": t["answer_type"], "multiple_choice_answer": t["multiple_choice_answer"],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                for k, a in enumerate(t["answers"])]} for t in tiny]
    return {"questions": questions}, {"annotations": annotations}


def write_vqav2(data_dir: Path, questions, annotations) -> Path:
    (data_dir / "vqa").mkdir(parents=True)
    for name, obj in ((Q_FILE, questions), (A_FILE, annotations)):
        (data_dir / "vqa" / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return data_dir


def set_q(i, key, value):
    def change(q, a):
        q["questions"][i][key] = value
    return change


def set_a(i, key, value):
    def change(q, a):
        a["annotations"][i][key] = value
    return change


def duplicate_question(q, a):
    q["questions"][5]["question_id"] = q["questions"][1]["question_id"]


def duplicate_annotation(q, a):
    a["annotations"].append(copy.deepcopy(a["annotations"][3]))


def items_without_answer(q, a):
    a["annotations"][2]["answers"] = [{"answer_id": k} for k in range(10)]


def no_annotation(q, a):
    del a["annotations"][4]


# (case, change of the official files, file the message names, fragments)
VQAV2_CASES = [
    ("question_id abc", set_q(1, "question_id", "abc"), Q_FILE, ["questions[1]", "question_id must be an integer", "'abc'"]),
    ("image_id x", set_q(2, "image_id", "x"), Q_FILE, ["questions[2]", "image_id must be an integer", "'x'"]),
    ("annotation image_id x", set_a(2, "image_id", "x"), A_FILE, ["annotations[2]", "image_id must be an integer"]),
    ("question null", set_q(3, "question", None), Q_FILE, ["questions[3]", "question must be a non-empty string", "NoneType"]),
    ("answers a string", set_a(0, "answers", "red"), A_FILE, ["annotations[0]", "answers must be a list", "str 'red'"]),
    ("answers null", set_a(1, "answers", None), A_FILE, ["annotations[1]", "answers must be a list", "NoneType"]),
    ("answers empty", set_a(1, "answers", []), A_FILE, ["annotations[1]", "answers is empty"]),
    ("items without answer", items_without_answer, A_FILE, ["annotations[2]", "answers[0]", '"answer" string']),
    ("answer_type null", set_a(6, "answer_type", None), A_FILE, ["annotations[6]", "answer_type must be"]),
    ("duplicate question", duplicate_question, Q_FILE, ["questions[5]", f"duplicate question_id {TINY[1]['question_id']}",
                                                        "questions[1]"]),
    ("duplicate annotation", duplicate_annotation, A_FILE, [f"annotations[{len(TINY)}]", "duplicate question_id",
                                                            "annotations[3]"]),
    ("id as digits twice", set_q(5, "question_id", str(TINY[1]["question_id"])), Q_FILE, ["duplicate question_id"]),
    ("image_id mismatch", set_a(7, "image_id", 99), A_FILE, ["annotations[7]", "differs from its question's image_id"]),
    ("question without annotation", no_annotation, Q_FILE, [f"question_id {TINY[4]['question_id']} has no annotation"]),
    ("questions empty", lambda q, a: q.update(questions=[]), Q_FILE, ["'questions' is empty"]),
    ("annotations empty", lambda q, a: a.update(annotations=[]), A_FILE, ["'annotations' is empty"]),
    ("questions not a list", lambda q, a: q.update(questions={"1": 2}), Q_FILE, ["'questions' must be a list"]),
    ("entry not an object", lambda q, a: q["questions"].__setitem__(0, [1, 2]), Q_FILE, ["questions[0]",
                                                                                      "expected an object"]),
]


@pytest.mark.parametrize("case, change, file, fragments", VQAV2_CASES, ids=[c[0] for c in VQAV2_CASES])
def test_bad_vqav2_entries_are_one_line_naming_file_and_entry(tmp_path, case, change, file, fragments):
    q, a = official()
    change(q, a)
    write_vqav2(tmp_path, q, a)
    with pytest.raises(UserError) as e:
        load_samples("vqav2", "val", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "vqa" / file)), msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.parametrize("which", [Q_FILE, A_FILE])
def test_empty_vqav2_file(tmp_path, which):
    q, a = official()
    write_vqav2(tmp_path, "" if which == Q_FILE else q, "" if which == A_FILE else a)
    with pytest.raises(UserError, match=r"is empty \(0 bytes\)"):
        load_samples("vqav2", "val", tmp_path)


def test_good_files_load_and_the_strings_answers_are_kept(tmp_path):
    write_vqav2(tmp_path, *official())
    samples = load_samples("vqav2", "val", tmp_path)
    assert [s.question_id for s in samples] == sorted(t["question_id"] for t in TINY)
    by_id = {t["question_id"]: t for t in TINY}
    assert all(s.answers == by_id[s.question_id]["answers"] for s in samples)


def test_other_than_ten_answers_warns_with_the_count_and_keeps_leave_one_out(tmp_path, capsys):
    q, a = official()
    a["annotations"][0]["answers"] = [{"answer": x} for x in ["red"] * 3 + ["blue"] * 6]  # 9 answers
    a["annotations"][1]["answers"] = a["annotations"][1]["answers"] + [{"answer": "no"}]  # 11
    write_vqav2(tmp_path, q, a)
    samples = {s.question_id: s for s in load_samples("vqav2", "val", tmp_path)}
    err = capsys.readouterr().err
    assert f"2 question(s) have other than 10 answers (first: question_id {TINY[0]['question_id']} with 9)" in err
    assert A_FILE in err
    # official metric on 9 answers: the mean over the 9 leave-one-out subsets of min(1, matches / 3)
    loo = [min(1.0, (3 - (k < 3)) / 3) for k in range(9)]
    assert vqa_accuracy("red", samples[TINY[0]["question_id"]].answers) == pytest.approx(sum(loo) / 9)


def tiny_rows(change=None):
    rows = copy.deepcopy(TINY)
    if change:
        change(rows)
    return rows


def set_row(i, key, value):
    def change(rows):
        rows[i][key] = value
    return change


TINY_CASES = [
    ("empty file", lambda rows: rows.clear(), ["holds no rows"]),
    ("answers empty", set_row(2, "answers", []), ["row 3", "answers is empty"]),
    ("answers a string", set_row(2, "answers", "red"), ["row 3", "answers must be a list", "str 'red'"]),
    ("question_id abc", set_row(0, "question_id", "abc"), ["row 1", "question_id must be an integer", "'abc'"]),
    ("image_path null", set_row(4, "image_path", None), ["row 5", "image_path must be a non-empty string"]),
    ("question null", set_row(4, "question", None), ["row 5", "question must be a non-empty string"]),
    ("1001 and \"1001\"", set_row(5, "question_id", str(TINY[1]["question_id"])),
     ["row 6", f"duplicate question_id {TINY[1]['question_id']}", "row 2"]),
    ("row not an object", lambda rows: rows.__setitem__(3, ["a"]), ["line 4", "not a JSON object"]),
]


@pytest.mark.parametrize("case, change, fragments", TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_bad_tiny_rows_are_one_line_naming_file_and_row(tmp_path, case, change, fragments):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(change)))
    with pytest.raises(UserError) as e:
        load_samples("tiny", "val", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.slow
def test_bad_data_is_reported_before_the_model_loads(tmp_path):
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(set_row(2, "answers", "red"))))
    proc = run_script("create_vqav2_baseline.py", "--dataset=tiny", f"--data_dir={tmp_path}",
                      "--model_id=no/such-model", "--quantization=none", f"--output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, "tiny.jsonl: row 3", "answers must be a list")


# --- the lock and the easy-VQA conversion -----------------------------------------------------------

HOLD = "import sys, time; from src.locks import exclusive_lock\nwith exclusive_lock(sys.argv[1], 'x'):\n" \
       "    print('held', flush=True); time.sleep(float(sys.argv[2]))"


def test_lock_refuses_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    lock = tmp_path / "out" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "60"], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"the output folder is in use by another run \(PID {holder.pid}, lock file"):
            with exclusive_lock(lock, "the output folder"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.exists()  # left behind by the killed run, with its PID ...
    with exclusive_lock(lock, "the output folder"):  # ... and taken over at once
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_waiting_lock_goes_on_when_the_holder_finishes(tmp_path, capsys):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "1.5"], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with exclusive_lock(lock, "the folder", wait=True):
        assert time.monotonic() - start > 1.0  # only once the holder's 1.5 s were over
    holder.wait()
    assert f"waiting for the run with PID {holder.pid} to finish with the folder" in capsys.readouterr().out


def easy_vqa_counts() -> dict:
    import easy_vqa

    return {"train": (len(easy_vqa.get_train_questions()[0]), len(easy_vqa.get_train_image_paths())),
            "val": (len(easy_vqa.get_test_questions()[0]), len(easy_vqa.get_test_image_paths()))}


def assert_complete(data_dir: Path) -> None:
    root = data_dir / "easy_vqa"
    for split, (n_questions, n_images) in easy_vqa_counts().items():
        assert len(json.loads((root / f"{split}_questions.json").read_text())["questions"]) == n_questions
        assert len(json.loads((root / f"{split}_annotations.json").read_text())["annotations"]) == n_questions
        assert len(list((root / "images" / split).iterdir())) == n_images
    assert sorted(p.name for p in data_dir.iterdir()) == ["easy_vqa"]  # no temporary folder or lock left


LOAD = "import sys; from src.data import load_samples\nfor split in ('train', 'val'):\n" \
       "    print(split, len(load_samples('easy_vqa', split, sys.argv[1])), flush=True)"


@pytest.mark.slow
def test_two_first_time_runs_at_once_both_succeed_with_one_complete_folder(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    counts = easy_vqa_counts()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert f"train {counts['train'][0]}" in out and f"val {counts['val'][0]}" in out
    assert sum("waiting for the run with PID" in out for out, _ in outs) <= 1
    assert_complete(tmp_path)


@pytest.mark.slow
def test_conversion_killed_midway_is_redone_on_the_next_run(tmp_path):
    hook = tmp_path.parent / f"{tmp_path.name}-hook"
    hook.mkdir()
    proc = start_script("-c", LOAD, tmp_path, kill_at=("shutil:copyfile", 500), hook_dir=hook)  # 500 images in
    assert killed_at_marker(proc, timeout=120)
    assert not (tmp_path / "easy_vqa").exists()  # nothing half-done was put in place
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert_complete(tmp_path)


@pytest.mark.slow
def test_incomplete_folder_marked_converted_is_converted_again(tmp_path):
    run = [sys.executable, "-c", LOAD, str(tmp_path)]
    subprocess.run(run, cwd=REPO, check=True, capture_output=True, timeout=300)
    for png in sorted((tmp_path / "easy_vqa" / "images" / "train").iterdir())[:1500]:
        png.unlink()  # what the earlier unlocked conversion left after a crash: CONVERTED, 2,500 of 4,000 images
    (tmp_path / "easy_vqa" / "train_questions.json").unlink()
    out = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "is incomplete (an interrupted conversion?); converting it again" in out.stdout
    assert_complete(tmp_path)
