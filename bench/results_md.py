"""bench/RESULTS.md holds one marked section per benchmark; each script replaces only its own."""

from __future__ import annotations

from pathlib import Path

from src.files import atomic_write_text

RESULTS_MD = Path(__file__).with_name("RESULTS.md")


def write_section(name: str, text: str, path: Path = RESULTS_MD) -> None:
    """Replace the text between `<!-- name:start -->` and `<!-- name:end -->` (or append the section),
    leaving every other section of the file as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if start in old and end in old:
        rest = old[old.index(end) + len(end):].lstrip("\n")
        new = old[: old.index(start)] + block + ("\n" + rest if rest else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, new)
