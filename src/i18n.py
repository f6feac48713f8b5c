"""Every user-facing string of the demo, the comparison report, summary.txt and the charts, by language.

The strings live in src/locales/<lang>.json (edit a word there; docs/details.md). Model answers, questions,
file names and numbers are never translated.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Callable

from .errors import UserError
from .files import read_json

LANGS = ("zh", "en")
LOCALES = Path(__file__).resolve().parent / "locales"


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise UserError(f"--lang={lang!r} is not a language of this project; use --lang=zh or --lang=en")
    return lang


@cache
def _table(lang: str) -> dict[str, str]:
    # an edit that breaks the JSON is one line naming the file, not a traceback
    return read_json(LOCALES / f"{lang}.json", "locale file", fix="mend the last edit (git diff src/locales)")


def texts(lang: str) -> Callable[..., str]:
    """tr(key, **values) for `lang`; values fill the {placeholders} of the string."""
    table = _table(check_lang(lang))

    def tr(key: str, **values) -> str:
        return table[key].format(**values) if values else table[key]

    return tr


def all_strings() -> dict[str, dict[str, str]]:
    """{lang: {key: template}}, for the test that both languages have the same keys and placeholders."""
    return {lang: dict(_table(lang)) for lang in LANGS}
