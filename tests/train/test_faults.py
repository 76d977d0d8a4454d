"""Faults: SIGKILL and SIGTERM mid-run, half-written checkpoints, divergence, full disk."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dpjax.errors import DpjaxError
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import loop
from tests.helpers import REPO, make_splits
from tests.train.test_loop import tiny_config

CLI_ARGS = ["--config", "configs/quickstart.py:steps=60", "--config.model.name=mlp",
            "--config.model.kwargs.width=32", "--config.checkpoint_every=10",
            "--config.eval_every=0", "--config.seed=7", "--config.progress_bar=False",
            "--config.log_every=10"]


def _train(workdir, wait=True):
    cmd = [sys.executable, "-m", "dpjax.cli", "train", "--workdir", str(workdir), *CLI_ARGS]
    env = dict(os.environ, PYTHONPATH=REPO)
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir, proc, minimum=20, timeout=240):
    start = time.time()
    ckpt = workdir / "checkpoints"
    while time.time() - start < timeout:
        steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if ckpt.exists() else []
        if steps and max(steps) >= minimum:
            return max(steps)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def _final_params(workdir):
    named, meta, step = checkpoint_lib.Checkpointer(str(workdir)).restore_named()
    return step, checkpoint_lib.flatten_named(named), meta


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the kill tests."""
    workdir = tmp_path_factory.mktemp("reference")
    run = _train(workdir)
    assert run.returncode == 0, run.stderr[-2000:]
    return workdir


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, sig, reference):
    proc = _train(tmp_path / "killed", wait=False)
    _wait_for_checkpoint(tmp_path / "killed", proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "SIGTERM" in proc.stderr.read()
    resumed = _train(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step_a, state_a, meta_a = _final_params(reference)
    step_b, state_b, meta_b = _final_params(tmp_path / "killed")
    assert step_a == step_b == 60 and meta_a["ledger"] == meta_b["ledger"]
    for k in state_a:
        np.testing.assert_array_equal(state_a[k], state_b[k])
    sa = json.load(open(reference / "summary.json"))
    sb = json.load(open(tmp_path / "killed" / "summary.json"))
    assert sa["epsilon"] == sb["epsilon"] and sa["test_accuracy"] == sb["test_accuracy"]


def test_half_written_checkpoint_is_ignored(tmp_path):
    data = make_splits()
    config = tiny_config()
    loop.train_and_evaluate(config, str(tmp_path), data=data, max_steps_this_run=2)
    # A checkpoint the machine died writing: orbax's temporary directory, partial contents.
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    os.makedirs(partial / "state")
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    assert checkpoint_lib.Checkpointer(str(tmp_path)).latest_step() == 2
    summary = loop.train_and_evaluate(config, str(tmp_path), data=data)
    assert summary["steps"] == 6


def test_divergence_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path):
    data = make_splits()
    config = tiny_config(**{"optimizer.learning_rate": 1e38, "num_steps": 8,
                            "checkpoint_every": 2, "log_every": 2})
    config.privacy.target_epsilon, config.privacy.noise_multiplier = 0.0, 1e6
    with pytest.raises(DpjaxError, match="non-finite"):
        loop.train_and_evaluate(config, str(tmp_path), data=data)
    latest = checkpoint_lib.Checkpointer(str(tmp_path)).latest_step()
    if latest is not None:  # whatever was saved is finite
        _, state, _ = _final_params(tmp_path)
        assert all(np.all(np.isfinite(v)) for v in state.values())


def test_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_lib.ocp.CheckpointManager, "save", no_space)
    with pytest.raises(DpjaxError, match="Disk full"):
        loop.train_and_evaluate(tiny_config(), str(tmp_path), data=make_splits())
