"""One way for every script to fail: `run_main` turns a UserError (anything the user can fix) or a full disk
into one line on stderr saying what, where and how to fix, exit code 2; DEBUG = True adds the traceback."""

import errno
import sys
import traceback
from typing import Callable


class UserError(Exception):
    """An error the user can fix; its message is the whole report."""


def again(what: str, download: bool = True, retrain: bool = False) -> str:
    """The fix for a damaged file, worded once: "copy or download the model folder again"."""
    tail = " or retrain it with `python finetune_vqav2_lora.py`" if retrain else ""
    return f"copy {'or download ' if download else ''}the {what} again{tail}"


def run_main(main: Callable[[], object], debug: bool | None = None) -> None:
    """Run a script's `main`, reporting UserError, a full disk (and Ctrl-C) as one line, no traceback."""
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show Chinese gets escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        main()
    except (UserError, OSError, KeyboardInterrupt) as e:
        if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        tqdm = sys.modules.get("tqdm")  # a bar left open inside its loop ends its line, so ours starts its own
        for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
            bar.close()
        if isinstance(e, KeyboardInterrupt):
            print("interrupted; finished rows are kept, rerun to resume", file=sys.stderr)
            sys.exit(130)
        if debug is None:  # the script's DEBUG after the overrides, or --debug=True (the overrides may be what failed)
            debug = getattr(main, "__globals__", {}).get("DEBUG") is True or any(
                name.lower().replace("-", "_") == "__debug" and value.lower() in ("true", "1", "yes")
                for name, _, value in (arg.partition("=") for arg in sys.argv[1:]))
        if debug:
            traceback.print_exc()
        message = e
        if isinstance(e, OSError):  # a write no script wrapped (e.g. inside a library's save): nothing is lost
            where = f" writing {e.filename}" if e.filename else ""
            message = (f"the disk is full{where} ({e.strerror}); free some space and rerun the same command, "
                       "it resumes from what was saved")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
