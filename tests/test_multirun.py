"""compare_baseline_finetuned.py --finetuned_files=: several fine-tuned runs on the baseline's frozen sample,
side by side. The runs are cheap synthetic result files (test_compare's 41 questions answered three ways),
each naming an adapter folder whose train_log.jsonl this test writes; the expected numbers come from the
official VQA scorer's transcription (tests/vqa_official.py), question by question."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, module_fixture, run_script
from test_compare import _majority, clustered_interval, make_rows, run, summary_rows, write_jsonl
from vqa_official import official_scores

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from src.demo_app import comparison_view  # noqa: E402
from src.i18n import texts  # noqa: E402

RUNS = ["ft_lm", "ft_qformer", "ft_both"]
LABELS = ["LM", "Q-Former", "both"]
HELDOUT = {"ft_lm": 30.0, "ft_qformer": 40.0, "ft_both": None}  # ft_both's log has no held-out rows
FILES_ARG = "--finetuned_files=" + ",".join(f"{name}.jsonl" for name in RUNS)
LABELS_ARG = "--labels=" + ",".join(LABELS)


def _answer(name: str, i: int, base: dict, ft: dict) -> str:
    """Three different fine-tuned runs: test_compare's fine-tuned answers, half of them the baseline's, and
    right two times in three."""
    if name == "ft_lm":
        return ft["answer"] or "yes"
    if name == "ft_qformer":
        return (base["answer"] if i % 2 else ft["answer"]) or "no"
    return _majority(base["gt_answers"]) if i % 3 else "purple"


def write_run(out: Path, name: str, base: list[dict], answer_of, heldout: float | None, **changes) -> list[dict]:
    """<name>.jsonl answering the baseline's questions, its rows naming out/<name>/lora_adapter, whose
    train_log.jsonl carries held-out rows (every 5 steps) when `heldout` is given."""
    adapter = out / name / "lora_adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, b in enumerate(sorted(base, key=lambda r: r["question_id"])):
        answer = answer_of(i, b)
        row = {**copy.deepcopy(b), "adapter": str(adapter), "error": None, "answer": answer, "raw_answer": answer,
               "vqa_accuracy": None, "exact_match": None, **changes}  # scored again by the report
        rows.append(row)
    write_jsonl(out / f"{name}.jsonl", rows)
    log = [{"step": s, "loss": 2.0 / s, "lr": 1e-4} for s in range(1, 21)]
    if heldout is not None:
        for s in (5, 10, 15, 20):
            log[s - 1]["heldout"] = {"accuracy": heldout + s, "questions": 30, "decoding": "vqa_beam5",
                                     "per_answer_type": {"yes/no": heldout + 2 * s, "number": heldout - 5,
                                                         "other": heldout + s / 2}}
    (adapter / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
    return rows


def write_outputs(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    base, ft = make_rows()
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    write_jsonl(out / "vqav2_finetuned.jsonl", ft)
    ft_by_id = {r["question_id"]: r for r in ft}
    runs = {name: write_run(out, name, base, lambda i, b, n=name: _answer(n, i, b, ft_by_id[b["question_id"]]),
                            HELDOUT[name]) for name in RUNS}
    return {"base": base, "runs": runs}


@module_fixture
def three_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multirun") / "outputs"
    rows = write_outputs(out)
    reports = {}
    for lang in ("zh", "en"):
        reports[lang] = out / f"report_{lang}"
        proc = run(out, reports[lang], FILES_ARG, LABELS_ARG, f"--lang={lang}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return {**rows, "out": out, "reports": reports}


def expected(base: list[dict], runs: dict[str, list[dict]]) -> dict:
    """Per run and answer type: the official scorer's accuracy (points) on the questions every file answered,
    the change from the baseline, and the questions whose scores differ between the runs."""
    failed = {r["question_id"] for r in base if r["error"]}
    order = sorted((r for r in base if r["question_id"] not in failed), key=lambda r: r["question_id"])
    gts = [r["gt_answers"] for r in order]
    scores = {"baseline": official_scores([r["answer"] for r in order], gts)[0]}
    for name, rows in runs.items():
        by_id = {r["question_id"]: r for r in rows}
        scores[name] = official_scores([by_id[r["question_id"]]["answer"] for r in order], gts)[0]
    scores = {k: np.array(v, dtype=float) for k, v in scores.items()}  # each question's accuracy, 0..1
    types = np.array([r["answer_type"] for r in order])
    out = {"n": len(order), "images": [r["image_id"] for r in order], "scores": scores, "types": types}
    out["accuracy"] = {who: {t: 100 * s[types == t].mean() if t else 100 * s.mean() for t in (None, "yes/no", "number", "other")}
                       for who, s in scores.items()}
    run_scores = np.stack([scores[name] for name in runs])
    out["disagree"] = {r["question_id"] for r, spread in zip(order, run_scores.max(0) - run_scores.min(0)) if spread > 0}
    return out


def each_report(three_runs):
    """(texts, report folder, comparison.json) of the zh and the en report."""
    for lang in ("zh", "en"):
        report = three_runs["reports"][lang]
        yield texts(lang), report, json.loads((report / "comparison.json").read_text(encoding="utf-8"))


def test_the_table_equals_the_official_scorer_on_the_jsonl_rows(three_runs):
    exp = expected(three_runs["base"], three_runs["runs"])
    for tr, report, result in each_report(three_runs):
        assert result["mode"] == "multirun" and [r["label"] for r in result["runs"]] == LABELS
        assert result["n"] == exp["n"] == 40 and result["errors"]["excluded"] == 1
        table = summary_rows((report / "summary.txt").read_text(encoding="utf-8"))
        for t in (None, "yes/no", "number", "other"):
            cells = table[tr("overall") if t is None else t]
            assert cells[1] == str(exp["n"] if t is None else int((exp["types"] == t).sum()))
            base = exp["accuracy"]["baseline"][t]
            assert cells[2].startswith(f"{base:.2f} [")
            for k, name in enumerate(RUNS):
                acc = exp["accuracy"][name][t]
                assert cells[3 + 2 * k].startswith(f"{acc:.2f} ["), (t, name, cells)
                assert cells[4 + 2 * k].startswith(f"{acc - base:+.2f} ["), (t, name, cells)
                got = result["runs"][k]["finetuned"] if t is None else result["runs"][k]["finetuned"]["per_answer_type"][t]
                assert got["vqa_accuracy"] == pytest.approx(acc, abs=0.01)
        # the overall intervals: the documented image bootstrap of each run's scores, written out in test_compare
        for k, name in enumerate(RUNS):
            low, high = clustered_interval(exp["scores"][name], exp["images"], 1000, 0)
            i = result["runs"][k]["interval"]["overall"]
            assert (i["low"], i["high"]) == (pytest.approx(low, abs=0.006), pytest.approx(high, abs=0.006))
            assert table[tr("overall")][3 + 2 * k].endswith(f"[{i['low']:.2f}, {i['high']:.2f}]")
        assert set(result["disagreements"]["question_ids"]) == exp["disagree"]
        assert tr("disagreements", n=len(exp["disagree"]), total=40) in (report / "summary.txt").read_text("utf-8")


def test_curves_cases_and_missing_curve_line(three_runs):
    exp = expected(three_runs["base"], three_runs["runs"])
    for tr, report, result in each_report(three_runs):
        curves = {r["label"]: r["heldout"]["points"] for r in result["runs"]}
        assert [(p["step"], p["accuracy"]) for p in curves["LM"]] == [(s, 30.0 + s) for s in (5, 10, 15, 20)]
        assert curves["Q-Former"][0]["per_answer_type"]["number"] == 35.0 and curves["both"] == []
        assert result["artefacts"]["heldout_curve"] == "heldout_curve.png"
        assert Image.open(report / "heldout_curve.png").size[0] == 640  # one panel unless --heldout_per_type=True
        log = three_runs["out"] / "ft_both" / "lora_adapter" / "train_log.jsonl"
        missing = tr("heldout_missing", label="both", log=str(log))
        assert missing in (report / "summary.txt").read_text(encoding="utf-8")
        cases = result["cases"]["disagree"]
        assert len(cases) == 4 and set(cases) <= exp["disagree"]
        assert sorted(result["artefacts"]["cases"]) == sorted(
            f"cases/case_disagree_{i}_q{q}.png" for i, q in enumerate(cases, 1))


@pytest.mark.slow
def test_three_run_report_renders_in_chromium_zh_and_en(three_runs):
    """The report in a real browser: the side-by-side table with intervals, the held-out curve, the
    disagreement cases, one answer column per run, and the line about the run without a curve."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} missing (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    shots = REPO / "tests" / "artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        for lang in ("zh", "en"):
            tr = texts(lang)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((three_runs["reports"][lang] / "report.html").as_uri())
            header = page.locator("table.types th").all_inner_texts()
            assert header[:3] == [tr("answer_type"), tr("n"), f"{tr('vqa_accuracy')} {tr('baseline')}"]
            for label in LABELS:
                assert f"{tr('vqa_accuracy')} {label}" in header and f"{label} {tr('change_ci')}" in header
            rows = page.locator("table.types tbody tr")
            assert rows.count() == 4
            overall = rows.first.locator("td").all_inner_texts()
            assert overall[0] == tr("overall") and all(re.search(r"\[.+, .+\]", c) for c in overall[2:])
            curve = page.get_by_role("img", name=tr("charts_heldout"))
            assert curve.is_visible() and curve.evaluate("i => i.naturalWidth") > 300
            group = page.locator("#cases-disagree")
            assert tr("group_disagree") in group.locator("summary").first.inner_text()
            assert group.locator("img").count() == 4
            assert group.locator("img").first.evaluate("i => i.complete && i.naturalHeight") > 0
            assert page.get_by_text(f"{tr('heldout_missing', label='both', log='')[:12]}", exact=False).count() >= 1
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            q_header = page.locator("table.questions th").all_inner_texts()
            assert q_header[-3:] == LABELS
            page.click("label[for=f-disagree]")
            shown = page.locator("table.questions tbody tr:visible").count()
            assert shown == len(expected(three_runs["base"], three_runs["runs"])["disagree"])
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(shots / f"multirun_report_{lang}.png"))
            page.close()
        browser.close()


def test_the_demos_comparison_tab_reads_the_three_run_report(three_runs):
    for lang in ("zh", "en"):
        tr = texts(lang)
        report = three_runs["reports"][lang]
        text, (header, rows), charts, cases, html = comparison_view(report, lang)
        summary = summary_rows((report / "summary.txt").read_text(encoding="utf-8"))
        assert rows[0] == summary[tr("overall")]  # the same cells as the report's table
        assert [f"{tr('vqa_accuracy')} {label}" in header for label in LABELS] == [True] * 3
        assert (str(report / "heldout_curve.png"), tr("charts_heldout")) in charts
        assert len(cases) == 4 and html == str(report / "report.html")
        for label in LABELS:
            assert label.replace("-", "\\-") in text


@pytest.mark.slow
def test_the_demos_comparison_tab_shows_the_three_runs_in_a_browser(three_runs):
    """The Gradio app (no model needed for this tab) on the zh report: the side-by-side table, the held-out
    curve and the four disagreement cases."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} missing (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    from src.demo_app import DEMO_CSS, DemoOptions, build_demo

    demo = build_demo(None, None, adapter_available=False,
                      options=DemoOptions(comparisons_dir=str(three_runs["reports"]["zh"]), examples_dir="none"))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, css_paths=DEMO_CSS, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(demo.local_url)
            page.click("button[role=tab]:has-text('对比结果')")
            page.wait_for_function("document.querySelector('#comparison_table')?.innerText.includes('Q-Former')")
            table = page.inner_text("#comparison_table")
            overall = summary_rows((three_runs["reports"]["zh"] / "summary.txt").read_text(encoding="utf-8"))["总体"]
            assert all(cell in table for cell in overall[2:]), (overall, table)
            page.wait_for_selector("#chart_heldout_curve img")
            page.wait_for_selector("#comparison_cases img")
            assert page.locator("#comparison_cases img").count() == 4
            n = len(expected(three_runs["base"], three_runs["runs"])["disagree"])
            assert texts("zh")("disagreements", n=n, total=40) in page.inner_text("#comparison_summary")
            page.screenshot(path=str(REPO / "tests" / "artifacts" / "multirun_demo_comparison.png"), full_page=True)
            browser.close()
    finally:
        demo.close()


def test_a_run_on_another_frozen_sample_is_refused_in_one_line(tmp_path):
    out = tmp_path / "outputs"
    rows = write_outputs(out)
    other = [{**r, "question_id": r["question_id"] + 500_000} for r in rows["runs"]["ft_both"][:30]]
    write_jsonl(out / "ft_other.jsonl", other)
    proc = run(out, tmp_path / "report", "--finetuned_files=ft_lm.jsonl,ft_other.jsonl")
    assert_one_line_error(proc, "ft_other.jsonl", "frozen sample", "30 of its 30", "41 of the baseline's 41",
                          "--allow_partial=True")
    assert not (tmp_path / "report" / "comparison.json").exists()
    proc = run(out, tmp_path / "report", "--finetuned_files=ft_lm.jsonl,ft_both.jsonl", "--labels=a,b,c")
    assert_one_line_error(proc, "--labels=", "2 distinct names")
    proc = run(out, tmp_path / "report", "--finetuned_files=ft_lm.jsonl,ft_missing.jsonl")
    assert_one_line_error(proc, "ft_missing.jsonl", "--run_name=ft_missing")


@pytest.mark.slow
def test_partial_runs_and_missing_curves_say_so(tmp_path):
    """--allow_partial=True compares the questions every run has; runs without a curve (no log, a damaged log)
    get one line each and no curve chart, and a stale chart of an earlier report goes."""
    out = tmp_path / "outputs"
    rows = write_outputs(out)
    write_jsonl(out / "ft_lm.jsonl", rows["runs"]["ft_lm"][:-6])  # six questions fewer
    (out / "ft_lm" / "lora_adapter" / "train_log.jsonl").write_text('{"step": 1, "heldout": ', encoding="utf-8")
    (out / "ft_qformer" / "lora_adapter" / "train_log.jsonl").unlink()
    report = tmp_path / "report"
    report.mkdir()
    (report / "heldout_curve.png").write_bytes(b"old")
    proc = run(out, report, "--finetuned_files=ft_lm.jsonl,ft_qformer.jsonl", "--allow_partial=True", "--lang=en")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((report / "comparison.json").read_text(encoding="utf-8"))
    assert result["partial"] and result["n"] == 40 - 6
    assert not (report / "heldout_curve.png").exists()
    for label in ("ft_lm", "ft_qformer"):
        assert f"no held-out curve for {label}:" in proc.stdout
    # one run with a curve, drawn with a panel per answer type besides the overall one
    write_run(out, "ft_qformer", rows["base"], lambda i, b: b["answer"] or "no", 40.0)
    proc = run(out, report, "--finetuned_files=ft_lm.jsonl,ft_qformer.jsonl", "--allow_partial=True",
               "--heldout_per_type=True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(report / "heldout_curve.png").size[0] == 100 * (6.4 + 3 * 3.2)


@pytest.mark.slow
def test_one_file_in_finetuned_files_is_the_two_run_report(three_runs, tmp_path):
    """--finetuned_files= naming one run writes the same report as --finetuned_file=."""
    out = three_runs["out"]
    proc_a = run(out, tmp_path / "a", "--finetuned_files=ft_both.jsonl")
    proc_b = run(out, tmp_path / "b", "--finetuned_file=ft_both.jsonl")
    assert proc_a.returncode == proc_b.returncode == 0, proc_a.stderr[-2000:] + proc_b.stderr[-2000:]
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    for name in ("summary.txt", "report.html", "comparison.json"):
        a, b = ((tmp_path / d / name).read_text(encoding="utf-8") for d in "ab")
        assert stamp.sub("", a) == stamp.sub("", b), name
    result = json.loads((tmp_path / "a" / "comparison.json").read_text(encoding="utf-8"))
    assert result["mode"] == "comparison" and "runs" not in result
    assert not (tmp_path / "a" / "heldout_curve.png").exists()



def test_two_evaluations_of_the_twin_in_one_folder_compare_side_by_side(short_chain, tiny_model_dir, tmp_path):
    """The real chain on the twin: a baseline, one short fine-tuning (the session's short chain, tests/conftest.py),
    its adapter evaluated twice under two --run_name= in the baseline's folder; the comparison finds the adapter's
    train_log.jsonl through the rows (held-out rows added here, as a fine-tuning with --eval_every= writes them) and
    draws its curve."""
    import shutil

    out = shutil.copytree(short_chain, tmp_path / "out")
    common = [f"--model_id={tiny_model_dir}", "--dataset=tiny", "--num_workers=0", f"--output_dir={out}"]
    for name in ("ft_a", "ft_b"):
        run_script("evaluate_vqav2_finetuned.py", *common, "--quantization=none", f"--run_name={name}", check=True)
    log = out / "lora_adapter" / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    for row, accuracy in zip(rows, (12.5, 25.0)):
        row["heldout"] = {"accuracy": accuracy, "per_answer_type": {"yes/no": accuracy}, "questions": 8,
                          "decoding": "vqa_beam5"}
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = run_script("compare_baseline_finetuned.py", f"--output_dir={out}", "--finetuned_files=ft_a.jsonl,ft_b.jsonl",
                      "--lang=en", check=True)
    result = json.loads((out / "comparisons" / "comparison.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in result["runs"]] == ["ft_a", "ft_b"] and result["n"] == 16
    assert [p["accuracy"] for p in result["runs"][0]["heldout"]["points"]] == [12.5, 25.0]
    assert result["runs"][0]["heldout"]["log"] == str(log.resolve())
    assert (out / "comparisons" / "heldout_curve.png").is_file() and "no held-out curve" not in proc.stdout
    assert result["disagreements"]["n"] == 0  # one adapter, answered twice the same way
