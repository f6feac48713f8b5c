"""compare_baseline_finetuned.py run as a subprocess on small, realistic result files, and the
paired bootstrap / join of src/compare.py. Expected numbers are computed here, question by question,
with src.vqa_eval.vqa_accuracy / exact_match, not with the code under test."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, module_fixture

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from src.compare import compare_rows  # noqa: E402
from src.vqa_eval import exact_match, paired_bootstrap, vqa_accuracy  # noqa: E402

SCRIPT = "compare_baseline_finetuned.py"
MODEL_ID = "Salesforce/blip2-opt-2.7b"
DECODING = {"num_beams": 5, "length_penalty": -1.0, "max_new_tokens": 10, "min_new_tokens": 1, "do_sample": False}
SCRIPT_ANSWER = "<script>alert(1)</script>"
MARKUP_QUESTION = "Is this <b>bold</b> & \"quoted\" 'text'?"
CHINESE_QUESTION = "杯子是什么颜色？"
ERROR_QID, SCRIPT_QID, MARKUP_QID, MISSING_IMAGE_QID = 9001, 9003, 9004, 9005


def _gt(*counts) -> list[str]:
    """Ten annotator answers from (answer, count) pairs."""
    out = [a for a, n in counts for _ in range(n)]
    assert len(out) == 10
    return out


# two questions per demo image, written from baseline_images/README.md's description of each picture
DEMO_QUESTIONS = [
    ("baseline_images/pic_01.jpg", "What color is the suit?", "other", "what color is the", _gt(("orange", 8), ("orange ", 1), ("red", 1))),
    ("baseline_images/pic_01.jpg", "Is there a flag?", "yes/no", "is there a", _gt(("yes", 10))),
    ("baseline_images/pic_02.jpg", "What is in the cup?", "other", "what is in the", _gt(("coffee", 7), ("espresso", 3))),
    ("baseline_images/pic_02.jpg", "Is there a spoon?", "yes/no", "is there a", _gt(("yes", 10))),
    ("baseline_images/pic_03.jpg", "What animal is this?", "other", "what animal is", _gt(("cat", 8), ("kitten", 1), ("tabby cat", 1))),
    ("baseline_images/pic_03.jpg", "What color are the eyes?", "other", "what color are the", _gt(("green", 8), ("yellow", 2))),
    ("baseline_images/pic_04.jpg", "Is it daytime?", "yes/no", "is it", _gt(("no", 9), ("yes", 1))),
    ("baseline_images/pic_04.jpg", "What is on the launch pad?", "other", "what is on the", _gt(("rocket", 8), ("spacex rocket", 1), ("falcon 9", 1))),
    ("baseline_images/pic_05.jpg", "Is this photo in color?", "yes/no", "is this", _gt(("no", 10))),
    ("baseline_images/pic_05.jpg", "What is the man looking through?", "other", "what is the man", _gt(("camera", 8), ("video camera", 2))),
    ("baseline_images/pic_06.jpg", "How many rows of coins are there?", "number", "how many", _gt(("4", 8), ("four", 1), ("3", 1))),
    ("baseline_images/pic_06.jpg", "What are these?", "other", "what are", _gt(("coins", 9), ("money", 1))),
    ("baseline_images/pic_07.jpg", "What is shown in the sky?", "other", "what is", _gt(("galaxies", 6), ("stars", 4))),
    ("baseline_images/pic_07.jpg", "Is the background black?", "yes/no", "is the", _gt(("yes", 10))),
    ("baseline_images/pic_08.jpg", "What body part is this?", "other", "what", _gt(("eye", 7), ("retina", 3))),
    ("baseline_images/pic_08.jpg", "How many eyes are shown?", "number", "how many", _gt(("1", 9), ("one", 1))),
    ("baseline_images/pic_09.jpg", "What color is the stain?", "other", "what color is the", _gt(("brown", 6), ("blue", 4))),
    ("baseline_images/pic_09.jpg", "Is this a microscope image?", "yes/no", "is this a", _gt(("yes", 9), ("no", 1))),
    ("baseline_images/pic_10.jpg", "What is the wall made of?", "other", "what is the", _gt(("brick", 6), ("bricks", 4))),
    ("baseline_images/pic_10.jpg", "How many windows are there?", "number", "how many", _gt(("0", 9), ("none", 1))),
]
STRATEGIES = ["improve", "same_right", "worsen", "improve", "same_wrong", "improve_partial", "same_right"]
WRONG = {"yes/no": None, "number": "7", "other": "purple"}


def _majority(gts):
    return max(gts, key=lambda a: sum(g.strip().lower() == a.strip().lower() for g in gts)).strip().lower()


def _minority(gts):
    maj = _majority(gts)
    rest = [g.strip().lower() for g in gts if g.strip().lower() != maj]
    return rest[0] if rest else maj


def _verbose(answer, answer_type):
    if answer_type == "yes/no":
        return f"{answer}, it is"
    if answer_type == "number":
        return f"there are {answer} of them"
    return f"a {answer} in the picture"


def _answers(strategy, gts, answer_type):
    maj = _majority(gts)
    wrong = ("no" if maj == "yes" else "yes") if answer_type == "yes/no" else WRONG[answer_type]
    return {
        "improve": (_verbose(maj, answer_type), maj),
        "improve_partial": (_verbose(maj, answer_type), _minority(gts)),
        "worsen": (maj, wrong),
        "same_right": (maj, maj),
        "same_wrong": (_verbose(maj, answer_type), wrong),
    }[strategy]


def _raw(answer, strategy, fine_tuned):
    """The model's text before the answer processing: the fine-tuned model's improved answers come
    capitalised with a full stop ("Orange." -> "orange"); the rest were already processed."""
    if answer is not None and fine_tuned and strategy == "improve":
        return answer.capitalize() + "."
    return answer


def _row(qid, image_path, question, answer_type, question_type, gts, answer, adapter, error=None, raw=None):
    row = {"question_id": qid, "image_id": qid // 1000, "image_path": image_path, "question": question,
           "answer": answer, "gt_answers": gts, "answer_type": answer_type, "question_type": question_type,
           "model_id": MODEL_ID, "adapter": adapter, "prompt": "vqa_opt", "decoding": DECODING, "error": error}
    if raw is not None:  # rows of older runs have no raw_answer: they count as unchanged
        row["raw_answer"] = raw
    if answer is not None:
        row["vqa_accuracy"], row["exact_match"] = vqa_accuracy(answer, gts), exact_match(answer, gts)
    else:
        row["vqa_accuracy"] = row["exact_match"] = None
    return row


def make_rows() -> tuple[list[dict], list[dict]]:
    """41 questions: the 16 of data/tiny.jsonl, 20 about the demo images, and five special ones."""
    tiny = [json.loads(line) for line in (REPO / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]
    questions = [(t["question_id"], t["image_path"], t["question"], t["answer_type"], t["question_type"], t["answers"])
                 for t in tiny]
    questions += [(20000 + i, *q) for i, q in enumerate(DEMO_QUESTIONS)]
    adapter = "outputs/lora_adapter"
    base, ft = [], []
    for i, (qid, path, question, atype, qtype, gts) in enumerate(questions):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        b, f = _answers(strategy, gts, atype)
        base.append(_row(qid, path, question, atype, qtype, gts, b, None, raw=_raw(b, strategy, False)))
        ft.append(_row(qid, path, question, atype, qtype, gts, f, adapter, raw=_raw(f, strategy, True)))
    red = tiny[0]["answers"]
    coffee = tiny[2]["answers"]
    sky = tiny[10]["answers"]
    special = [  # (qid, path, question, type, qtype, gts, base answer, ft answer, base error)
        (ERROR_QID, "data/picture_01.jpg", "Is the cup full?", "yes/no", "is the", _gt(("yes", 10)), None, "yes", "cannot identify image file"),
        (9002, "data/picture_01.jpg", CHINESE_QUESTION, "other", "what color is the", red, "红色的杯子", "red", None),
        (SCRIPT_QID, "data/picture_01.jpg", "What is in the cup?", "other", "what is in the", coffee, "coffee", SCRIPT_ANSWER, None),
        (MARKUP_QID, "data/picture_06.jpg", MARKUP_QUESTION, "yes/no", "is this", _gt(("yes", 10)), "yes", "yes", None),
        (MISSING_IMAGE_QID, "data/images/val2014/COCO_val2014_000000000042.jpg", "What color is the sky?", "other",
         "what color is the", sky, "the sky is blue", "blue", None),
    ]
    for qid, path, question, atype, qtype, gts, b, f, err in special:
        base.append(_row(qid, path, question, atype, qtype, gts, b, None, error=err))
        ft.append(_row(qid, path, question, atype, qtype, gts, f, adapter))
    random.Random(1).shuffle(ft)  # the script must join on question_id, not row order
    return base, ft


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_demo(out: Path) -> None:
    captions = ["an astronaut in an orange suit posing in front of a flag", "a cup of coffee on a saucer with a spoon",
                "a close up of a cat with green eyes", "a rocket on a launch pad at night",
                "a black and white photo of a man with a camera on a tripod", "a bunch of old coins on a table",
                "a picture of the night sky with many galaxies", "an image of the inside of an eye",
                "a microscope image of a tissue sample", "a black and white photo of a brick wall"]
    short = ["astronaut", "coffee", "cat", "rocket", "camera", "coins", "galaxies", "eye", "tissue", "brick wall"]
    base, ft = [], []
    for i, (cap, ans) in enumerate(zip(captions, short), 1):
        common = {"image_path": f"baseline_images/pic_{i:02d}.jpg", "question": "What is in the image?",
                  "model_id": MODEL_ID, "prompt": "vqa_opt", "decoding": DECODING}
        base.append({**common, "caption": cap, "answer": cap[0].upper() + cap[1:], "adapter": None})
        ft.append({**common, "caption": cap if i != 3 else "<img src=x onerror=alert(2)>", "answer": ans,
                   "adapter": "outputs/lora_adapter"})
    write_jsonl(out / "baseline.jsonl", base)
    write_jsonl(out / "baseline_finetuned.jsonl", ft)


def run(output_dir: Path, report_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, f"--output_dir={output_dir}", f"--report_dir={report_dir}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def clustered_interval(diffs, images, n_resamples: int, seed: int) -> tuple[float, float]:
    """The documented image-clustered bootstrap, written out: images numbered by first appearance, each
    resample draws that many image numbers (numpy's integers, the documented draw) and averages the
    differences of every question of the drawn images; 2.5th and 97.5th percentiles, in points."""
    order = list(dict.fromkeys(images))
    members = {image: [d for d, i in zip(diffs, images) if i == image] for image in order}
    means = []
    for row in np.random.default_rng(seed).integers(0, len(order), size=(n_resamples, len(order))):
        drawn = [d for k in row for d in members[order[k]]]
        means.append(sum(drawn) / len(drawn))
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * low, 100 * high


def expected(base: list[dict], ft: list[dict]) -> dict:
    """The numbers the report must show, question by question with the scorer's per-question functions."""
    ft_by_id = {r["question_id"]: r for r in ft}
    per = []
    for b in sorted(base, key=lambda r: r["question_id"]):  # the documented order of the bootstrap's input
        f = ft_by_id.get(b["question_id"])
        if f is None or b["error"] or f["error"]:
            continue
        per.append((b["answer_type"], vqa_accuracy(b["answer"], b["gt_answers"]), vqa_accuracy(f["answer"], b["gt_answers"]),
                    exact_match(b["answer"], b["gt_answers"]), exact_match(f["answer"], b["gt_answers"]), b["image_id"]))

    def stats(items):
        a = np.array([p[1:5] for p in items])
        return {"n": len(items), "base_vqa": 100 * a[:, 0].mean(), "ft_vqa": 100 * a[:, 1].mean(),
                "base_em": 100 * a[:, 2].mean(), "ft_em": 100 * a[:, 3].mean(),
                "better": int((a[:, 1] > a[:, 0]).sum()), "worse": int((a[:, 1] < a[:, 0]).sum()),
                "same": int((a[:, 1] == a[:, 0]).sum()), "vqa_diffs": a[:, 1] - a[:, 0], "images": [p[5] for p in items]}

    out = {"overall": stats(per)}
    for t in ("yes/no", "number", "other"):
        out[t] = stats([p for p in per if p[0] == t])
    return out


def summary_rows(summary: str) -> dict[str, list[str]]:
    """{first cell: cells} of summary.txt's table (cells are separated by two or more spaces)."""
    out = {}
    for line in summary.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and re.fullmatch(r"\d+", cells[1]):
            out[cells[0]] = cells
    return out


class ReportParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.rows, self.text, self.srcs = [], [], [], []
        self._in_questions = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "table" and "questions" in (attrs.get("class") or ""):
            self._in_questions = True
        if tag == "tr" and self._in_questions and "data-qid" in attrs:
            self.rows.append((int(attrs["data-qid"]), attrs.get("class")))
        for key in ("src", "href"):
            if key in attrs:
                self.srcs.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_questions = False

    def handle_data(self, data):
        self.text.append(data)


@module_fixture
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    out, report = tmp / "outputs", tmp / "report"
    out.mkdir()
    base, ft = make_rows()
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    write_jsonl(out / "vqav2_finetuned.jsonl", ft)
    write_demo(out)
    proc = run(out, report)
    assert proc.returncode == 0, proc.stderr
    return {"report": report, "base": base, "ft": ft, "proc": proc}


@pytest.mark.slow
def test_every_artefact_exists_and_pngs_are_images(full_run):
    report = full_run["report"]
    for name in ("summary.txt", "comparison.json", "report.html", "config.json", "accuracy.png",
                 "answer_length.png", "demo_images.png", "contact_sheet.png"):
        assert (report / name).is_file(), name
    data = json.loads((report / "comparison.json").read_text())
    cases = sorted((report / "cases").glob("case_*.png"))
    assert len(cases) == 12 == len(data["artefacts"]["cases"])  # 4 improved, 4 worsened, 4 unchanged
    for png in [*cases, *(report.glob("*.png"))]:
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and 300 <= img.width <= 4000 and 200 <= img.height <= 4000, (png, img.size)
    config = json.loads((report / "config.json").read_text())
    assert config["cases_per_group"] == 4 and config["report_dir"] == str(report)


@pytest.mark.slow
def test_numbers_equal_an_independent_computation(full_run):
    report, exp = full_run["report"], expected(full_run["base"], full_run["ft"])
    data = json.loads((report / "comparison.json").read_text())
    assert data["mode"] == "comparison" and data["partial"] is False
    assert data["n"] == exp["overall"]["n"] == 40
    assert data["errors"]["excluded"] == 1 and data["errors"]["baseline"] == 1
    o = exp["overall"]
    assert data["baseline"]["vqa_accuracy"] == pytest.approx(o["base_vqa"], abs=0.006)
    assert data["finetuned"]["vqa_accuracy"] == pytest.approx(o["ft_vqa"], abs=0.006)
    assert data["baseline"]["exact_match"] == pytest.approx(o["base_em"], abs=0.006)
    assert data["finetuned"]["exact_match"] == pytest.approx(o["ft_em"], abs=0.006)
    assert data["change"]["vqa_accuracy"]["diff"] == pytest.approx(o["ft_vqa"] - o["base_vqa"], abs=0.006)
    assert data["change"]["vqa_accuracy"]["low"] <= data["change"]["vqa_accuracy"]["diff"] <= data["change"]["vqa_accuracy"]["high"]
    assert {k: data["outcomes"][k] for k in ("better", "worse", "same")} == {k: o[k] for k in ("better", "worse", "same")}
    assert o["better"] > 0 and o["worse"] > 0 and o["same"] > 0
    for t in ("yes/no", "number", "other"):
        e = exp[t]
        assert data["baseline"]["per_answer_type"][t]["n"] == e["n"]
        assert data["baseline"]["per_answer_type"][t]["vqa_accuracy"] == pytest.approx(e["base_vqa"], abs=0.006)
        assert data["finetuned"]["per_answer_type"][t]["vqa_accuracy"] == pytest.approx(e["ft_vqa"], abs=0.006)
        assert data["finetuned"]["per_answer_type"][t]["exact_match"] == pytest.approx(e["ft_em"], abs=0.006)
        assert {k: data["outcomes"]["per_answer_type"][t][k] for k in ("better", "worse", "same")} == \
            {k: e[k] for k in ("better", "worse", "same")}
    # the fine-tuned answers are shorter
    assert data["answer_length"]["finetuned"]["mean_words"] < data["answer_length"]["baseline"]["mean_words"]

    # summary.txt (Chinese by default): the table row of each answer type, columns split on 2+ spaces
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    rows = summary_rows(summary)
    assert "对比的题数：40" in summary
    for label, e in (("总体", o), *((t, exp[t]) for t in ("yes/no", "number", "other"))):
        n, vqa_b, vqa_f, vqa_c, em_b, em_f, _, bws = rows[label][1:]
        assert int(n) == e["n"], label
        assert float(vqa_b) == pytest.approx(e["base_vqa"], abs=0.006) and float(vqa_f) == pytest.approx(e["ft_vqa"], abs=0.006)
        assert float(vqa_c.split()[0]) == pytest.approx(e["ft_vqa"] - e["base_vqa"], abs=0.006)
        assert float(em_b) == pytest.approx(e["base_em"], abs=0.006) and float(em_f) == pytest.approx(e["ft_em"], abs=0.006)
        assert [int(x) for x in bws.split(" / ")] == [e["better"], e["worse"], e["same"]]
    m = re.search(r"变好 (\d+)，变差 (\d+)，不变 (\d+)", summary)
    assert (int(m[1]), int(m[2]), int(m[3])) == (o["better"], o["worse"], o["same"])

    # the interval is the documented image-clustered paired percentile bootstrap, recomputed here loop by loop
    low, high = clustered_interval(exp["overall"]["vqa_diffs"], exp["overall"]["images"], 1000, 0)
    assert data["change"]["vqa_accuracy"]["low"] == pytest.approx(low, abs=0.006)
    assert data["change"]["vqa_accuracy"]["high"] == pytest.approx(high, abs=0.006)
    images = len(set(exp["overall"]["images"]))
    assert data["bootstrap"]["clusters"] == {"unit": "image", "n": images} and 1 < images < 40
    assert f"按图片整组重采样（{images} 张图片" in summary


def test_report_html_is_complete_escaped_and_offline(full_run):
    raw = (full_run["report"] / "report.html").read_text(encoding="utf-8")
    parser = ReportParser()
    parser.feed(raw)
    parser.close()
    qids = [q for q, _ in parser.rows]
    assert sorted(qids) == sorted(r["question_id"] for r in full_run["base"] if r["error"] is None)
    assert ERROR_QID not in qids
    classes = {cls for _, cls in parser.rows}
    assert classes == {"better", "worse", "same"}
    # injected markup is text, never markup
    assert "<script>alert(1)" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<img src=x" not in raw and "&lt;img src=x onerror=alert(2)&gt;" in raw
    assert "script" not in parser.tags and "b" not in parser.tags
    text = "".join(parser.text)
    assert MARKUP_QUESTION in text and SCRIPT_ANSWER in text and CHINESE_QUESTION in text
    images = json.loads((full_run["report"] / "comparison.json").read_text())["bootstrap"]["clusters"]["n"]
    assert f"按图片整组重采样（{images} 张图片" in text  # what the intervals resampled
    assert raw.index('class="types"') < raw.index("按图片整组重采样") < raw.index('class="chart"')  # under the table
    # self-contained: every image inline, nothing fetched from the network
    assert parser.srcs and all(s.startswith("data:image/") for s in parser.srcs)
    urls = re.findall(r"url\(([^)]*)\)", raw)
    assert urls and all(u.startswith("data:image/") for u in urls)
    assert "http://" not in raw and "https://" not in raw and "<link" not in raw
    # filters exist for improved / worsened / all
    assert 'id="f-better"' in raw and 'id="f-worse"' in raw and 'id="f-all"' in raw
    # the missing COCO image shows its path instead of a thumbnail
    assert "COCO_val2014_000000000042.jpg" in text


@pytest.mark.slow
def test_baseline_only_report(tmp_path):
    out, report = tmp_path / "outputs", tmp_path / "report"
    out.mkdir()
    base, _ = make_rows()
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    proc = run(out, report)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((report / "comparison.json").read_text())
    assert data["mode"] == "baseline_only" and data["finetuned"] is None and data["n"] == 40
    valid = [r for r in base if r["error"] is None]
    expect = 100 * np.mean([vqa_accuracy(r["answer"], r["gt_answers"]) for r in valid])
    assert data["baseline"]["vqa_accuracy"] == pytest.approx(expect, abs=0.006)
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    assert "缺少微调结果" in summary and "python evaluate_vqav2_finetuned.py" in summary
    raw = (report / "report.html").read_text(encoding="utf-8")
    assert "python evaluate_vqav2_finetuned.py" in raw and "baseline-only" in raw
    parser = ReportParser()
    parser.feed(raw)
    assert len(parser.rows) == 40
    assert (report / "accuracy.png").is_file() and not (report / "demo_images.png").exists()


def test_different_question_ids_fail_with_counts(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    base, ft = make_rows()
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    write_jsonl(out / "vqav2_finetuned.jsonl", [r for r in ft if r["question_id"] not in (1000, 1001, 1002)])
    proc = run(out, tmp_path / "report")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "41" in lines[0] and "38" in lines[0] and "3 only in baseline" in lines[0] and "--allow_partial=True" in lines[0]
    assert not (tmp_path / "report" / "report.html").exists()


@pytest.mark.slow
def test_allow_partial_compares_the_intersection(tmp_path):
    out, report = tmp_path / "outputs", tmp_path / "report"
    out.mkdir()
    base, ft = make_rows()
    ft = [r for r in ft if r["question_id"] not in (1000, 1001, 1002)]
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    write_jsonl(out / "vqav2_finetuned.jsonl", ft)
    # many cases per group: every example is drawn, the missing COCO image included
    proc = run(out, report, "--allow_partial=True", "--cases_per_group=40")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((report / "comparison.json").read_text())
    exp = expected(base, ft)["overall"]
    assert data["partial"] is True and data["n"] == exp["n"] == 37
    assert data["coverage"]["only_baseline"] == 3 and data["coverage"]["only_finetuned"] == 0
    assert data["finetuned"]["vqa_accuracy"] == pytest.approx(exp["ft_vqa"], abs=0.006)
    assert "部分对比（--allow_partial=True）" in (report / "summary.txt").read_text(encoding="utf-8")
    assert "部分对比（--allow_partial=True）" in (report / "report.html").read_text(encoding="utf-8")
    assert MISSING_IMAGE_QID in data["cases"]["improved"]
    assert sum(map(len, data["cases"].values())) == 37 == len(list((report / "cases").glob("case_*.png")))


def test_missing_baseline_is_a_clear_error(tmp_path):
    proc = run(tmp_path, tmp_path / "report")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vqav2_baseline.jsonl" in proc.stderr and "python create_vqav2_baseline.py" in proc.stderr


# --- src/compare.py ------------------------------------------------------------------------------

def test_paired_bootstrap_matches_numpy_and_is_deterministic():
    rng = np.random.default_rng(123)
    base = rng.integers(0, 4, 57) / 3
    ft = np.clip(base + rng.choice([-1 / 3, 0, 1 / 3, 2 / 3], 57), 0, 1)
    mean, low, high = paired_bootstrap(base, ft, n_resamples=500, seed=7)
    assert (mean, low, high) == paired_bootstrap(list(base), list(ft), n_resamples=500, seed=7)
    assert paired_bootstrap(base, ft, n_resamples=500, seed=8) != (mean, low, high)
    d = ft - base
    idx = np.random.default_rng(7).integers(0, len(d), size=(500, len(d)))
    ref_low, ref_high = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert mean == pytest.approx(100 * d.mean())
    assert low == pytest.approx(100 * ref_low) and high == pytest.approx(100 * ref_high)
    assert low <= mean <= high and low < high


def test_clustered_interval_is_wider_when_an_images_questions_move_together():
    """40 images x 5 questions, each image's questions all improved or all worsened together: resampling
    images gives the honest, wider interval; resampling questions as if independent is too narrow. Both
    equal the loops written out here."""
    rng = np.random.default_rng(5)
    images = [i for i in range(40) for _ in range(5)]
    moves = rng.choice([-1.0, 0.0, 1.0], size=40, p=[0.25, 0.35, 0.4])  # per image
    base = np.full(200, 0.5)
    ft = np.clip(base + 0.5 * moves[np.array(images)], 0, 1)
    mean, low, high = paired_bootstrap(base, ft, n_resamples=1000, seed=3, clusters=images)
    _, naive_low, naive_high = paired_bootstrap(base, ft, n_resamples=1000, seed=3)
    assert high - low > 1.8 * (naive_high - naive_low) > 0
    ref_low, ref_high = clustered_interval(ft - base, images, 1000, 3)
    assert (low, high) == (pytest.approx(ref_low, abs=1e-9), pytest.approx(ref_high, abs=1e-9))
    ref_low, ref_high = clustered_interval(ft - base, list(range(200)), 1000, 3)  # one question per image
    assert (naive_low, naive_high) == (pytest.approx(ref_low, abs=1e-9), pytest.approx(ref_high, abs=1e-9))
    assert mean == pytest.approx(100 * (ft - base).mean())
    # any labels work, in order of first appearance; a label per question is the plain bootstrap
    named = [f"COCO_{i:06d}" for i in images]
    assert paired_bootstrap(base, ft, n_resamples=1000, seed=3, clusters=named) == (mean, low, high)
    assert paired_bootstrap(base, ft, n_resamples=1000, seed=3, clusters=range(200)) == (mean, naive_low, naive_high)
    with pytest.raises(ValueError):
        paired_bootstrap(base, ft, clusters=images[:-1])


def test_rows_without_image_ids_resample_questions_and_say_so():
    from src.formatting import console_comparison
    from src.i18n import texts

    base, ft = make_rows()
    with_images = compare_rows(base, ft, n_resamples=200, seed=0)
    assert with_images["clusters"]["unit"] == "image"
    for rows in (base, ft):
        for r in rows:
            r.pop("image_id")
    cmp = compare_rows(base, ft, n_resamples=200, seed=0)
    assert cmp["clusters"] == {"unit": "question", "n": cmp["n"]} == {"unit": "question", "n": 40}
    assert cmp["change"]["clusters"] == cmp["clusters"]
    assert all(c["clusters"] == {"unit": "question", "n": c["n"]} for c in cmp["change"]["per_answer_type"].values())
    assert cmp["change"]["vqa_accuracy"]["diff"] == with_images["change"]["vqa_accuracy"]["diff"]
    # the plain paired bootstrap over the 40 questions, in compare_rows' order (by question_id)
    d = np.array([p["finetuned_vqa"] - p["baseline_vqa"] for p in cmp["pairs"]])
    idx = np.random.default_rng(0).integers(0, 40, size=(200, 40))
    low, high = 100 * np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert (cmp["change"]["vqa_accuracy"]["low"], cmp["change"]["vqa_accuracy"]["high"]) == (round(float(low), 2), round(float(high), 2))
    assert "resampling questions (40 questions: the result files do not record every question's image_id)" \
        in console_comparison(cmp, texts("en"))
    assert "按题目重采样（40 道题：结果文件没有给每道题记下 image_id）" in console_comparison(cmp, texts("zh"))


def test_one_row_without_an_image_id_resamples_questions():
    """An image count that silently left some questions out would mislead: a file with any row lacking
    image_id (or holding null) resamples questions, and says so."""
    base, ft = make_rows()
    next(r for r in base if r["error"] is None)["image_id"] = None
    cmp = compare_rows(base, ft, n_resamples=50, seed=0)
    assert cmp["clusters"] == {"unit": "question", "n": 40}


def test_per_answer_type_intervals_resample_that_types_images():
    from src.formatting import console_comparison
    from src.i18n import texts

    base, ft = make_rows()
    cmp = compare_rows(base, ft, n_resamples=300, seed=4)
    by_type: dict = {}
    for r in base:  # rows hold image_id = question_id // 1000 (make_rows)
        if r["error"] is None:
            by_type.setdefault(r["answer_type"], []).append(r["question_id"])
    pairs = {p["question_id"]: p for p in cmp["pairs"]}
    for t, qids in by_type.items():
        qids.sort()  # compare_rows orders its pairs by question_id
        images = [q // 1000 for q in qids]
        c = cmp["change"]["per_answer_type"][t]
        assert c["n"] == len(qids) and c["clusters"] == {"unit": "image", "n": len(set(images))}
        diffs = [pairs[q]["finetuned_vqa"] - pairs[q]["baseline_vqa"] for q in qids]
        low, high = clustered_interval(diffs, images, 300, 4)
        assert (c["vqa_accuracy"]["low"], c["vqa_accuracy"]["high"]) == (round(float(low), 2), round(float(high), 2)), t
    every = sorted(pairs)
    assert cmp["clusters"] == cmp["change"]["clusters"] == {"unit": "image", "n": len({q // 1000 for q in every})}
    low, high = clustered_interval([pairs[q]["finetuned_em"] - pairs[q]["baseline_em"] for q in every],
                                   [q // 1000 for q in every], 300, 4)
    assert (cmp["change"]["exact_match"]["low"], cmp["change"]["exact_match"]["high"]) == (round(float(low), 2), round(float(high), 2))
    images = cmp["clusters"]["n"]
    assert f"按图片整组重采样（{images} 张图片：同一张图片的题目一起抽取）" in console_comparison(cmp, texts("zh"))


def test_change_chart_title_names_what_was_resampled():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.charts import _change_panel
    from src.i18n import texts

    base, ft = make_rows()
    with_images = compare_rows(base, ft, n_resamples=50, seed=0)
    for rows in (base, ft):
        for r in rows:
            r.pop("image_id")
    without = compare_rows(base, ft, n_resamples=50, seed=0)
    titles = {}
    for name, cmp in (("images", with_images), ("questions", without)):
        for lang in ("zh", "en"):
            fig, ax = plt.subplots()
            _change_panel(ax, [None], ["overall"], [("VQA", cmp["change"], "vqa_accuracy", "#1e88e5")], texts(lang))
            titles[name, lang] = ax.get_title()
            plt.close(fig)
    assert titles["images", "zh"] == "变化（百分点）\n95% 置信区间：配对 bootstrap，按图片整组重采样"
    assert titles["questions", "zh"] == "变化（百分点）\n95% 置信区间：配对 bootstrap，按题目重采样"
    assert titles["images", "en"] == "change, points\n95% CI: paired bootstrap over images"
    assert titles["questions", "en"] == "change, points\n95% CI: paired bootstrap over questions"


def test_paired_bootstrap_zero_width_when_all_differences_equal():
    mean, low, high = paired_bootstrap([0.0, 1 / 3, 0.5, 0.0], [0.25, 7 / 12, 0.75, 0.25], n_resamples=200, seed=0)
    assert mean == pytest.approx(25.0) and low == pytest.approx(25.0) and high == pytest.approx(25.0)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_compare_rows_joins_on_question_id():
    base, ft = make_rows()
    result = compare_rows(base, list(reversed(ft)), n_resamples=50, seed=0)
    assert result["n"] == 40 and result["errors"]["excluded"] == 1
    by_id = {p["question_id"]: p for p in result["pairs"]}
    assert by_id[SCRIPT_QID]["finetuned_answer"] == SCRIPT_ANSWER and by_id[SCRIPT_QID]["outcome"] == "worse"
    assert by_id[MARKUP_QID]["outcome"] == "same"
    for r in ft:
        if r["question_id"] in by_id:
            assert by_id[r["question_id"]]["finetuned_vqa"] == r["vqa_accuracy"]
    assert set(result["outcomes"]["per_answer_type"]) == {"yes/no", "number", "other"}


@pytest.mark.slow
def test_report_goes_under_the_output_dir_when_one_is_given(tmp_path):
    base, ft = make_rows()
    write_jsonl(tmp_path / "vqav2_baseline.jsonl", base)
    write_jsonl(tmp_path / "vqav2_finetuned.jsonl", ft)
    proc = subprocess.run([sys.executable, "compare_baseline_finetuned.py", f"--output_dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("summary.txt", "comparison.json", "report.html", "accuracy.png"):
        assert (tmp_path / "comparisons" / name).exists(), name


def changed_by_processing(rows: list[dict], compared: set) -> int:
    return sum(r["question_id"] in compared and r.get("raw_answer") is not None and r["raw_answer"] != r["answer"]
               for r in rows)


def test_answer_processing_changes_are_counted_and_shown(full_run):
    report, base, ft = full_run["report"], full_run["base"], full_run["ft"]
    data = json.loads((report / "comparison.json").read_text())
    compared = {r["question_id"] for r in base if r["error"] is None}
    want_base, want_ft = changed_by_processing(base, compared), changed_by_processing(ft, compared)
    assert want_base == 0 < want_ft  # the fixture's fine-tuned model ends improved answers with "."
    proc = data["answer_processing"]
    assert (proc["baseline"]["changed"], proc["finetuned"]["changed"]) == (want_base, want_ft)
    assert proc["finetuned"]["n"] == 40 and proc["finetuned"]["with_raw"] == 40 - 4  # the compared special rows have none
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    assert f"基线 {want_base} / 40，微调后 {want_ft} / 40" in summary, summary
    raw = (report / "report.html").read_text(encoding="utf-8")
    changed = next(r for r in ft if r["question_id"] in compared and r.get("raw_answer") not in (None, r["answer"]))
    row = re.search(rf'<tr class="\w+" data-qid="{changed["question_id"]}">.*?</tr>', raw, re.S)[0]
    assert f"原文: {changed['raw_answer']}" in row


def test_report_opens_with_numbers_and_folds_the_cases(full_run):
    raw = (full_run["report"] / "report.html").read_text(encoding="utf-8")
    assert raw.index('class="types"') < raw.index('class="chart"') < raw.index('class="case-group"') \
        < raw.index('id="questions"')
    groups = re.findall(r'<details class="case-group" id="cases-(\w+)" open>(.*?)</details>\n</details>|'
                        r'<details class="case-group" id="cases-(\w+)" open>(.*?)</details>', raw, re.S)
    assert len(groups) == 3
    for g in groups:
        body = g[1] or g[3]
        shown = body.split('<details class="more">')[0]
        assert shown.count("<img") == 2  # CASES_SHOWN; the other two one click away
        assert body.count("<img") == 4
    assert re.search(r'<details id="questions">\s*<summary>全部题目（40）</summary>', raw)


@pytest.mark.slow
def test_english_report_summary_and_console(tmp_path):
    out, report = tmp_path / "outputs", tmp_path / "report"
    out.mkdir()
    base, ft = make_rows()
    write_jsonl(out / "vqav2_baseline.jsonl", base)
    write_jsonl(out / "vqav2_finetuned.jsonl", ft)
    proc = run(out, report, "--lang=en", "--cases_per_group=1")
    assert proc.returncode == 0, proc.stderr
    summary = (report / "summary.txt").read_text(encoding="utf-8")
    assert summary.startswith("BLIP-2 on VQAv2: zero-shot baseline vs QLoRA fine-tuned")
    assert "questions compared: 40" in summary and "better / worse / same" in summary
    images = json.loads((report / "comparison.json").read_text())["bootstrap"]["clusters"]["n"]
    assert f"resampling whole images ({images} images: the questions about one image are drawn together)" in summary
    assert not re.search(r"[\u4e00-\u9fff]", summary.replace(CHINESE_QUESTION, "").replace("红色的杯子", ""))
    exp = expected(base, ft)["overall"]
    assert float(summary_rows(summary)["overall"][2]) == pytest.approx(exp["base_vqa"], abs=0.006)
    raw = (report / "report.html").read_text(encoding="utf-8")
    assert '<html lang="en">' in raw and "Per answer type" in raw and "按答案类型" not in raw
    assert summary in proc.stdout
    proc = run(out, report, "--lang=fr")
    assert proc.returncode == 2 and "--lang=en" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_console_table_uses_the_same_numbers():
    """What evaluate_vqav2_finetuned.py prints after its run: the headline table of src.formatting."""
    from src.formatting import console_comparison
    from src.i18n import texts

    base, ft = make_rows()
    cmp = compare_rows(base, ft, n_resamples=100, seed=0)
    text = console_comparison(cmp, texts("en"))
    assert "baseline vs fine-tuned on the same 40 questions" in text and "95% interval" in text
    assert f"resampling whole images ({cmp['clusters']['n']} images" in text
    cells = summary_rows(text)["overall"]
    assert cells[1:4] == ["40", f"{cmp['baseline']['vqa_accuracy']:.2f}", f"{cmp['finetuned']['vqa_accuracy']:.2f}"]
    c = cmp["change"]["vqa_accuracy"]
    assert cells[4] == f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
    assert f"fine-tuned {cmp['answer_processing']['finetuned']['changed']} of 40" in text


@pytest.mark.slow
def test_an_unbroken_long_answer_wraps_inside_the_report(tmp_path):
    """A 10,000-character answer without a space: the report, every fold opened, stays about as wide as the
    window in a real browser (without wrapping, that one cell made the page ~100k px wide)."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"{chromium} missing (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    base, ft = make_rows()
    long = "w" * 10_000
    row = next(r for r in ft if r["answer"] is not None)
    row.update(answer=long, raw_answer=long, vqa_accuracy=0.0, exact_match=0.0)
    write_jsonl(tmp_path / "vqav2_baseline.jsonl", base)
    write_jsonl(tmp_path / "vqav2_finetuned.jsonl", ft)
    proc = run(tmp_path, tmp_path / "report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((tmp_path / "report" / "report.html").as_uri())
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        assert page.get_by_text(long[:50], exact=False).count() >= 1  # the answer is there, shown
        width = page.evaluate("document.documentElement.scrollWidth")
        browser.close()
    assert width <= 1.1 * 1200, width


@pytest.mark.slow
def test_the_repositorys_outputs_spelled_absolutely_from_elsewhere_report_where_the_demo_looks(tmp_path):
    """--output_dir=<repo>/outputs (absolute) started from another folder: the result files are read from that
    folder (not <repo>/vqav2_baseline.jsonl) and the report goes to <repo>/assets/comparisons, the demo's tab."""
    from helpers import fresh_copy

    repo = fresh_copy(tmp_path / "repo")
    base, ft = make_rows()
    write_jsonl(repo / "outputs" / "vqav2_baseline.jsonl", base)
    write_jsonl(repo / "outputs" / "vqav2_finetuned.jsonl", ft)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(repo / SCRIPT), f"--output_dir={repo / 'outputs'}"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (repo / "assets" / "comparisons" / "report.html").exists()
    assert not (repo / "outputs" / "comparisons").exists()


def test_a_report_folder_holding_a_model_is_refused_and_left_as_it_was(tmp_path):
    """--report_dir=<a model folder>: the report's config.json would replace the model's; one line, nothing touched."""
    base, ft = make_rows()
    write_jsonl(tmp_path / "vqav2_baseline.jsonl", base)
    write_jsonl(tmp_path / "vqav2_finetuned.jsonl", ft)
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "blip-2"}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    proc = run(tmp_path, model)
    assert_one_line_error(proc, f"--report_dir={model} holds files this script did not write", "config.json",
                          "model.safetensors", "choose an empty or new folder")
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.name != ".output.lock"} == before
