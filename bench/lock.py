"""The lock file requirements.txt: check an environment against it, and try the newest versions before a student does.

  python -m bench.lock --verify     # the installed packages are exactly the lock's (torch aside); .ci/run runs it
  python -m bench.lock              # newest versions requirements.in allows, in a fresh venv: what moved, what failed
  python -m bench.lock --refresh    # the same, and requirements.txt rewritten only when the whole suite passed

The last two take about as long as the suite (docs/testing.md). uv resolves the lock; it is installed into a
throw-away venv, so it is no requirement of the project.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK, SOURCES = REPO / "requirements.txt", REPO / "requirements.in"
TORCH = "torch==2.13.0"  # the README's CPU line; the lock leaves torch out (CPU or CUDA build, the user's choice)
LOWEST_PYTHON = "3.11"  # the lock holds for this Python and newer
NOT_LOCKED = {"torch", "pip", "setuptools", "wheel", "triton"}  # and nvidia-*: what a CUDA build of torch brings
COMPILE = ["pip", "compile", str(SOURCES.name), "--universal", "--python-version", LOWEST_PYTHON,
           "--fork-strategy", "fewest", "--custom-compile-command", "python -m bench.lock --refresh"]


def pins(lock: Path) -> dict[str, Requirement]:
    """{name: requirement} of the lock's lines that apply to this interpreter (markers evaluated)."""
    found = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                found[canonicalize_name(req.name)] = req
    return found


def verify(lock: Path = LOCK) -> list[str]:
    """What differs between this environment and the lock: one line per package."""
    wanted = {name: str(next(iter(req.specifier)).version) for name, req in pins(lock).items()}
    have = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    problems = [f"{name}: lock {v}, installed {have.get(name, 'nothing')}" for name, v in sorted(wanted.items())
                if have.get(name) != v]
    problems += [f"{name}: installed {v}, not in the lock" for name, v in sorted(have.items())
                 if name not in wanted and name not in NOT_LOCKED and not name.startswith("nvidia-")]
    return problems


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, **kw)


def newest_lock(work: Path) -> Path:
    """requirements.in resolved to the newest versions allowed, written to work/requirements.txt."""
    tools = work / "tools"
    run([sys.executable, "-m", "venv", str(tools)], check=True)
    run([tools / "bin" / "python", "-m", "pip", "install", "-q", "uv"], check=True)
    (work / "not-locked.txt").write_text("torch\n")
    out = work / "requirements.txt"
    run([tools / "bin" / "uv", *COMPILE, "--excludes", work / "not-locked.txt", "-o", out, "--no-cache", "-q"],
        cwd=REPO, check=True)
    return out


def try_lock(lock: Path, work: Path) -> tuple[bool, str]:
    """A fresh venv with the README's install from `lock`, then the README's test command in it."""
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    start = time.time()
    run([python, "-m", "pip", "install", "-q", TORCH], check=True)
    run([python, "-m", "pip", "install", "-q", "-r", str(lock)], check=True)
    print(f"install: {time.time() - start:.0f} s", flush=True)
    start = time.time()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    suite = run([python, "-m", "pytest", "-q", "--full", "-p", "no:cacheprovider"], cwd=REPO, env=env,
                capture_output=True, text=True)
    print(f"suite: {time.time() - start:.0f} s", flush=True)
    tail = [line for line in suite.stdout.splitlines() if re.match(r"(FAILED|ERROR) |=+ .* in [\d.]+s", line)]
    return suite.returncode == 0, "\n".join(tail) or suite.stdout[-3000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify", action="store_true", help="compare this environment with requirements.txt")
    ap.add_argument("--refresh", action="store_true", help="rewrite requirements.txt when the suite passes")
    args = ap.parse_args()
    if args.verify:
        problems = verify()
        print("\n".join(problems) if problems else f"the environment is the lock ({len(pins(LOCK))} packages)")
        return 1 if problems else 0
    with tempfile.TemporaryDirectory(prefix="blip2-lock-") as tmp:
        work = Path(tmp)
        new = newest_lock(work)
        old_pins, new_pins = pins(LOCK), pins(new)
        moved = [f"  {n}: {old_pins[n].specifier if n in old_pins else '-'} -> {new_pins[n].specifier if n in new_pins else '-'}"
                 for n in sorted(set(old_pins) | set(new_pins))
                 if str(old_pins.get(n, "")) != str(new_pins.get(n, ""))]
        print(f"{len(moved)} package(s) moved:" if moved else "no package moved", *moved, sep="\n", flush=True)
        passed, summary = try_lock(new, work)
        print(summary)
        print("the suite passed with the newest versions" if passed else "the suite FAILED with the newest versions")
        if args.refresh and passed:
            shutil.copyfile(new, LOCK)
            print(f"{LOCK.name} rewritten: commit it")
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
