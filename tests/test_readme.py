"""The README's commands work exactly as written: the offline quick start runs line by line in a
fresh copy of the repository, and every script / flag the README names exists. `python` in a README
command is the interpreter that runs the tests, whatever `python` comes first on PATH."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import QUICKSTART_HEADING, REPO, command_argv, fresh_copy, readme_commands, run_command

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_block_after(heading: str) -> list[str]:
    return readme_commands(heading)


def test_setup_commands_are_the_two_documented_ones():
    install, test = code_block_after("## 两条准备命令")
    assert install.startswith("pip install -r requirements.txt")
    assert test.startswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements.txt" in ci and '"$PY" -m pytest -q' in ci


def test_offline_quick_start_runs_as_written(quickstart):
    commands = readme_commands(QUICKSTART_HEADING)
    assert len(commands) >= 8
    assert [cmd for cmd, _ in quickstart["runs"]] == commands
    for cmd, proc in quickstart["runs"]:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    build = quickstart["runs"][0]
    assert build[0] == "python -m twin outputs/tiny-blip2" and "reusing it" in build[1].stdout
    out = quickstart["out"]
    for name in ("mini_infer.json", "baseline.jsonl", "baseline_finetuned.jsonl", "vqav2_baseline.jsonl",
                 "vqav2_finetuned.jsonl", "lora_adapter/adapter_model.safetensors"):
        assert (out / name).exists(), name
    for name in ("report.html", "summary.txt", "comparison.json"):
        assert (quickstart["repo"] / "assets" / "comparisons" / name).exists(), name


def test_every_script_the_readme_runs_exists():
    scripts = set(re.findall(r"python ([a-z_0-9]+\.py)", README))
    assert {"mini_infer.py", "create_baseline.py", "create_vqav2_baseline.py", "finetune_vqav2_lora.py",
            "evaluate_vqav2_finetuned.py", "compare_baseline_finetuned.py", "inference_demo.py",
            "blip2_cli.py"} <= scripts
    for s in scripts:
        assert (REPO / s).exists(), s
    for module in re.findall(r"python -m ((?:src|bench)\.[a-z_]+|twin)\b", README):
        assert (REPO / (module.replace(".", "/") + ".py")).exists() or (REPO / module / "__main__.py").exists(), module
    docs = re.findall(r"\]\((docs/[^)]*)\)", README)
    assert docs and all((REPO / d).exists() for d in docs), docs


def test_the_quick_tier_is_the_tests_that_need_no_twin():
    """The README's edit-loop command selects every test that needs neither the twin nor the quick start,
    except those marked slow, and nothing else."""
    command = next(line.split("`")[1] for line in README.splitlines() if "-m quick`" in line)
    assert command == "python -m pytest -q -m quick"
    proc = subprocess.run([*command_argv(command), "--co", "-p", "no:cacheprovider", "--fixtures-per-test"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    chosen, total = map(int, re.search(r"(\d+)/(\d+) tests collected", proc.stdout).groups())
    assert 100 < chosen < total
    blocks = re.split(r"^-+ fixtures used by ", proc.stdout, flags=re.M)[1:]  # every chosen test with fixtures
    assert len(blocks) > 50
    for block in blocks:
        name = block.split(" -", 1)[0].strip()
        assert not re.search(r"^(tiny_model_dir|tiny_t5_dir|quickstart)\b", block, re.M), name


def _python_without_torch(folder):
    """A folder whose `python` and `python3` behave like an interpreter without the project's packages."""
    folder.mkdir()
    for name in ("python", "python3"):
        (folder / name).write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_a_readme_command_runs_with_the_tests_interpreter(tiny_model_dir, tmp_path):
    """The quick start's first line, as written, in a fresh copy, with a PATH whose `python` lacks torch:
    the harness runs it with sys.executable, while the same line through the shell gets PATH's python."""
    env = _python_without_torch(tmp_path / "bin")
    repo = fresh_copy(tmp_path / "repo")
    shutil.copytree(tiny_model_dir, repo / "outputs" / "tiny-blip2")
    command = readme_commands(QUICKSTART_HEADING)[0]
    assert command == "python -m twin outputs/tiny-blip2"
    assert command_argv(command) == [sys.executable, "-m", "twin", "outputs/tiny-blip2"]
    proc = run_command(command, cwd=repo, env=env)
    assert proc.returncode == 0 and "reusing it" in proc.stdout, proc.stderr[-2000:]
    shell = subprocess.run(command, shell=True, cwd=repo, capture_output=True, text=True, env={**os.environ, **env})
    assert shell.returncode != 0 and "No module named 'torch'" in shell.stderr


@pytest.mark.slow
def test_tests_pass_when_started_by_path_to_the_venv_python(tmp_path):
    """`/path/to/venv/bin/python -m pytest` with a PATH whose `python` lacks torch: the README-command test
    above passes in that pytest too (CI runs the whole suite that way, see .ci/run)."""
    env = {**os.environ, **_python_without_torch(tmp_path / "bin")}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           "tests/test_readme.py::test_a_readme_command_runs_with_the_tests_interpreter"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_a_group_runs_on_one_worker():
    """Tests sharing a module-scoped fixture stay on one worker of `-n 2` (conftest's scheduler; xdist's own
    group suffix does not reach the scheduler under pytest 9.2), so the fixture is built once."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-v", "--full", "-p", "no:cacheprovider",
                           "tests/test_testdev.py", "-k", "become_samples_without_answers or do_not_fit"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # both use one module fixture, no twin
    assert proc.returncode == 0, proc.stdout[-2000:]
    workers = re.findall(r"^\[(gw\d)\] .*PASSED", proc.stdout, re.M)
    assert len(workers) == 2 and len(set(workers)) == 1, proc.stdout[-2000:]
