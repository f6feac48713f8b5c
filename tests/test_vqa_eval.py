"""The VQA scorer against hand-worked cases of every official rule, the official tool transcribed
(tests/vqa_official.py), and the CLI run as a subprocess on small official-format files."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from vqa_official import official_metrics, official_normalization, official_scores
from src.errors import UserError
from bench.vqa_eval import evaluate
from src.vqa_eval import (
    process_punctuation,
    exact_match,
    normalize_answer,
    score_batch,
    score_rows,
    vqa_accuracy,
)

REPO = Path(__file__).resolve().parent.parent


def ref_accuracy(prediction: str, gts: list[str]) -> float:
    return official_scores([prediction], [gts])[0][0]


def ref_exact(prediction: str, gts: list[str]) -> float:
    """Exact match (our definition) on the answers as the official tool compared them."""
    _, [prediction], [gts] = official_scores([prediction], [gts])
    return float(Counter(gts).most_common(1)[0][0] == prediction)  # most_common keeps first-seen order on ties


_PIECES = ["yes", "Yes", "no", "NO", "two", "Two", "2", "ten", "10", "none", "0", "a", "an", "The", "the dog",
           "dog", "dogs", "dont", "don't", "Im", "whats", "somebody'd", "hot-dog", "hot - dog", "hot dog",
           "1,000", "1000", "3.5", "3. 5", "t.v.", "tv", "mr. smith", "yes.", "yes!", "(left)", "left",
           "a/b", "a / b", "x,y", "x , y", ";", "@home", "e-mail", '"quoted"', "`q`", "{b}", "[b]", "a+b", "a=b",
           "<t>", "s_c", "back\\slash", "what?", "." * 40 + "x", "." * 33, "5.a", ".5", "  pad  ", "tab\tin",
           "new\nline", "\n"]


def random_answer(rng: random.Random) -> str:
    return " ".join(rng.choice(_PIECES) for _ in range(rng.choice([1, 1, 1, 2, 3])))


def random_question(rng: random.Random) -> tuple[str, list[str]]:
    n = rng.choice([10, 10, 10, 3, 1, 7])
    if rng.random() < 0.2:
        gts = [random_answer(rng)] * n  # unanimous
    else:
        pool = [random_answer(rng) for _ in range(rng.randint(1, 4))]
        gts = [rng.choice(pool) for _ in range(n)]
    prediction = rng.choice(gts) if rng.random() < 0.5 else random_answer(rng)
    if rng.random() < 0.2:
        prediction = rng.choice(["  ", "\n", "\t"]) + prediction.upper() + rng.choice(["", ".", " "])
    return prediction, gts


# --- rule 1: white space -----------------------------------------------------------------------------

def test_newlines_tabs_and_surrounding_space_are_cleaned_even_when_unanimous():
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert vqa_accuracy("yes", ["\tyes "] * 10) == 1.0
    assert normalize_answer("hot\ndog\tbun ") == "hot dog bun"


# --- rule 2: unanimous ground truth skips normalisation --------------------------------------------

def test_unanimous_ground_truth_compares_raw_strings():
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # the authors keep this on purpose
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0


def test_one_differing_ground_truth_switches_normalisation_on_for_all():
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("two", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("the yes.", ["yes"] * 9 + ["no"]) == 1.0


# --- rule 3: punctuation -----------------------------------------------------------------------------

def test_punctuation_becomes_space_unless_next_to_a_space():
    assert process_punctuation("hot-dog") == "hot dog"
    assert process_punctuation("dog - cat") == "dog  cat"  # " -" occurs: every "-" is deleted
    assert process_punctuation("a-b -c") == "ab c"  # the check is on the whole original string
    assert process_punctuation("(left)") == " left "
    assert normalize_answer("(left)") == "left"


def test_each_mark_is_checked_on_the_original_string():
    # "; " occurs, so ";" is deleted; "/" has no space beside it, so it becomes a space
    assert process_punctuation("a; b/c") == "a b c"
    assert process_punctuation("a;b / c") == "a b  c"


def test_digit_comma_digit_deletes_every_punctuation_mark():
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("a,b 1,5 c/d") == "ab 15 cd"  # the "/" is deleted too
    assert process_punctuation("a,b c/d") == "a b c d"  # no digit-comma-digit: spaces
    assert vqa_accuracy("1000", ["1,000"] * 3 + ["1 000"] * 7) == pytest.approx(0.9)


def test_periods_not_followed_by_a_digit_are_deleted():
    assert process_punctuation("t.v.") == "tv"
    assert process_punctuation("mr. smith") == "mr smith"
    assert process_punctuation("3.5") == "3.5"
    assert process_punctuation(".5") == ".5"  # the official "lookbehind" is no lookbehind
    assert process_punctuation("5.a") == "5a"


def test_40_periods_leave_8():
    # the official code passes re.UNICODE (32) as re.sub's count
    assert process_punctuation("." * 40) == "." * 8
    assert normalize_answer("." * 33 + "dog") == ".dog"
    assert normalize_answer("." * 32 + "dog") == "dog"


def test_apostrophe_and_colon_are_not_punctuation():
    assert normalize_answer("don't") == "don't"
    assert normalize_answer("10:30") == "10:30"


# --- rule 4: digits, articles, contractions -----------------------------------------------------------

def test_number_words_become_digits_after_lower_casing():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("none") == "0"
    assert normalize_answer("ten dogs") == "10 dogs"
    assert normalize_answer("eleven") == "eleven"  # the table stops at ten


def test_articles_are_dropped():
    assert normalize_answer("The Dog") == "dog"
    assert normalize_answer("a an the") == ""
    assert normalize_answer("an apple.") == "apple"
    assert normalize_answer("theater") == "theater"


def test_contractions_are_expanded_from_the_table_quirks_included():
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("Whats up") == "what's up"
    assert normalize_answer("Im") == "im"  # the table's "Im" key can never match a lower-cased word
    assert normalize_answer("somebody'd") == "somebodyd"  # the table maps this one backwards


def test_white_space_collapses_to_single_spaces():
    assert normalize_answer("  hot   dog  ") == "hot dog"


# --- rule 5: leave-one-out ----------------------------------------------------------------------------

@pytest.mark.parametrize("matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_over_ten_annotators(matching, expected):
    others = ["dog", "bird", "fish", "cow", "horse", "owl", "ant", "bee", "elk", "yak"]
    gts = ["cat"] * matching + others[: 10 - matching]
    assert vqa_accuracy("cat", gts) == pytest.approx(expected)


def test_leave_one_out_worked_by_hand():
    # 1 match in 10: nine subsets see it once (1/3), the one leaving it out sees none: 9/30
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == 9 * (1 / 3) / 10
    # 3 matches: the seven subsets keeping all three score 1, the three dropping one score 2/3
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx((7 + 3 * 2 / 3) / 10)
    # other answer counts work the same way: 2 answers, 1 match -> (0 + 1/3) / 2
    assert vqa_accuracy("a", ["a", "b"]) == pytest.approx(1 / 6)
    assert vqa_accuracy("a", ["a"]) == 0.0  # alone, nobody else agrees


def test_exact_match_is_against_the_majority_processed_answer():
    assert exact_match("Two", ["2", "two", "3", "3"]) == 1.0  # "2" twice after processing, "3" twice: first wins
    assert exact_match("3", ["2", "two", "3", "3"]) == 0.0
    assert exact_match("dog", ["dog", "cat", "cat"]) == 0.0
    assert exact_match("Yes", ["yes"] * 10) == 0.0  # unanimous: raw comparison, as in the VQA metric
    assert exact_match(" yes ", ["yes"] * 10) == 1.0


def test_any_number_of_ground_truths():
    gts = ["cat", "Cat.", "dog"] * 20  # 60 answers
    for prediction in ("cat", "dog", "bird"):
        acc, exact = score_batch([prediction, prediction], [gts, gts[:10]])
        assert acc[0] == ref_accuracy(prediction, gts) and acc[1] == ref_accuracy(prediction, gts[:10])
        assert exact[0] == ref_exact(prediction, gts)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError):
        vqa_accuracy("yes", [])
    with pytest.raises(UserError):
        vqa_accuracy("yes", "yes")
    with pytest.raises(UserError):
        vqa_accuracy(None, ["yes"])
    with pytest.raises(UserError):
        score_batch(["a"], [["a"], ["b"]])
    with pytest.raises(UserError):
        score_batch([3], [["a"]])


# --- against the official tool ---------------------------------------------------------------------------

def test_normalisation_matches_the_official_tool_on_random_answers():
    rng = random.Random(0)
    for _ in range(3000):
        text = random_answer(rng)
        assert normalize_answer(text) == official_normalization(text), text


@pytest.mark.slow
def test_accuracy_and_exact_match_match_the_official_tool_on_random_questions():
    rng = random.Random(1)
    questions = [random_question(rng) for _ in range(4000)]
    predictions = [p for p, _ in questions]
    gt_lists = [g for _, g in questions]
    batch_acc, batch_exact = score_batch(predictions, gt_lists)
    official_acc, compared_predictions, compared_gts = official_scores(predictions, gt_lists)
    for i, (prediction, gts) in enumerate(questions):
        expected = official_acc[i]
        assert vqa_accuracy(prediction, gts) == expected, (prediction, gts)  # bit-exact, not approximate
        assert batch_acc[i] == expected, (prediction, gts)
        majority = Counter(compared_gts[i]).most_common(1)[0][0]  # first-seen order on ties
        assert exact_match(prediction, gts) == batch_exact[i] == float(majority == compared_predictions[i])


# --- rule 6 and whole files ------------------------------------------------------------------------------

def make_files(items, answer_ids=True):
    """items: (question_id, question_type, answer_type, gts, prediction) -> official-format objects."""
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
                 "license": {}, "questions": [{"image_id": 1, "question": "q?", "question_id": q} for q, *_ in items]}
    anns = []
    for qid, qtype, atype, gts, _ in items:
        answers = [{"answer": g, "answer_confidence": "yes"} for g in gts]
        if answer_ids:
            for j, a in enumerate(answers):
                a["answer_id"] = j + 1
        anns.append({"question_type": qtype, "multiple_choice_answer": gts[0], "answers": answers, "image_id": 1,
                     "answer_type": atype, "question_id": qid})
    annotations = {"info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco", "annotations": anns}
    results = [{"question_id": qid, "answer": pred} for qid, *_, pred in items]
    return questions, annotations, results


SMALL = [
    (1, "what color", "other", ["red"] * 3 + ["blue"] * 7, "Red"),  # 0.9
    (2, "how many", "number", ["2"] * 9 + ["two"], "two"),  # normalised: all ten match -> 1.0
    (3, "is the", "yes/no", ["yes"] * 10, "Yes"),  # unanimous raw comparison -> 0.0
    (4, "what color", "other", ["a", "b"], "a"),  # 1/6 -> 16.67
]


def test_evaluate_on_small_files():
    metrics = evaluate(*make_files(SMALL))
    assert metrics["perQuestion"] == {"1": 90.0, "2": 100.0, "3": 0.0, "4": 16.67}
    assert metrics["overall"] == round(100 * (0.9 + 1.0 + 0.0 + 1 / 6) / 4, 2) == 51.67
    assert metrics["perAnswerType"] == {"other": 53.33, "number": 100.0, "yes/no": 0.0}
    assert metrics["perQuestionType"] == {"what color": 53.33, "how many": 100.0, "is the": 0.0}


def test_aggregates_average_unrounded_per_question_accuracy():
    # 1/6 and 0: the official mean of unrounded values is 8.33; averaging the rounded 16.67 would give 8.34
    items = [(1, "t", "other", ["a", "b"], "a"), (2, "t", "other", ["a", "b"], "c")]
    metrics = evaluate(*make_files(items))
    assert metrics["perQuestion"] == {"1": 16.67, "2": 0.0}
    assert metrics["overall"] == 8.33
    assert metrics["perAnswerType"] == {"other": 8.33}


@pytest.mark.slow
@pytest.mark.parametrize("answer_ids", [True, False])
def test_evaluate_matches_the_official_tool_on_random_files(answer_ids):
    rng = random.Random(2)
    items = []
    for qid in range(1500):
        prediction, gts = random_question(rng)
        items.append((qid, rng.choice(["what", "how many", "is"]), rng.choice(["other", "number", "yes/no"]), gts,
                      prediction))
    questions, annotations, results = make_files(items, answer_ids)
    rng.shuffle(results)  # the official loop takes results-file order
    results += [dict(rng.choice(results)) for _ in range(100)]  # repeated ids: scored again, last answer
    for entry in results[-50:]:
        entry["answer"] = random_answer(rng)
    metrics = evaluate(questions, annotations, results)
    assert metrics == official_metrics(questions, annotations, results)
    assert list(metrics["perQuestion"]) == list(official_metrics(questions, annotations, results)["perQuestion"])


def test_repeated_answer_objects_are_left_out_together_as_in_the_official_loop():
    # Without answer_ids, equal answer objects are equal dicts; the official `item != gtAnsDatum` then drops
    # all of them at once: each "yes" sees no other "yes" (0), each "no" sees four (1) -> 6/10.
    items = [(1, "is", "yes/no", ["yes"] * 4 + ["no"] * 6, "yes")]
    assert evaluate(*make_files(items, answer_ids=False))["overall"] == 60.0
    assert evaluate(*make_files(items, answer_ids=True))["overall"] == 100.0
    # one match: nothing to drop together, so it is the plain leave-one-out 0.3
    items = [(1, "is", "yes/no", ["no"] * 9 + ["yes"], "yes")]
    assert evaluate(*make_files(items, answer_ids=False))["overall"] == 30.0


def test_a_repeated_question_id_is_scored_again_on_the_processed_answers_as_in_the_official_loop():
    # Pass 1: "yes" and "Yes" disagree, so everything is processed and "YES" -> "yes" scores 1.0. The official
    # tool wrote the processed answers back, so pass 2 finds ten "yes", compares raw strings: "YES" scores 0.
    questions, annotations, results = make_files([(1, "is", "yes/no", ["yes"] * 9 + ["Yes"], "YES")])
    metrics = evaluate(questions, annotations, results * 2)
    assert metrics["overall"] == 50.0 and metrics["perQuestion"] == {"1": 0.0}  # per question: the last pass


def test_questions_are_taken_in_results_file_order():
    # the official loop (and so the order of its float sums) follows the results file
    items = [(q, "t", "other", ["a", "b", "c"], "a" if q % 3 else "b") for q in range(40)]
    questions, annotations, results = make_files(items)
    random.Random(0).shuffle(results)
    metrics = evaluate(questions, annotations, results)
    assert list(metrics["perQuestion"]) == [str(r["question_id"]) for r in results]
    assert metrics == official_metrics(questions, annotations, results)


def test_score_rows_aggregates_like_the_official_overall():
    rows = [{"question_id": q, "answer": pred, "gt_answers": gts, "answer_type": atype, "question_type": qtype}
            for q, qtype, atype, gts, pred in SMALL]
    out = score_rows(rows)
    assert out["vqa_accuracy"] == 51.67 and out["n"] == 4
    # exact: "Red" is not the majority ("blue" is); "two" -> "2" is; "Yes" != "yes"; "a" wins the a/b tie
    assert out["exact_match"] == 50.0
    assert out["per_answer_type"]["other"] == {"vqa_accuracy": 53.33, "exact_match": 50.0, "n": 2}
    assert out["per_answer_type"]["number"] == {"vqa_accuracy": 100.0, "exact_match": 100.0, "n": 1}
    with pytest.raises(UserError, match="row 0 \\(question_id 7\\): missing 'gt_answers'"):
        score_rows([{"question_id": 7, "answer": "x"}])
    with pytest.raises(UserError):
        score_rows([])


# --- the command line ------------------------------------------------------------------------------------

def run_cli(tmp_path, questions, annotations, results, *extra):
    paths = []
    for name, obj in (("q.json", questions), ("a.json", annotations), ("r.json", results)):
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
        paths.append(str(path))
    cmd = [sys.executable, "-m", "bench.vqa_eval", "--questions", paths[0], "--annotations", paths[1],
           "--results", paths[2], *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_cli_prints_and_writes_the_metrics(tmp_path):
    out = tmp_path / "m.json"
    proc = run_cli(tmp_path, *make_files(SMALL), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"overall\s+51\.67", proc.stdout)
    assert re.search(r"yes/no\s+0\.00", proc.stdout) and re.search(r"what color\s+53\.33", proc.stdout)
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["overall", "perAnswerType", "perQuestionType", "perQuestion"]
    assert metrics == evaluate(*make_files(SMALL))


def test_cli_results_in_any_order_and_repeated_ids_last_wins(tmp_path):
    q, a, r = make_files(SMALL)
    r = list(reversed(r)) + [{"question_id": 3, "answer": "no"}, {"question_id": 3, "answer": "yes"}]
    out = tmp_path / "m.json"
    proc = run_cli(tmp_path, q, a, r, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 repeated question ids" in proc.stderr
    assert json.loads(out.read_text())["perQuestion"]["3"] == 100.0


def test_cli_missing_and_unknown_ids_are_errors(tmp_path):
    q, a, r = make_files(SMALL)
    line = assert_one_line_error(run_cli(tmp_path, q, a, r[:2] + [{"question_id": 99, "answer": "x"}]),
                                 "2 annotated question ids have no answer (e.g. 3, 4)",
                                 "1 question ids are not in the annotations (e.g. 99)")
    assert "r.json" in line


@pytest.mark.slow
def test_cli_malformed_files_name_file_and_problem(tmp_path):
    q, a, r = make_files(SMALL)
    assert_one_line_error(run_cli(tmp_path, q, a, "[{"), "r.json", "not valid JSON")
    assert_one_line_error(run_cli(tmp_path, q, a, r[:3] + [{"question_id": 4}]), "r.json", "entry 3", "'answer'")
    assert_one_line_error(run_cli(tmp_path, q, a, r[:3] + [{"answer": "x"}]), "r.json", "'question_id'")
    assert_one_line_error(run_cli(tmp_path, q, a, r[:3] + [{"question_id": 4, "answer": 2}]), "r.json",
                          "'answer' must be a str")
    assert_one_line_error(run_cli(tmp_path, q, a, {"question_id": 1}), "r.json", "JSON array")
    assert_one_line_error(run_cli(tmp_path, q, {"questions": []}, r), "a.json", "'annotations' list")
    bad = json.loads(json.dumps(a))
    del bad["annotations"][1]["answer_type"]
    assert_one_line_error(run_cli(tmp_path, q, bad, r), "a.json", "entry 1 (question_id 2)", "'answer_type'")
    bad = json.loads(json.dumps(a))
    bad["annotations"][0]["answers"][0] = "red"
    assert_one_line_error(run_cli(tmp_path, q, bad, r), "a.json", "entry 0", "'answer'")
    bad = json.loads(json.dumps(a))
    bad["annotations"].append(bad["annotations"][0])
    assert_one_line_error(run_cli(tmp_path, q, bad, r), "a.json", "occur more than once (e.g. 1)")
    assert_one_line_error(run_cli(tmp_path, [], a, r), "q.json", "'questions' list")


def test_cli_missing_file_is_one_line(tmp_path):
    q, a, r = make_files(SMALL)
    run_cli(tmp_path, q, a, r)
    proc = subprocess.run([sys.executable, "-m", "bench.vqa_eval", "--questions", str(tmp_path / "q.json"),
                           "--annotations", str(tmp_path / "nope.json"), "--results", str(tmp_path / "r.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "annotations file not found", "nope.json")
