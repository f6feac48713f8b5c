"""A script's settings: its annotated UPPERCASE constants between two `# -----` fence lines, overridden by
`--name=value` (after nanoGPT's configurator) and held to their declared types; docs/checks.md has the rules."""

import ast
import contextlib
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .files import atomic_write_text


REPO_ROOT = Path(__file__).resolve().parents[1]  # relative default paths (data/, outputs/...) are the repository's
_FENCE = re.compile(r"#\s*-{10,}\s*")
_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "tuple": tuple, "dict": dict,
          "None": type(None)}


def _settings_block(path: str | Path) -> dict[str, ast.stmt]:
    """{name: the statement assigning it} between the first two `# -----` fence lines of the script at `path`."""
    source = Path(path).read_text(encoding="utf-8")
    fences = [i for i, line in enumerate(source.splitlines(), 1) if _FENCE.fullmatch(line)]
    if len(fences) < 2:
        raise ValueError(f"{path}: no settings block (constants between two '# -----' lines)")
    block = [node for node in ast.parse(source, filename=str(path)).body if fences[0] < node.lineno < fences[1]]
    targets = [(t, node) for node in block for t in getattr(node, "targets", [getattr(node, "target", None)])]
    return {t.id: node for t, node in targets if isinstance(t, ast.Name)}


def declared_types(path: str | Path) -> dict[str, tuple[type, ...]]:
    """{setting: the types its annotation allows}, in file order (`TARGET_MODULES: str | list = "auto"`)."""
    types = {}
    for name, node in _settings_block(path).items():
        names = ast.unparse(node.annotation).split("|") if isinstance(node, ast.AnnAssign) else []
        if not name.isupper() or not names or any(n.strip() not in _TYPES for n in names):
            raise ValueError(f"{path}: settings are UPPERCASE constants annotated with plain types "
                             f"({' | '.join(_TYPES)}), e.g. `MAX_SAMPLES: int = 1000`: {name}")
        types[name] = tuple(_TYPES[n.strip()] for n in names)
    return types


def script_settings(path: str | Path) -> dict[str, Any]:
    """The settings of the script at `path` as its file states them, read without running it."""
    return {name: ast.literal_eval(node.value) for name, node in _settings_block(path).items()}


def _declared(value: Any, types: tuple[type, ...]) -> Any:
    """`value` as one of `types` (int -> float, list <-> tuple); TypeError when it is none of them (True is no int)."""
    if type(value) in types:
        return value
    if float in types and type(value) is int:
        return float(value)
    for have, want in ((list, tuple), (tuple, list)):
        if type(value) is have and want in types:
            return want(value)
    raise TypeError


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("True or False" if t is bool else t.__name__ for t in types)


def _coerce(name: str, raw: str, types: tuple[type, ...], default: Any) -> Any:
    """The command line's text for setting `name` as a value of its declared types."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as --model_id=Salesforce/blip2-opt-2.7b
    if bool in types and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        value = value.lower() in ("true", "yes")
    elif type(value) not in types and str in types:
        value = raw  # a str setting takes the text as written, e.g. --prompt=1 stays "1"
    elif isinstance(value, str) and (list in types or tuple in types):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return _declared(value, types)
    except TypeError:
        like = "" if bool in types else f" (like {default!r}), got {type(value).__name__}"
        raise UserError(f"--{name.lower()}={raw}: expected {_type_names(types)}{like}") from None


def _check_in_file(key: str, value: Any, types: tuple[type, ...], script: str) -> Any:
    """A constant as edited in the script's file, held to the type the command line would be."""
    try:
        return _declared(value, types)
    except TypeError:
        hint = ""
        if isinstance(value, str):
            with contextlib.suppress(UserError):
                hint = f"; write {key} = {_coerce(key, value, types, None)!r}, without quotes"
        raise UserError(f"{key} = {value!r} at the top of {script}: {key} takes {_type_names(types)}, not "
                        f"{type(value).__name__}{hint} (or pass --{key.lower()}=... on the command line)") from None


def apply_overrides(namespace: dict, argv: list[str] | None = None,
                    check: Callable[[str, Any, Any], Any] = lambda key, value, default: value) -> dict:
    """Apply `--name=value` overrides to a script's globals, the file's own values held to the same types, each
    value passed through `check(key, value, default)` (src.preflight.check_value); return the resolved config."""
    argv = sys.argv[1:] if argv is None else argv
    types = declared_types(namespace["__file__"])
    by_lower = {k.lower(): k for k in types}
    defaults = {k: namespace[k] for k in types}  # as the file states them
    given = set()
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"argument {arg!r}: use --name=value, e.g. --max_samples=100 (valid names: {', '.join(sorted(by_lower))})")
        name, raw = arg[2:].split("=", 1)
        key = by_lower.get(name.lower().replace("-", "_"))
        if key is None:
            raise UserError(f"unknown setting --{name}; valid settings: {', '.join('--' + k for k in sorted(by_lower))}")
        namespace[key] = _coerce(key, raw, types[key], defaults[key])
        given.add(key)
    script = Path(namespace["__file__"]).name
    for key in types:
        value = namespace[key] if key in given else _check_in_file(key, namespace[key], types[key], script)
        value = check(key, value, defaults[key])
        # a default relative folder (data/, outputs/...) is the repository's, wherever the script is started from;
        # hub ids, "{output_dir}/..." templates and *_FILE names (inside the output folder) are not
        if (value == defaults[key] and (key.lower().endswith("_dir") or key.lower() == "image") and value
                and "{" not in value and not os.path.isabs(os.path.expanduser(value))
                and Path.cwd().resolve() != REPO_ROOT):
            value = str(REPO_ROOT / value)
        namespace[key] = value
    return {k.lower(): namespace[k] for k in types}


def looks_like_path(value: str) -> bool:
    """A file or folder rather than a hub id ("org/name"): absolute, ./ ../ ~, a Windows drive, or several "/"."""
    return (value.startswith(("/", "./", "../", "~", "\\")) or value.count("/") > 1
            or (len(value) > 1 and value[1] == ":"))


def next_command(script: str, **flags) -> str:
    """The "next:" line a script prints: `python <script> --name=value ...`, shell-quoted, None flags left out."""
    return "next: " + " ".join(["python", script] + [shlex.quote(f"--{k}={v}") for k, v in flags.items() if v is not None])


def write_config(config: dict, path: str | Path) -> None:
    """Write the resolved config as JSON next to a script's output."""
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False, default=str) + "\n")
