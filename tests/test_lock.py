"""requirements.txt is a lock made from requirements.in, and `python -m bench.lock --verify` (run by .ci/run after
the README's install) finds every way an environment can differ from it."""

from __future__ import annotations

import re

from bench import lock
from helpers import REPO


def test_the_lock_pins_every_requirement_and_leaves_torch_to_the_user():
    sources = (REPO / "requirements.in").read_text()
    wanted = {re.split(r"[<>=;\s]", line, maxsplit=1)[0].lower() for line in sources.splitlines()
              if line.strip() and not line.startswith("#")}
    text = lock.LOCK.read_text()
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)==\S+", text, re.M)
    assert wanted - {p.lower() for p in pinned} == set()
    assert "torch" not in {p.lower() for p in pinned}
    requirements = [line.split(";")[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9_.+]* ?", r) for r in requirements)  # exact versions
    assert "#    python -m bench.lock --refresh" in text  # how it was made, in the lock's own header


def test_verify_names_a_wrong_version_a_missing_package_and_one_the_lock_lacks(tmp_path):
    import importlib.metadata

    have = importlib.metadata.version("pytest")
    fake = tmp_path / "requirements.txt"
    fake.write_text("pytest==0.0.1\n    # via -r requirements.in\nno-such-package==1.0 ; python_version >= '3'\n"
                    "never-here==2.0 ; sys_platform == 'no-such-platform'\n")
    problems = lock.verify(fake)
    assert f"pytest: lock 0.0.1, installed {have}" in problems
    assert "no-such-package: lock 1.0, installed nothing" in problems
    assert not any(p.startswith("never-here") for p in problems)  # its marker does not apply here
    assert any(p.startswith("numpy: installed") and p.endswith("not in the lock") for p in problems)
    assert not any(p.startswith("torch") for p in problems)  # the user's choice of build


def test_this_lock_reads_back_with_one_version_per_package():
    pins = lock.pins(lock.LOCK)
    assert {"transformers", "peft", "bitsandbytes", "mplfonts", "pytest"} <= set(pins)
    assert all(len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==" for req in pins.values())
