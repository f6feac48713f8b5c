"""One way for every script to fail: `run_main` turns a UserError (anything the user can fix) or a full disk
into one line on stderr saying what, where and how to fix, exit code 2; DEBUG = True adds the traceback."""

from __future__ import annotations

import errno
import sys
import traceback
from typing import Callable


class UserError(Exception):
    """An error the user can fix; its message is the whole report."""


def again(what: str, download: bool = True, retrain: bool = False) -> str:
    """The fix for a damaged file, worded once: "copy or download the model folder again", "copy the adapter
    folder again or retrain it with `python finetune_vqav2_lora.py`"."""
    tail = " or retrain it with `python finetune_vqav2_lora.py`" if retrain else ""
    return f"copy {'or download ' if download else ''}the {what} again{tail}"


def _close_progress_bars() -> None:
    """A bar left open by an error inside its loop ends its line, so the error line starts its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _debug_setting(main: Callable[[], object]) -> bool:
    """The script's DEBUG as it stands when an error arrives: the file's value after the command-line
    overrides, or, when the error is in the overrides themselves, the file's value or `--debug=True`."""
    if getattr(main, "__globals__", {}).get("DEBUG") is True:
        return True
    for arg in sys.argv[1:]:
        name, _, value = arg.partition("=")
        if name.lower().replace("-", "_") == "__debug" and value.lower() in ("true", "1", "yes"):
            return True
    return False


def run_main(main: Callable[[], object], debug: bool | None = None) -> None:
    """Run a script's `main`, reporting UserError (and Ctrl-C) as one line, no traceback."""
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show Chinese gets escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        main()
    except UserError as e:
        _close_progress_bars()
        if debug or (debug is None and _debug_setting(main)):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write no script wrapped (e.g. inside a library's save): still one line, and nothing is lost
        _close_progress_bars()
        if debug or (debug is None and _debug_setting(main)):
            traceback.print_exc()
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: the disk is full{where} ({e.strerror}); free some space and rerun the same command, "
              f"it resumes from what was saved", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted; finished rows are kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
