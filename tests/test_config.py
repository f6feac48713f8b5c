"""src.config: --name=value overrides of the constants between a script's `# -----` fences."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import apply_overrides, config_keys
from src.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FENCE = "# " + "-" * 77

SCRIPT = f'''"""A script with a settings block."""
from src.config import apply_overrides
from src.errors import UserError, run_main

HELPER_CONSTANT = 3  # above the fences: not a setting
{FENCE}
MODEL_ID = "m"
MAX_SAMPLES = 10  # a comment
LR = 1e-4
USE_4BIT = True
TARGET_MODULES = ["q_proj"]
ADAPTER_DIR = ""
DEBUG = False
{FENCE}
# --- a section header is not a fence -------------------------------------------
RESUME_MUST_MATCH = ("model_id",)  # below the fences: not a setting
lower = 1


def main():
    apply_overrides(globals())
    raise UserError("no picture at x.jpg; pass --image=...")


if __name__ == "__main__":
    run_main(main)
'''


def script(tmp_path, text=SCRIPT) -> Path:
    path = tmp_path / "script.py"
    path.write_text(text)
    return path


def namespace(tmp_path, text=SCRIPT) -> dict:
    """The globals of the script above, as its own run would have them."""
    path = script(tmp_path, text)
    ns = {"__file__": str(path), "__name__": "not_main"}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return ns


def test_only_the_constants_between_the_fences_are_settings(tmp_path):
    ns = namespace(tmp_path)
    assert config_keys(ns) == ["MODEL_ID", "MAX_SAMPLES", "LR", "USE_4BIT", "TARGET_MODULES", "ADAPTER_DIR", "DEBUG"]
    for outside in ("--resume_must_match=x", "--helper_constant=4", "--lower=2"):
        with pytest.raises(UserError, match="unknown setting"):
            apply_overrides(ns, [outside])


def test_overrides_are_case_insensitive_and_typed(tmp_path):
    ns = namespace(tmp_path)
    cfg = apply_overrides(ns, ["--model_id=a/b", "--MAX_SAMPLES=5", "--lr=3", "--use_4bit=False",
                               "--target_modules=['q_proj','v_proj']", "--adapter_dir=outputs/x"])
    assert ns["MODEL_ID"] == "a/b" and ns["MAX_SAMPLES"] == 5 and ns["LR"] == 3.0 and isinstance(ns["LR"], float)
    assert ns["USE_4BIT"] is False and ns["TARGET_MODULES"] == ["q_proj", "v_proj"] and ns["ADAPTER_DIR"] == "outputs/x"
    assert cfg == {"model_id": "a/b", "max_samples": 5, "lr": 3.0, "use_4bit": False,
                   "target_modules": ["q_proj", "v_proj"], "adapter_dir": "outputs/x", "debug": False}


def test_comma_list_and_numeric_string(tmp_path):
    ns = namespace(tmp_path)
    apply_overrides(ns, ["--target_modules=q_proj,v_proj", "--model_id=123"])
    assert ns["TARGET_MODULES"] == ["q_proj", "v_proj"] and ns["MODEL_ID"] == "123"


def test_unknown_name_lists_valid_ones(tmp_path):
    with pytest.raises(UserError) as e:
        apply_overrides(namespace(tmp_path), ["--max_sample=5"])
    assert "--max_sample" in str(e.value) and "--max_samples" in str(e.value) and "--model_id" in str(e.value)
    assert "--lower" not in str(e.value) and "resume_must_match" not in str(e.value)


@pytest.mark.parametrize("arg", ["--max_samples=ten", "--max_samples=1.5", "--use_4bit=maybe", "--lr=[1]"])
def test_wrong_type_is_an_error(tmp_path, arg):
    with pytest.raises(UserError) as e:
        apply_overrides(namespace(tmp_path), [arg])
    assert "expected" in str(e.value)


def test_positional_argument_is_an_error(tmp_path):
    with pytest.raises(UserError):
        apply_overrides(namespace(tmp_path), ["max_samples=5"])


def test_a_script_without_a_settings_block_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="no settings block"):
        config_keys(namespace(tmp_path, SCRIPT.replace(FENCE, "")))
    with pytest.raises(ValueError, match="UPPERCASE"):
        config_keys(namespace(tmp_path, SCRIPT.replace("DEBUG = False", "debug = False")))


def _run(path, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(path), *args], cwd=path.parent, env=env, capture_output=True,
                          text=True, timeout=120)


def test_debug_edited_into_the_file_shows_the_traceback(tmp_path):
    quiet = _run(script(tmp_path))
    assert quiet.returncode == 2 and quiet.stderr == "error: no picture at x.jpg; pass --image=...\n"
    loud = _run(script(tmp_path, SCRIPT.replace("DEBUG = False", "DEBUG = True")))
    assert loud.returncode == 2 and "Traceback" in loud.stderr and loud.stderr.endswith("error: no picture at x.jpg; pass --image=...\n")
    assert "Traceback" in _run(script(tmp_path), "--debug=True").stderr
    # the command line still wins over the file, and a bad override is reported with the file's DEBUG
    assert "Traceback" not in _run(script(tmp_path, SCRIPT.replace("DEBUG = False", "DEBUG = True")), "--debug=False").stderr
    bad = _run(script(tmp_path, SCRIPT.replace("DEBUG = False", "DEBUG = True")), "--max_samples=ten")
    assert "Traceback" in bad.stderr and "expected int" in bad.stderr


def test_a_real_script_refuses_a_constant_below_its_fences():
    r = subprocess.run([sys.executable, "finetune_vqav2_lora.py", "--resume_must_match=x"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown setting --resume_must_match"), r.stderr


def test_the_real_scripts_debug_constant_is_their_last_setting():
    for name in ("mini_infer.py", "create_baseline.py", "create_vqav2_baseline.py", "finetune_vqav2_lora.py",
                 "evaluate_vqav2_finetuned.py", "compare_baseline_finetuned.py", "inference_demo.py"):
        path = REPO / name
        keys = config_keys({"__file__": str(path), **_literal_constants(path)})
        assert keys[-1] == "DEBUG", name


def _literal_constants(path: Path) -> dict:
    import ast

    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("args", [["--debug=True", "--max_samples=ten"], ["--max_samples=ten", "--debug=True"],
                                  ["--max_samples=ten", "--DEBUG=true"]])
def test_debug_shows_the_traceback_before_or_after_a_bad_override(args):
    from helpers import run_script

    proc = run_script("create_vqav2_baseline.py", *args)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: --max_samples=ten" in proc.stderr, proc.stderr
    plain = run_script("create_vqav2_baseline.py", "--max_samples=ten")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_debug_on_the_module_entry_point(tmp_path):
    from helpers import run_script

    missing = ["-m", "bench.vqa_eval", f"--questions={tmp_path / 'q.json'}", f"--annotations={tmp_path / 'a.json'}",
               f"--results={tmp_path / 'r.json'}"]
    assert "Traceback" in run_script(*missing, "--debug=True").stderr
    assert "Traceback" not in run_script(*missing).stderr
