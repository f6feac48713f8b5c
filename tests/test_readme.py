"""The README's commands work exactly as written: the offline quick start runs line by line in a
fresh copy of the repository, and every script / flag the README names exists."""

import re

from conftest import QUICKSTART_HEADING, REPO, readme_commands

README = (REPO / "README.md").read_text(encoding="utf-8")


def code_block_after(heading: str) -> list[str]:
    return readme_commands(heading)


def test_setup_commands_are_the_two_documented_ones():
    install, test = code_block_after("## 两条准备命令")
    assert install.startswith("pip install -r requirements.txt")
    assert test.startswith("python -m pytest -q")
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements.txt" in ci and "python3 -m pytest -q" in ci


def test_offline_quick_start_runs_as_written(quickstart):
    commands = readme_commands(QUICKSTART_HEADING)
    assert len(commands) >= 8
    assert [cmd for cmd, _ in quickstart["runs"]] == commands
    for cmd, proc in quickstart["runs"]:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    build = quickstart["runs"][0]
    assert build[0] == "python -m src.tiny_model outputs/tiny-blip2" and "reusing it" in build[1].stdout
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
    for module in re.findall(r"python -m (src\.[a-z_]+)", README):
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
