"""src/charts.py draws Chinese with a CJK font, and says which package to install when there is none.

A glyph no font in the family list has is drawn as a "missing glyph" box (matplotlib's last-resort
font draws one box per Unicode block: every Chinese character gets the same box). So a Chinese label is
rendered twice and compared pixel by pixel: with the configured fonts, and with DejaVu Sans alone, which
is known to miss it. With a CJK font they differ, and two different characters differ from each other;
without one they are the same box, which the second test shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from src import charts
from src.i18n import all_strings

NO_CJK = ["DejaVu Sans"]  # a font known to have no Chinese glyphs


def render(text: str, family: list[str] | None = None) -> np.ndarray:
    """`text` drawn as the charts draw it (or with `family` only), as grey pixels."""
    plt = charts.setup_matplotlib()
    fig = plt.figure(figsize=(1.0, 0.6), dpi=100)
    fig.text(0.5, 0.5, text, fontsize=30, ha="center", va="center", family=family)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].mean(axis=2)
    plt.close(fig)
    return pixels


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(charts, "_warned", [])


def test_chinese_labels_are_drawn_with_a_cjk_font(fresh_warning, capsys):
    assert charts.cjk_fonts(), "no CJK font: install one (Debian/Ubuntu: apt-get install fonts-noto-cjk)"
    box, zhong, wen = render("中", NO_CJK), render("中"), render("文")
    assert np.abs(box - render("文", NO_CJK)).mean() < 1  # missing glyphs all look alike
    assert (zhong < 128).sum() > 50  # something was drawn
    assert np.abs(zhong - box).mean() > 5 and np.abs(wen - box).mean() > 5  # not the missing-glyph box
    assert np.abs(zhong - wen).mean() > 5  # and two different characters
    assert "fonts-noto-cjk" not in capsys.readouterr().err


def test_without_a_cjk_font_one_warning_names_the_package(fresh_warning, monkeypatch, capsys):
    monkeypatch.setattr(charts, "CJK_FONTS", ("No Such Font SC",))
    box, zhong = render("中", NO_CJK), render("中")
    render("文")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "fonts-noto-cjk" in err, err
    assert np.abs(zhong - box).mean() < 1  # the check above would catch this: Chinese became the box
    charts.setup_matplotlib()  # restore the CJK fallback for later tests in this process
    monkeypatch.undo()
    charts.setup_matplotlib()


def test_a_case_picture_with_a_chinese_question(tmp_path):
    from PIL import Image

    pair = {"question_id": 7, "image_path": "baseline_images/pic_02.jpg", "question": "杯子里是什么？",
            "gt_answers": ["咖啡"] * 10, "answer_type": "other", "baseline_answer": "tea", "finetuned_answer": "咖啡",
            "baseline_raw_answer": "Tea.", "finetuned_raw_answer": "咖啡", "baseline_vqa": 0.0, "finetuned_vqa": 1.0}
    cache = charts.ImageCache(lambda p: charts.Path(__file__).resolve().parent.parent / p if p else None)
    from src.i18n import texts

    out = tmp_path / "case.png"
    charts.draw_case(charts.setup_matplotlib(), pair, "improved", cache, out, texts("zh"))
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (720, 260)


def test_both_languages_have_the_same_strings_and_placeholders():
    import string

    tables = all_strings()
    assert set(tables) == {"zh", "en"}
    assert set(tables["zh"]) == set(tables["en"])
    fields = lambda t: sorted(f for _, f, _, _ in string.Formatter().parse(t) if f)  # noqa: E731
    for key in tables["zh"]:
        assert fields(tables["zh"][key]) == fields(tables["en"][key]), key
