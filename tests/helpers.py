"""What the tests share besides fixtures: running the scripts as a user would, reading the README's
command blocks, and checking one-line errors. Imported as `from helpers import ...` (the fixtures
stay in conftest.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_FIXTURES: set[str] = set()  # names of module-scoped fixtures (see module_fixture)
README = REPO / "README.md"
QUICKSTART_HEADING = "## 离线 CPU 快速体验"


def readme_commands(heading: str = QUICKSTART_HEADING, readme: Path = README) -> list[str]:
    """The commands of the first bash block after `heading` in the README, exactly as written
    (comment lines left out)."""
    section = readme.read_text(encoding="utf-8").split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def command_argv(command: str) -> list[str]:
    """A README command line as the argv to run: `python` at its start becomes the interpreter that runs
    the tests, so a command runs with the project's packages whatever `python` is first on PATH."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def script_env(env: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}


def run_script(*args, timeout=600, env=None, check=False, cwd=REPO) -> subprocess.CompletedProcess:
    """Run `python <args...>` (this interpreter) from the repo root, as a user would."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=script_env(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


def run_in_process(*args, env=None) -> subprocess.CompletedProcess:
    """`python <script> <args...>` inside this process, as HF's example tests call main(): for error matrices,
    whose runs end before the model loads and would otherwise pay a new interpreter's imports each. The script
    runs as __main__ in a fresh namespace from the repo root; stderr says MODEL LOAD STARTED when BLIP-2's
    weights start loading (as the sitecustomize hook of the subprocess tests does)."""
    import contextlib
    import io
    import runpy
    import traceback

    from transformers import Blip2ForConditionalGeneration as Blip2

    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, environ, cwd, load = sys.argv, dict(os.environ), os.getcwd(), Blip2.from_pretrained

    def marked_load(cls, *a, **k):
        print("MODEL LOAD STARTED", file=sys.stderr, flush=True)
        return load(*a, **k)

    command = [str(args[0]), *map(str, args[1:])]
    sys.argv = list(command)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    Blip2.from_pretrained = classmethod(marked_load)
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO / args[0]), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            except BaseException:  # what a subprocess would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(cwd)
        del Blip2.from_pretrained  # the inherited classmethod again
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = argv
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def run_command(command: str, cwd: Path, timeout=900, env=None) -> subprocess.CompletedProcess:
    """Run one README command line (see `command_argv`) in `cwd`."""
    return subprocess.run(command_argv(command), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=script_env(env))


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: exit code 2, no traceback, an 'error:' line naming each fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


KILL_HOOK = """
import os, signal, importlib
_module, _, _path = os.environ["KILL_AT_CALL"].partition(":")
_owner = importlib.import_module(_module)
*_parents, _name = _path.split(".")
for _p in _parents:
    _owner = getattr(_owner, _p)
_real, _left = getattr(_owner, _name), [int(os.environ["KILL_AT_COUNT"])]
def _counting(*args, **kwargs):
    out = _real(*args, **kwargs)
    _left[0] -= 1
    if _left[0] == 0:  # the marker: that call is done, the next has not started
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(_owner, _name, _counting)
"""


def start_script(*args, env=None, kill_at: tuple[str, int] | None = None, hook_dir: Path | None = None) -> subprocess.Popen:
    """Start `python <args...>` from the repo root in the background (output discarded).

    kill_at=("module:attr.path", n): the script SIGKILLs itself right after its n-th call of that function
    returns (e.g. ("src.files:JsonlAppender.write", 3) = after the third batch of rows is on disk), in
    the process that makes the call. The kill happens at that exact point, however fast the run is: no
    polling from outside that a quick run could slip past. `hook_dir` (needed with kill_at) receives the
    sitecustomize.py that does it."""
    env = dict(env or {})
    if kill_at is not None:
        (hook_dir / "sitecustomize.py").write_text(KILL_HOOK)
        env.update(KILL_AT_CALL=kill_at[0], KILL_AT_COUNT=str(kill_at[1]),
                   PYTHONPATH=os.pathsep.join([str(hook_dir), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=script_env(env))


def killed_at_marker(proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Wait for a start_script(kill_at=...) process: True when it killed itself at the marker, False when
    it finished before reaching it."""
    code = proc.wait(timeout=timeout)
    return code == -signal.SIGKILL


def half_written(out: Path) -> list[str]:
    """What a killed run left half-written in `out` (empty when nothing): a JSON file that does not parse, a JSONL
    line but a torn last one that does not, a listed checkpoint that is not whole, a final adapter without its files."""
    import json

    from src.training import checkpoint_dirs, checkpoint_problem

    found = []
    for p in out.rglob("*.json"):
        try:
            if not p.name.startswith("."):
                json.loads(p.read_text())
        except ValueError:
            found.append(str(p))
    for p in out.rglob("*.jsonl"):
        for line in p.read_bytes().split(b"\n")[:-1]:
            try:
                json.loads(line)
            except ValueError:
                found.append(f"{p}: {line[:80]!r}")
    found += [f"{d}: {checkpoint_problem(d)}" for d in checkpoint_dirs(out / "lora_adapter_checkpoints")
              if checkpoint_problem(d) is not None]
    adapter = out / "lora_adapter"
    if adapter.exists() and not all((adapter / f).exists() for f in ("adapter_model.safetensors",
                                                                      "training_config.json")):
        found.append(str(adapter))
    return found


def raw_loss_steps(run_dir: Path) -> list[list[int]]:
    """The steps of train/loss as written, per TensorBoard event file in the order written (nothing hidden)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3]))
    return [[e.step for e in EventFileLoader(str(f)).Load() if any(v.tag == "train/loss" for v in e.summary.value)]
            for f in files]


def fresh_copy(dst: Path) -> Path:
    """The repository as a clean clone has it (no outputs, no converted data)."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "easy_vqa", "artifacts", ".venv")
    shutil.copytree(REPO, dst, ignore=ignore)
    for d in ("outputs", "assets/comparisons"):  # as in a clean clone: only the .gitkeep
        for p in (dst / d).iterdir():
            if p.name != ".gitkeep":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def quickstart_run(quickstart: dict, script: str) -> subprocess.CompletedProcess:
    """The quick start's run of `script` (the first command naming it), which must have succeeded."""
    for cmd, proc in quickstart["runs"]:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if script in cmd:
            return proc
    raise AssertionError(f"the README's quick start does not run {script}")


def script_lora():
    """The LoRA of the fine-tuning script's settings block, read from the file as bench/ reads it."""
    from src.config import script_settings
    from src.training import LoraSettings

    return LoraSettings.of_settings(script_settings(REPO / "finetune_vqav2_lora.py"))


def module_fixture(fn):
    """A module-scoped fixture (built once per module and worker). Its name is noted so that conftest keeps
    the tests using it on one worker, where it is built once."""
    import pytest

    MODULE_FIXTURES.add(fn.__name__)
    return pytest.fixture(scope="module")(fn)


def random_twin(family: str = "opt") -> str:
    """The twin of `family` with random weights (seconds to build; kept in tests/artifacts beside the pre-trained
    ones): enough where two runs of one model are compared, as kill/resume and data parallel are."""
    from filelock import FileLock

    from twin import build_tiny_blip2

    folder = REPO / "tests" / "artifacts" / f"random-blip2-{family}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        build_tiny_blip2(folder, pretrain_steps=0, family=family)
    return str(folder)



def load_tuned(model_dir: str, quantization: str, adapter, **kwargs):
    """load_blip2 + apply_adapter, as the scripts do after their checks: (model with the adapter, processor)."""
    from src.modeling import apply_adapter, load_blip2

    model, processor = load_blip2(model_dir, quantization, **kwargs)
    return apply_adapter(model, str(adapter)), processor

def random_adapter(model_dir: str, folder: Path, target_modules=("q_proj", "v_proj"), scope="language_model") -> Path:
    """A LoRA adapter saved as the fine-tuning script saves it, with random weights big enough to change
    the answers (seeded: the same adapter every time)."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    from src.training import LoraSettings, add_lora

    model = Blip2ForConditionalGeneration.from_pretrained(model_dir)
    model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=tuple(target_modules),
                                         scope=scope), gradient_checkpointing=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 2.0)
    model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)  # as src.training saves
    return folder


def adapter_trained_on_examples(tmp_path: Path) -> tuple[str, Path, Path]:
    """(random twin, a random adapter whose record says it trained on easy-VQA val pictures 0 and 5, a folder of
    easy-VQA val pictures 0, 1 and 5 known by their easy-VQA names): what the leakage guard must catch."""
    from src.data import prepare_easy_vqa

    model = random_twin()
    adapter = random_adapter(model, tmp_path / "adapter")
    record = {"dataset": "easy_vqa", "split": "val", "images_from": "easy_vqa val", "questions": 20, "images": 2,
              "excluded": "nothing"}
    (adapter / "training_config.json").write_text(json.dumps({"training_data": record, "training_image_ids": [0, 5]}))
    pictures = tmp_path / "easy_vqa" / "images" / "val"
    pictures.mkdir(parents=True)
    prepare_easy_vqa(REPO / "data")
    for k in (0, 1, 5):
        shutil.copyfile(REPO / "data" / "easy_vqa" / "images" / "val" / f"{k}.png", pictures / f"{k}.png")
    return model, adapter, pictures


# a private mount namespace (no root needed) where a tiny tmpfs fills up for real
CAN_MOUNT = shutil.which("unshare") is not None and subprocess.run(
    ["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


def run_on_small_disk(sh: str, mountpoint: Path, **env) -> subprocess.CompletedProcess:
    """Run shell code with `mountpoint` on a fresh tmpfs of $SIZE (bytes), which it may remount bigger."""
    mountpoint.mkdir(exist_ok=True)
    script = f'mount -t tmpfs -o size="$SIZE" none "{mountpoint}" && {sh}'
    return subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1", "PY": sys.executable, **env})


def launch_data_parallel(*args, timeout=900) -> str:
    """`torchrun --nproc_per_node 2 <args>` in its own process group; on a timeout the whole group is
    killed, and in every case no rank may outlive the launcher."""
    import psutil

    import socket

    with socket.socket() as sock:  # a free port: two such runs may overlap on the suite's two workers
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    proc = subprocess.Popen(torchrun + list(args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"{args[0]} did not finish in {timeout} s with 2 processes:\n{log[-4000:]}")
    finally:
        left = [p for p in psutil.process_iter(["pid"]) if _in_group(p, proc.pid)]
        for p in left:
            p.kill()
    assert not left, f"{len(left)} rank(s) outlived the launcher"
    assert proc.returncode == 0, log[-6000:]
    return log


def _in_group(p, pgid: int) -> bool:
    import psutil

    try:
        return os.getpgid(p.pid) == pgid
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
