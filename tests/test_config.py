"""src.config: --name=value overrides of the constants between a script's `# -----` fences."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import apply_overrides, declared_types
from src.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FENCE = "# " + "-" * 77

SCRIPT = f'''"""A script with a settings block."""
from src.config import apply_overrides
from src.errors import UserError, run_main

HELPER_CONSTANT = 3  # above the fences: not a setting
{FENCE}
MODEL_ID: str = "m"
MAX_SAMPLES: int = 10  # a comment
LR: float = 1e-4
USE_4BIT: bool = True
TARGET_MODULES: list = ["q_proj"]
ADAPTER_DIR: str = ""
DEBUG: bool = False
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


def config_keys(namespace: dict) -> list[str]:
    """The settings of the script whose globals are `namespace`, in file order."""
    return list(declared_types(namespace["__file__"]))


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
        config_keys(namespace(tmp_path, SCRIPT.replace("DEBUG: bool = False", "debug: bool = False")))
    with pytest.raises(ValueError, match="annotated"):  # the type a setting takes is written beside it
        config_keys(namespace(tmp_path, SCRIPT.replace("DEBUG: bool = False", "DEBUG = False")))


def _run(path, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(path), *args], cwd=path.parent, env=env, capture_output=True,
                          text=True, timeout=120)


def test_debug_edited_into_the_file_shows_the_traceback(tmp_path):
    quiet = _run(script(tmp_path))
    assert quiet.returncode == 2 and quiet.stderr == "error: no picture at x.jpg; pass --image=...\n"
    loud = _run(script(tmp_path, SCRIPT.replace("DEBUG: bool = False", "DEBUG: bool = True")))
    assert loud.returncode == 2 and "Traceback" in loud.stderr and loud.stderr.endswith("error: no picture at x.jpg; pass --image=...\n")
    assert "Traceback" in _run(script(tmp_path), "--debug=True").stderr
    # the command line still wins over the file, and a bad override is reported with the file's DEBUG
    assert "Traceback" not in _run(script(tmp_path, SCRIPT.replace("DEBUG: bool = False", "DEBUG: bool = True")), "--debug=False").stderr
    bad = _run(script(tmp_path, SCRIPT.replace("DEBUG: bool = False", "DEBUG: bool = True")), "--max_samples=ten")
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
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and node.value is not None:
            try:
                out[target.id] = ast.literal_eval(node.value)
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


@pytest.mark.parametrize("edited, says", [
    ('USE_4BIT: bool = "False"', "USE_4BIT = 'False' at the top of script.py: USE_4BIT takes True or False, not str; "
                                 "write USE_4BIT = False, without quotes"),
    ('MAX_SAMPLES: int = "100"', "MAX_SAMPLES takes int, not str; write MAX_SAMPLES = 100, without quotes"),
    ("MAX_SAMPLES: int = 8.0", "MAX_SAMPLES = 8.0 at the top of script.py: MAX_SAMPLES takes int, not float"),
    ('LR: float = "1e-4"', "LR takes float, not str; write LR = 0.0001, without quotes"),
    ("MODEL_ID: str = 5", "MODEL_ID = 5 at the top of script.py: MODEL_ID takes str, not int"),
])
def test_a_constant_edited_in_the_file_is_checked_like_the_command_line(tmp_path, edited, says):
    """A bool written as a string is an error, never truthy; a number in quotes or of the wrong kind too."""
    name = edited.split(":")[0]
    line = next(line for line in SCRIPT.splitlines() if line.startswith(name + ":"))
    ns = namespace(tmp_path, SCRIPT.replace(line, edited))
    with pytest.raises(UserError) as e:
        apply_overrides(ns, [])
    assert says in str(e.value) and "\n" not in str(e.value)
    apply_overrides(namespace(tmp_path, SCRIPT.replace(line, edited)), [f"--{name.lower()}={ns_default(name)}"])


def ns_default(name: str) -> str:
    """A good command-line value for `name`: the command line still wins over a bad constant in the file."""
    return {"USE_4BIT": "False", "MAX_SAMPLES": "100", "LR": "1e-4", "MODEL_ID": "m"}[name]


def test_an_int_constant_where_a_float_is_declared_is_that_float(tmp_path):
    ns = namespace(tmp_path, SCRIPT.replace("LR: float = 1e-4", "LR: float = 1"))
    assert apply_overrides(ns, [])["lr"] == 1.0 and isinstance(ns["LR"], float)


def test_a_real_script_refuses_a_string_bool_in_its_file_before_any_work(tmp_path):
    """inference_demo.py with SHARE = "False" edited in: one line, exit 2, no server started, no public link."""
    import shutil

    demo = tmp_path / "inference_demo.py"
    shutil.copy(REPO / "inference_demo.py", demo)
    demo.write_text(demo.read_text().replace("SHARE: bool = False", 'SHARE: bool = "False"'))
    r = _run(demo)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: SHARE = 'False' at the top of inference_demo.py: SHARE takes True or False")


def test_mps_on_a_machine_without_it_is_refused():
    """--device=mps where torch has no MPS: one line, never a CPU run recorded as "mps"."""
    import torch

    from src.preflight import check_value

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(UserError, match="--device=mps: this machine has no Apple GPU"):
        check_value("DEVICE", "mps")
