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
SHARED_RUNS = {"opt_data_parallel"}  # session fixtures whose tests, in any module, form one group
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


OPT_DATA_PARALLEL = {"questions": 24, "train_steps": 6, "eval_every": 3, "eval_samples": 24}


@pytest.fixture(scope="session")
def opt_data_parallel(tmp_path_factory) -> dict:
    """One two-process run (torchrun, gloo) on the random-weight OPT twin, made once per session: the baseline,
    the fine-tuning with its held-out curve and the evaluation. Every data-parallel check of the OPT family reads
    it (tests/test_pipeline.py: the sharing of questions and steps; tests/test_heldout.py: the held-out slice);
    those tests are one group, on one worker."""
    from helpers import launch_data_parallel, random_twin

    n, out = OPT_DATA_PARALLEL, tmp_path_factory.mktemp("opt-data-parallel")
    common = [f"--model_id={random_twin()}", "--dataset=easy_vqa", f"--output_dir={out}", "--num_workers=0"]
    with busy_cpu():
        logs = {"baseline": launch_data_parallel("create_vqav2_baseline.py", *common, f"--max_samples={n['questions']}",
                                                 "--eval_batch=4")}
        logs["finetune"] = launch_data_parallel(
            "finetune_vqav2_lora.py", *common, f"--train_steps={n['train_steps']}", "--per_device_batch=4",
            "--grad_accum=2", "--save_every=3", "--lr=3e-3", "--warmup_steps=2", "--preview_samples=0",
            f"--eval_every={n['eval_every']}", f"--eval_samples={n['eval_samples']}", "--keep_checkpoints=1")
        logs["evaluate"] = launch_data_parallel("evaluate_vqav2_finetuned.py", *common, "--eval_batch=4")
    return {"out": out, **logs, **n}
