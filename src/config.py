"""Command-line overrides for a script's module-level constants (after nanoGPT's configurator).

A script keeps its knobs as UPPERCASE constants at the top, between two fence lines

    # -----------------------------------------------------------------------------
    MAX_SAMPLES = 1000  # ...
    DEBUG = False
    # -----------------------------------------------------------------------------

and calls `config = apply_overrides(globals())`, which reads `--name=value` arguments (name
case-insensitive, value parsed with `ast.literal_eval`, falling back to the raw string), checks
the type against the constant's current value and assigns it. Only the constants between the
fences are settings; unknown names and wrong types raise UserError. Editing a constant in the file
and passing it on the command line are the same thing (`DEBUG = True` in the file shows tracebacks
just as `--debug=True` does).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from .errors import UserError


_FENCE = re.compile(r"#\s*-{10,}\s*")
_PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


def _settings_block(path: str | Path) -> list[ast.stmt]:
    """The statements between the first two `# -----` fence lines of the script at `path`."""
    source = Path(path).read_text(encoding="utf-8")
    fences = [i for i, line in enumerate(source.splitlines(), 1) if _FENCE.fullmatch(line)]
    if len(fences) < 2:
        raise ValueError(f"{path}: no settings block (constants between two '# -----' lines)")
    return [node for node in ast.parse(source, filename=str(path)).body if fences[0] < node.lineno < fences[1]]


def _assigned(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    return []


def config_keys(namespace: dict) -> list[str]:
    """The script's settings: the constants assigned between the first two `# -----` fence lines of
    the file `namespace["__file__"]` (a script's globals), in file order."""
    path = namespace.get("__file__")
    if not path:
        raise ValueError("config_keys needs a script's globals (with __file__)")
    keys = [name for node in _settings_block(path) for name in _assigned(node)]
    wrong = [k for k in keys if not (k.isupper() and isinstance(namespace.get(k), _PLAIN))]
    if wrong:
        raise ValueError(f"{path}: settings must be UPPERCASE constants of plain types: {', '.join(wrong)}")
    return keys


def script_settings(path: str | Path) -> dict[str, Any]:
    """The settings of the script at `path` as its file states them, read without running it (so `src`
    and bench code can take a script's defaults without importing the script)."""
    return {name: ast.literal_eval(node.value) for node in _settings_block(path) for name in _assigned(node)}


def _parse(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare string such as --model_id=Salesforce/blip2-opt-2.7b


def _coerce(name: str, raw: str, current: Any) -> Any:
    value = _parse(raw)
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise UserError(f"--{name.lower()}={raw}: expected True or False")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, str):
        # a str constant takes the text as written, e.g. --prompt=1 stays "1"
        return raw if not isinstance(value, str) else value
    if isinstance(current, (list, tuple)) and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, list) and isinstance(value, tuple):
        value = list(value)
    if type(value) is not type(current):
        raise UserError(
            f"--{name.lower()}={raw}: expected {type(current).__name__} (like {current!r}), got {type(value).__name__}"
        )
    return value


def apply_overrides(namespace: dict, argv: list[str] | None = None) -> dict:
    """Apply `--name=value` overrides to `namespace` (a script's globals); return the resolved config."""
    argv = sys.argv[1:] if argv is None else argv
    keys = config_keys(namespace)
    by_lower = {k.lower(): k for k in keys}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"argument {arg!r}: use --name=value, e.g. --max_samples=100 (valid names: {', '.join(sorted(by_lower))})")
        name, raw = arg[2:].split("=", 1)
        key = by_lower.get(name.lower().replace("-", "_"))
        if key is None:
            raise UserError(f"unknown setting --{name}; valid settings: {', '.join('--' + k for k in sorted(by_lower))}")
        namespace[key] = _coerce(key, raw, namespace[key])
    return {k.lower(): namespace[k] for k in keys}


def write_config(config: dict, path: str | Path) -> None:
    """Write the resolved config as JSON next to a script's output."""
    from .io import atomic_write_text

    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False, default=str) + "\n")
