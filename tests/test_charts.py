"""src/charts.py draws Chinese with a CJK font (the system's, or the one the pip package mplfonts ships), finds a
system font installed after matplotlib cached its font list, and says what to install when there is none.

A glyph no font in the family list has is drawn as a "missing glyph" box (matplotlib's last-resort
font draws one box per Unicode block: every Chinese character gets the same box). So a Chinese label is
rendered twice and compared pixel by pixel: with the configured fonts, and with DejaVu Sans alone, which
is known to miss it. With a CJK font they differ, and two different characters differ from each other;
without one they are the same box, which the second test shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import CAN_MOUNT, REPO
from src import charts
from src.i18n import LANGS, LOCALES

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
    assert charts.cjk_fonts(), "no CJK font: `pip install -r requirements.txt` brings mplfonts"
    box, zhong, wen = render("中", NO_CJK), render("中"), render("文")
    assert np.abs(box - render("文", NO_CJK)).mean() < 1  # missing glyphs all look alike
    assert (zhong < 128).sum() > 50  # something was drawn
    assert np.abs(zhong - box).mean() > 5 and np.abs(wen - box).mean() > 5  # not the missing-glyph box
    assert np.abs(zhong - wen).mean() > 5  # and two different characters
    assert "warning" not in capsys.readouterr().err


def test_without_a_cjk_font_one_warning_names_the_package(fresh_warning, monkeypatch, capsys):
    monkeypatch.setattr(charts, "CJK_FONTS", ("No Such Font SC",))
    box, zhong = render("中", NO_CJK), render("中")
    render("文")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "requirements.txt" in err, err
    assert np.abs(zhong - box).mean() < 1  # the check above would catch this: Chinese became the box
    charts.setup_matplotlib()  # restore the CJK fallback for later tests in this process
    monkeypatch.undo()
    charts.setup_matplotlib()


def test_a_case_picture_with_a_chinese_question(tmp_path):
    from PIL import Image

    pair = {"question_id": 7, "image_path": "baseline_images/pic_02.jpg", "question": "杯子里是什么？",
            "gt_answers": ["咖啡"] * 10, "answer_type": "other", "baseline_answer": "tea", "finetuned_answer": "咖啡",
            "baseline_raw_answer": "Tea.", "finetuned_raw_answer": "咖啡", "baseline_vqa": 0.0, "finetuned_vqa": 1.0}
    cache = charts.image_cache(lambda p: charts.Path(__file__).resolve().parent.parent / p if p else None)
    from src.i18n import texts

    out = tmp_path / "case.png"
    charts.draw_case(charts.setup_matplotlib(), pair, "improved", cache, out, texts("zh"))
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (720, 260)


def test_both_languages_have_the_same_strings_and_placeholders():
    import string

    tables = {lang: json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}
    assert set(tables) == {"zh", "en"}
    assert set(tables["zh"]) == set(tables["en"])
    fields = lambda t: sorted(f for _, f, _, _ in string.Formatter().parse(t) if f)  # noqa: E731
    for key in tables["zh"]:
        assert fields(tables["zh"][key]) == fields(tables["en"][key]), key


# Prints the file of the CJK font the charts use, and whether "中" is drawn as something other than the box.
WHICH_FONT = """
import numpy as np
from matplotlib import font_manager
from src import charts
plt = charts.setup_matplotlib()
def draw(family):
    fig = plt.figure(figsize=(1.0, 0.6), dpi=100)
    fig.text(0.5, 0.5, "中", fontsize=30, ha="center", va="center", family=family)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].mean(axis=2)
    plt.close(fig)
    return pixels
drawn = np.abs(draw(None) - draw(["DejaVu Sans"])).mean() > 5
cjk = charts.cjk_fonts()
print(font_manager.findfont(font_manager.FontProperties(family=cjk[:1]), fallback_to_default=False) if cjk else "-")
print("drawn" if drawn else "box")
"""


@pytest.mark.slow
@pytest.mark.skipif(not CAN_MOUNT, reason="needs `unshare -r -m` to hide the system's fonts (Linux, user namespaces)")
def test_without_system_fonts_the_shipped_font_draws_and_a_font_installed_later_is_found(tmp_path):
    """A machine with no system font at all (a tmpfs over the font folders): the charts draw Chinese with the
    font mplfonts ships. Then a CJK font is installed into the user's font folder after matplotlib cached its
    font list: the next run uses it, with the cache left as it was."""
    home, cache = tmp_path / "home", tmp_path / "mplconfig"
    user_fonts = home / ".local" / "share" / "fonts"
    hide = " && ".join(f"mount -t tmpfs none {d}" for d in ("/usr/share/fonts", "/usr/local/share/fonts")
                       if os.path.isdir(d))

    def run() -> list[str]:
        sh = f'{hide + " && " if hide else ""}"$PY" -c "$CODE"'
        env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"),
               "MPLCONFIGDIR": str(cache), "PY": sys.executable, "CODE": WHICH_FONT}
        done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", sh], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
        return done.stdout.split()

    font, drawn = run()
    shipped = charts.importlib.util.find_spec("mplfonts").origin.rsplit("/", 1)[0] + "/fonts/NotoSansCJKsc-Regular.otf"
    assert (font, drawn) == (shipped, "drawn")
    [font_list] = cache.glob("fontlist-*.json")
    built = font_list.read_bytes()
    assert "NotoSansCJK" not in built.decode()  # the cache knows no CJK font: the shipped one is added at draw time

    user_fonts.mkdir(parents=True)  # "installing" a system CJK font after the cache was built
    (user_fonts / "MyCJK-Regular.otf").write_bytes(open(shipped, "rb").read())
    font, drawn = run()
    assert (font, drawn) == (str(user_fonts / "MyCJK-Regular.otf"), "drawn")
    assert font_list.read_bytes() == built  # found without rebuilding (or deleting) matplotlib's cache
