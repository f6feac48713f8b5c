"""Shared fixtures: the tiny BLIP-2 (built once per test session) and a subprocess runner.

The suite runs on two worker processes (pytest-xdist, `-n 2` in pytest.ini). Tests sharing an
expensive fixture stay on one worker: those of the README quick start as one group, each module
whose tests share a module-scoped fixture as another, and the tests of any module that read one session run
(SHARED_RUNS, e.g. the OPT family's one two-process run) as a third; all other tests are dealt out one by one. Each
worker, and every script it starts, uses one CPU thread, so two workers fill two cores without
fighting over them. `python -m pytest -n 0` runs everything in one process.

The groups reach xdist's scheduler through a file, not only through xdist's own `xdist_group` suffix on
the test ids: under pytest 9.2 that suffix is never added (xdist 3.8 sets `item._nodeid`, which pytest 9.2
no longer reads), so `--dist loadgroup` alone would spread a group over both workers and build its fixtures twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import MODULE_FIXTURES, QUICKSTART_HEADING, REPO, fresh_copy, readme_commands, run_command

sys.path.insert(0, str(REPO))


def _seal_from_the_users_environment() -> str | None:
    """The suite's result must not depend on the user's caches and hub settings: hub and matplotlib caches and
    temp files go to one folder of this run (made by the controller, shared by its workers and the scripts
    they start), every HF_* variable of the user is dropped, and the hub endpoint is a closed local port, so a
    call nobody expected fails at once instead of reaching a server. Tests that need a hub start their own
    server and point HF_ENDPOINT at it."""
    made, root = None, os.environ.get("BLIP2_TEST_ROOT")
    if root is None:  # the controller (or a run without workers): a new folder, removed after a green run
        made = root = os.environ["BLIP2_TEST_ROOT"] = tempfile.mkdtemp(prefix="blip2-tests-")
    for name in [k for k in os.environ if k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))]:
        del os.environ[name]
    os.environ.update(HF_HOME=f"{root}/hf_home", HF_ENDPOINT="http://127.0.0.1:9", MPLCONFIGDIR=f"{root}/matplotlib",
                      XDG_CACHE_HOME=f"{root}/cache", TMPDIR=f"{root}/tmp")
    os.makedirs(f"{root}/tmp", exist_ok=True)
    tempfile.tempdir = None  # tempfile reads TMPDIR again
    return made


TEST_ROOT = _seal_from_the_users_environment()  # None in the workers and in a pytest that a test starts

if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker and per script it runs
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

TINY_MODEL = REPO / "tests" / "artifacts" / "tiny-blip2"
TINY_T5 = REPO / "tests" / "artifacts" / "tiny-blip2-t5"
TWIN_FIXTURES = {"tiny_model_dir", "tiny_t5_dir", "quickstart"}  # tests that need a twin (none is -m quick)
SHARED_RUNS = {"opt_data_parallel", "killed_training", "short_chain"}  # session runs; each one's tests form a group
GROUPS_FILE = pytest.StashKey[str]()  # where the workers write {test id: group} for the controller's scheduler


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without workers)
        config.stash[GROUPS_FILE] = os.path.join(tempfile.mkdtemp(prefix="pytest-groups-"), "groups")


def pytest_sessionfinish(session, exitstatus):
    if TEST_ROOT and exitstatus == 0:  # a failed run's files stay for a look
        shutil.rmtree(TEST_ROOT, ignore_errors=True)


def pytest_configure_node(node):  # xdist, in the controller: tell each worker where the groups go
    node.workerinput["groups_file"] = node.config.stash[GROUPS_FILE]


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup with the groups the workers wrote: a group's tests go to one worker, in the order
    collected; every other test is a scope of its own (dealt out one by one)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    path, groups = config.stash[GROUPS_FILE], {}

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not groups:
                for part in Path(path).parent.glob("groups.*"):
                    groups.update(json.loads(part.read_text()))
            test_id, at, suffix = nodeid.rpartition("@")  # pytest < 9.2: xdist's own group suffix is there
            return groups.get(test_id if at else nodeid) or (f"group:{suffix}" if at else nodeid)

    return GroupScheduling(config, log)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="also run the full tier (tests/tiers.py): what CI runs")


def _deal_the_tiers(config, items) -> None:
    """The README's `python -m pytest -q` runs every script and README command once; the tests listed in
    tests/tiers.py (fault matrices, kill/resume, data parallel, more checkpoints) run with --full or -m full."""
    from tiers import in_full_tier

    for item in items:
        if in_full_tier(item.path.name, item.originalname, item.name):
            item.add_marker(pytest.mark.full)
    if config.getoption("full") or config.getoption("markexpr"):
        return
    dropped = [item for item in items if item.get_closest_marker("full")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("full")]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Keep tests that share an expensive fixture on one worker (see the module docstring), and order
    the work so that no core idles while the twin is built: the quick start first (its worker builds the
    OPT twin), the Flan-T5 twin's chain (the other worker builds that twin meanwhile), then the tests that
    do not need a twin, then the rest."""
    _deal_the_tiers(config, items)
    for item in items:
        if not TWIN_FIXTURES & set(item.fixturenames) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.quick)  # `-m quick`: the edit loop's tier (no twin, nothing marked slow)
        if item.get_closest_marker("xdist_group"):
            continue
        if "quickstart" in item.fixturenames:
            group = "quickstart"
        elif MODULE_FIXTURES & set(item.fixturenames):  # helpers.module_fixture, e.g. a script run once per module
            group = item.module.__name__
        elif SHARED_RUNS & set(item.fixturenames):  # a session's run that tests of several modules read
            group = next(iter(SHARED_RUNS & set(item.fixturenames)))
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))

    needs = {}  # group: the twins its tests need (a group's tests stay together, so its module fixtures live on)
    for item in items:
        if m := item.get_closest_marker("xdist_group"):
            needs.setdefault(m.args[0], set()).update(TWIN_FIXTURES & set(item.fixturenames))
    with_t5 = {group for group, twins in needs.items() if twins == {"tiny_t5_dir"}}  # not waiting for the OPT twin

    def order(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group and group.args[0] == "quickstart":
            return 0
        if group and group.args[0] in with_t5:  # the Flan-T5 twin's chain: its build on the other worker
            return 1
        if not group and not TWIN_FIXTURES & set(item.fixturenames):
            return 2
        return 3 if group else 4  # the big groups before the single tests, so the two workers end together

    items.sort(key=order)  # pytest.ini turns off xdist's own reordering (largest group first)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # written before the worker reports its collection, so before scheduling
        groups = {item.nodeid: "group:" + m.args[0] for item in items if (m := item.get_closest_marker("xdist_group"))}
        Path(f"{workerinput['groups_file']}.{workerinput['workerid']}").write_text(json.dumps(groups))


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The pre-trained offline twin, built once (about a minute) and reused while twin/__init__.py,
    torch and transformers stay the same (its card.json records them). The first worker builds it;
    the other waits and reuses it."""
    from filelock import FileLock

    from twin import build_tiny_blip2

    TINY_MODEL.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(TINY_MODEL) + ".lock"):
        build_tiny_blip2(TINY_MODEL)
    return str(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_t5_dir() -> str:
    """The Flan-T5 twin (`python -m twin DIR --family=t5`), built once like tiny_model_dir."""
    from filelock import FileLock

    from twin import build_tiny_blip2

    TINY_T5.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(TINY_T5) + ".lock"):
        build_tiny_blip2(TINY_T5, family="t5")
    return str(TINY_T5)


@pytest.fixture(scope="session")
def quickstart(tiny_model_dir, tmp_path_factory) -> dict:
    """Every command of the README's offline quick start, exactly as written, in a fresh copy of the
    repository (the twin this session built is put where the first command builds it, so that command
    finds it and reuses it). tests/test_readme.py checks the commands; tests/test_pipeline.py the files."""
    repo = fresh_copy(tmp_path_factory.mktemp("quickstart") / "repo")
    shutil.copytree(tiny_model_dir, repo / "outputs" / "tiny-blip2")
    runs = []
    for cmd in readme_commands(QUICKSTART_HEADING):  # `python` in them is this interpreter (helpers.command_argv)
        proc = run_command(cmd, cwd=repo)
        runs.append((cmd, proc))
        if proc.returncode != 0:
            break
    return {"repo": repo, "out": repo / "outputs", "runs": runs, "model": str(repo / "outputs" / "tiny-blip2")}


@contextlib.contextmanager
def busy_cpu():
    """A CPU-bound process beside a run, as on a busy machine (where rank timing goes wrong). When the suite runs
    on several workers, the other workers' tests are that load already."""
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        yield
        return
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


OPT_DATA_PARALLEL = {"questions": 24, "train_steps": 6, "save_every": 3, "eval_every": 3, "eval_samples": 24}


@pytest.fixture(scope="session")
def opt_data_parallel(tmp_path_factory) -> dict:
    """One two-process run (torchrun, gloo) on the random-weight OPT twin, made once per session: the baseline,
    the fine-tuning with its held-out curve (dropout on, both checkpoints kept) and the evaluation. Every
    two-process check of the OPT family reads it (tests/test_pipeline.py: the sharing of questions and steps;
    tests/test_heldout.py: the held-out slice; tests/test_real_model_needs.py: each rank's random state, against a
    resume from its first checkpoint); those tests are one group, on one worker."""
    from helpers import launch_data_parallel, random_twin

    n, out = OPT_DATA_PARALLEL, tmp_path_factory.mktemp("opt-data-parallel")
    common = [f"--model_id={random_twin()}", "--dataset=easy_vqa", f"--output_dir={out}", "--num_workers=0"]
    finetune = ["finetune_vqav2_lora.py", *common, f"--train_steps={n['train_steps']}", "--per_device_batch=4",
                "--grad_accum=2", f"--save_every={n['save_every']}", "--lr=3e-3", "--warmup_steps=2",
                "--lora_dropout=0.3", "--preview_samples=0", f"--eval_every={n['eval_every']}",
                f"--eval_samples={n['eval_samples']}", "--keep_checkpoints=2"]
    with busy_cpu():
        logs = {"baseline": launch_data_parallel("create_vqav2_baseline.py", *common, f"--max_samples={n['questions']}",
                                                 "--eval_batch=4")}
        logs["finetune"] = launch_data_parallel(*finetune)
        logs["evaluate"] = launch_data_parallel("evaluate_vqav2_finetuned.py", *common, "--eval_batch=4")
    return {"out": out, "finetune_args": finetune, **logs, **n}


KILLED_TRAINING = {"steps": 12, "save_every": 2, "killed_in_save": 4}
KILL_IN_SAVE = """
import os, signal
import src.training as T
_save = T.save_checkpoint
def save_checkpoint(ckpt_root, step, *a, **k):
    if step == int(os.environ["KILL_IN_SAVE_AT"]):
        import torch
        _orig = torch.save
        def dying_save(obj, f, *x, **y):  # the adapter is written, the training state half-written
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04 half")
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
    return _save(ckpt_root, step, *a, **k)
T.save_checkpoint = save_checkpoint
"""


@pytest.fixture(scope="session")
def killed_training(tmp_path_factory) -> dict:
    """The session's one interrupted fine-tuning, on the random-weight OPT twin, unquantised (a 4-bit step costs
    several unquantised ones on a CPU), TensorBoard on, beside its uninterrupted run (a checkpoint every 2 of 12
    steps; the uninterrupted run's curves in the default --log_dir, the killed run's in a --log_dir of their own).
    Killed inside the save of step 4 (adapter written, training state torn, never renamed), then at a random step of
    each of two resumed runs; then its newest checkpoint is torn in place (as a full disk leaves it) and the last run
    resumes from the one before. The first resumed run spells the model folder /x/./m, the last one relative to the
    repository (`spellings`). `attempts` holds what each run left for the next. tests/test_faults.py checks the
    resume against the uninterrupted run, tests/test_tensorboard.py the curves, tests/test_bad_input.py the
    spellings; one group, one worker."""
    import random
    import signal

    from helpers import half_written, killed_at_marker, random_twin, raw_loss_steps, run_script, start_script
    from src.tracking import tracker_run_name

    n, root, model = KILLED_TRAINING, tmp_path_factory.mktemp("killed-training"), Path(random_twin())
    logs, out = root / "tf-logs", root / "killed"
    spellings = [str(model), f"{model.parent}/./{model.name}", str(model), os.path.relpath(model, REPO)]
    args = ["finetune_vqav2_lora.py", "--dataset=easy_vqa", "--use_4bit=False", f"--train_steps={n['steps']}",
            "--per_device_batch=4", "--grad_accum=2", "--lr=3e-3", "--warmup_steps=3",
            f"--save_every={n['save_every']}", "--keep_checkpoints=3", "--preview_samples=0", "--report_to=tensorboard"]
    full = run_script(*args, f"--model_id={model}", f"--output_dir={root / 'full'}", check=True)  # default --log_dir
    args.append(f"--log_dir={logs}")
    ckpts, run_dir = out / "lora_adapter_checkpoints", logs / tracker_run_name(out)

    def left(killed: bool) -> dict:
        log = ckpts / "train_log.jsonl"
        return {"killed": killed, "checkpoints": sorted(p.name for p in ckpts.glob("*step-*")),
                "log_rows": log.read_bytes().count(b"\n") if log.exists() else 0, "half_written": half_written(out),
                "loss_steps": raw_loss_steps(run_dir)}

    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_IN_SAVE)
    args += [f"--output_dir={out}"]
    proc = start_script(*args, f"--model_id={spellings[0]}", env={"PYTHONPATH": f"{hook}{os.pathsep}{REPO}",
                                                                  "KILL_IN_SAVE_AT": str(n["killed_in_save"])})
    attempts = [left(proc.wait(timeout=300) == -signal.SIGKILL)]
    rng = random.Random(3)
    for model_id in spellings[1:3]:  # each run killed right after its k-th logged step
        proc = start_script(*args, f"--model_id={model_id}", hook_dir=root,
                            kill_at=("src.files:JsonlAppender.write", rng.randint(3, 4)))
        attempts.append(left(killed_at_marker(proc)))
    newest, older = sorted(ckpts.glob("step-*"))[-2:][::-1]
    (newest / "training_state.pt").write_bytes(b"torn")
    final = run_script(*args, f"--model_id={spellings[3]}", check=True)
    attempts.append(left(False))
    return {"out": out, "full": root / "full", "full_run": full, "logs": logs, "run_dir": run_dir, "attempts": attempts,
            "spellings": spellings, "torn": newest, "older": older, "final": final, **n}


@pytest.fixture(scope="session")
def short_chain(tiny_model_dir, tmp_path_factory) -> Path:
    """A zero-shot baseline of the twin on data/tiny.jsonl (unquantised) and a 2-step fine-tuning in one output folder,
    made once: the tests that go on with an evaluation and a comparison copy it (tests/test_scripts.py: a fine-tuned
    run evaluated in another precision; tests/test_multirun.py: one adapter evaluated twice); one group, one worker."""
    from helpers import run_script

    out = tmp_path_factory.mktemp("short-chain") / "out"
    common = [f"--model_id={tiny_model_dir}", "--dataset=tiny", "--num_workers=0", f"--output_dir={out}"]
    run_script("create_vqav2_baseline.py", *common, "--quantization=none", check=True)
    run_script("finetune_vqav2_lora.py", *common, "--use_4bit=False", "--train_steps=2", "--per_device_batch=2",
               "--grad_accum=1", "--save_every=2", "--preview_samples=0", check=True)
    return out
