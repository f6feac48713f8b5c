"""Every user-facing string of the demo, the report, summary.txt and the charts, by language, from
src/locales/<lang>.json (docs/details.md); answers, questions, file names and numbers are never translated."""

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
def texts(lang: str) -> Callable[..., str]:
    """tr(key, **values) for `lang`; values fill the {placeholders} of the string."""
    # an edit that breaks the JSON is one line naming the file, not a traceback
    table = read_json(LOCALES / f"{check_lang(lang)}.json", "locale file",
                      fix="mend the last edit (git diff src/locales)")
    return lambda key, **values: table[key].format(**values) if values else table[key]
