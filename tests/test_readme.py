"""The README's commands work exactly as written: the offline quick start runs line by line in a
fresh copy of the repository, and every script / flag the README names exists."""

import re
import shutil
import subprocess
from pathlib import Path

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_block_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def fresh_copy(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "easy_vqa", "artifacts")
    shutil.copytree(REPO, dst, ignore=ignore)
    for d in ("outputs", "assets/comparisons"):  # as in a clean clone: only the .gitkeep
        for p in (dst / d).iterdir():
            if p.name != ".gitkeep":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def test_setup_commands_are_the_two_documented_ones():
    install, test = code_block_after("## 两条准备命令")
    assert install.startswith("pip install -r requirements.txt")
    assert test.startswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements.txt" in ci and "python3 -m pytest -q" in ci


def test_offline_quick_start_runs_as_written(tmp_path):
    repo = fresh_copy(tmp_path / "repo")
    commands = code_block_after("## 离线 CPU 快速体验")
    assert len(commands) >= 8
    for cmd in commands:
        proc = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    out = repo / "outputs"
    for name in ("mini_infer.json", "baseline.jsonl", "baseline_finetuned.jsonl", "vqav2_baseline.jsonl",
                 "vqav2_finetuned.jsonl", "lora_adapter/adapter_model.safetensors"):
        assert (out / name).exists(), name
    for name in ("report.html", "summary.txt", "comparison.json"):
        assert (repo / "assets" / "comparisons" / name).exists(), name


def test_every_script_the_readme_runs_exists():
    scripts = set(re.findall(r"python ([a-z_0-9]+\.py)", README))
    assert {"mini_infer.py", "create_baseline.py", "create_vqav2_baseline.py", "finetune_vqav2_lora.py",
            "evaluate_vqav2_finetuned.py", "compare_baseline_finetuned.py", "inference_demo.py",
            "blip2_cli.py"} <= scripts
    for s in scripts:
        assert (REPO / s).exists(), s
    for module in re.findall(r"python -m (src\.[a-z_]+)", README):
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
