"""A model given by its hub id is downloaded through from_pretrained, as `Salesforce/blip2-opt-2.7b` is, from a
real HTTP server on 127.0.0.1 that answers like the hub (tests/hub_server.py, the twin as `someone/tiny-blip2`);
before the first download the free space of the hub cache's disk is checked against the sizes the hub
lists, on a real small tmpfs (a private mount namespace, no root needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import CAN_MOUNT, assert_one_line_error, run_on_small_disk, run_script
from hub_server import HubServer

REPO_ID = "someone/tiny-blip2"


def hub_env(hub: HubServer, home: Path) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10",
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


def mini_infer(out: Path) -> list[str]:
    return ["mini_infer.py", f"--model_id={REPO_ID}", "--quantization=none", f"--output_dir={out}"]


@pytest.fixture
def twin_repo(tiny_model_dir, tmp_path) -> Path:
    repo = tmp_path / "served"
    shutil.copytree(tiny_model_dir, repo)
    return repo


def test_a_hub_id_downloads_once_and_is_then_read_from_the_cache(twin_repo, tmp_path):
    with HubServer({}, models={REPO_ID: twin_repo}) as hub:
        env = hub_env(hub, tmp_path / "hf")
        first = run_script(*mini_infer(tmp_path / "a"), env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "warning" not in first.stdout + first.stderr
        sized = [r for r in hub.seen("info", repo=REPO_ID) if "blobs" in r.query]
        assert len(sized) == 1, "the file sizes are asked once, before the download"
        assert sized[0].time < min(r.time for r in hub.seen("head"))
        assert "model.safetensors" in {r.path.rsplit("/", 1)[1] for r in hub.seen("head")} and hub.seen("cdn")
        again = run_script(*mini_infer(tmp_path / "b"), env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len([r for r in hub.seen("info") if "blobs" in r.query]) == 1  # cached: no size check
    first, again = (json.loads((tmp_path / d / "mini_infer.json").read_text())["result"] for d in "ab")
    assert first == again and first["model_id"] == REPO_ID and first["caption"]


@pytest.mark.skipif(not CAN_MOUNT, reason="needs unshare -r -m (user and mount namespaces) for a small tmpfs")
def test_a_model_that_does_not_fit_the_cache_disk_is_one_line_before_the_download(twin_repo, tmp_path):
    disk = tmp_path / "disk"
    need = sum(p.stat().st_size for p in twin_repo.iterdir() if p.is_file())
    with HubServer({}, models={REPO_ID: twin_repo}) as hub:
        env = {**hub_env(hub, disk), "HF_HUB_CACHE": str(disk / "hub")}
        proc = run_on_small_disk(" ".join(["$PY", *mini_infer(tmp_path / "out")]), disk, SIZE="512k", **env)
        line = assert_one_line_error(proc, f"downloading {REPO_ID} needs {need / 1e9:.1f} GB", f"hub cache {disk / 'hub'}",
                                     "export HF_HOME=/root/autodl-tmp/hf")
        assert "GB free" in line
        assert not hub.seen("cdn") and not hub.seen("head"), "nothing was downloaded"
        # the same download on a disk it fits: no error, no warning about room
        proc = run_on_small_disk(" ".join(["$PY", *mini_infer(tmp_path / "out")]), disk, SIZE="64m", **env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "free" not in proc.stdout


@pytest.mark.skipif(not CAN_MOUNT, reason="needs unshare -r -m (user and mount namespaces) for a small tmpfs")
def test_a_listing_without_sizes_warns_when_the_cache_disk_is_small(twin_repo, tmp_path):
    disk = tmp_path / "disk"
    with HubServer({}, models={REPO_ID: twin_repo}, list_sizes=False) as hub:
        env = {**hub_env(hub, disk), "HF_HUB_CACHE": str(disk / "hub")}
        proc = run_on_small_disk(" ".join(["$PY", *mini_infer(tmp_path / "out")]), disk, SIZE="64m", **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: downloading")]
    assert len(warnings) == 1 and "whose size the hub did not say" in warnings[0] and "GB free" in warnings[0]
