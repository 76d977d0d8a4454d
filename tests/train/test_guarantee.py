"""The guarantee on the paths a user takes: signals, seeds, side channels, workdirs."""

import json
import os
import signal

import numpy as np
import pytest

from dpjax.errors import DpjaxError
from dpjax.train import loop
from tests.helpers import make_splits
from tests.train.test_loop import _params, tiny_config

DATA = make_splits()


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    loop.train_and_evaluate(tiny_config(checkpoint_every=100), str(workdir), data=DATA)
    return workdir


@pytest.mark.parametrize("point", ["after_update", "after_record", "after_step"])
def test_signal_anywhere_in_a_step_resumes_to_the_same_epsilon(tmp_path, monkeypatch, point,
                                                               uninterrupted):
    """SIGTERM between the update and its ledger record never desynchronises them."""
    def hook(where, step):
        if (where, step) == (point, 2):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "_test_hook", hook)
    config = tiny_config(checkpoint_every=100)
    with pytest.raises(loop.Preempted):
        loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    state, meta = _params(str(tmp_path))
    assert meta["step"] == 3 == sum(p["steps"] for p in meta["ledger"])
    assert int(state["step"]) == 3
    monkeypatch.setattr(loop, "_test_hook", lambda *a: None)
    loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    assert _summary(tmp_path)["epsilon"] == _summary(uninterrupted)["epsilon"]
    a, _ = _params(str(tmp_path))
    b, _ = _params(str(uninterrupted))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_sigint_saves_like_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_test_hook", lambda where, step: os.kill(
        os.getpid(), signal.SIGINT) if (where, step) == ("after_update", 1) else None)
    with pytest.raises(loop.Preempted):
        loop.train_and_evaluate(tiny_config(), str(tmp_path), data=DATA)
    _, meta = _params(str(tmp_path))
    assert meta["step"] == 2


def test_seed_is_kept_before_the_first_checkpoint(tmp_path, monkeypatch):
    """A run that dies before its first checkpoint continues the same random stream."""
    def die(where, step):
        if (where, step) == ("after_step", 1):
            raise RuntimeError("machine lost")

    monkeypatch.setattr(loop, "_test_hook", die)
    config = tiny_config(seed=-1, checkpoint_every=100)
    with pytest.raises(RuntimeError):
        loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    assert not os.path.exists(tmp_path / "checkpoints" / "2")
    first = json.load(open(tmp_path / "private" / "seed.json"))
    assert first["source"] == "os" and oct(os.stat(tmp_path / "private").st_mode)[-3:] == "700"
    monkeypatch.setattr(loop, "_test_hook", lambda *a: None)
    loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    _, meta = _params(str(tmp_path))
    assert meta["seed"] == first["seed"] and meta["seed_source"] == "os"


def test_seeds_never_reach_public_files(tmp_path):
    config = tiny_config(seed=123456789)
    loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    summary = _summary(tmp_path)
    assert summary["seed_source"] == "config" and summary["independent_release"] is False
    assert "fixed seed" in summary["warning"]
    for name in ("config.json", "summary.json", "metrics.jsonl", "environment.json"):
        assert "123456789" not in open(tmp_path / name).read(), name


def test_without_train_metrics_nothing_from_the_realised_batches_is_written(tmp_path):
    """With train_metrics=False every public file holds only ε, test metrics and public facts."""
    loop.train_and_evaluate(tiny_config(train_metrics=False), str(tmp_path), data=DATA)
    allowed_metrics = {"step", "epsilon", "examples_per_s"}
    for line in open(tmp_path / "metrics.jsonl"):
        record = json.loads(line)
        extra = {k for k in record if k not in allowed_metrics and not k.startswith("test_")}
        assert not extra, extra
    summary = _summary(tmp_path)
    forbidden = ("train_", "realised", "nonfinite", "clipped", "overlap")
    assert not [k for k in summary if k.startswith(forbidden)]
    # Every other file the run wrote: the public config and environment, the private
    # folders (checkpoints, private/: the seed and data, private by design), and the
    # TensorBoard events, whose tags must be public metrics too.
    names = set(os.listdir(tmp_path)) - {"config.json", "environment.json", "metrics.jsonl",
                                          "summary.json", "checkpoints", "private", "tensorboard",
                                          ".lock"}
    assert not names, names
    for root, _, files in os.walk(tmp_path / "tensorboard"):
        for name in files:
            blob = open(os.path.join(root, name), "rb").read()
            for word in forbidden:
                assert word.encode() not in blob, (name, word)


def test_overlap_is_reported_only_when_asked(tmp_path):
    import dataclasses

    from dpjax.data import sources

    test = sources.ArrayDataset(np.concatenate([DATA.test.images, DATA.train.images[:3]]),
                                np.concatenate([DATA.test.labels, DATA.train.labels[:3]]))
    data = dataclasses.replace(DATA, test=test)
    loop.train_and_evaluate(tiny_config(), str(tmp_path / "a"), data=data)
    assert "test_train_overlap" not in _summary(tmp_path / "a")
    loop.train_and_evaluate(tiny_config(**{"metrics.test_train_overlap": True}),
                            str(tmp_path / "b"), data=data)
    summary = _summary(tmp_path / "b")
    assert summary["test_train_overlap"] == 3
    assert "test_train_overlap" in summary["not_covered_by_epsilon"]


def test_changed_training_data_is_refused_on_resume(tmp_path):
    loop.train_and_evaluate(tiny_config(), str(tmp_path), data=DATA, max_steps_this_run=2)
    other = make_splits(seed=1)
    with pytest.raises(DpjaxError, match="different training data"):
        loop.train_and_evaluate(tiny_config(), str(tmp_path), data=other)


def test_audit_refuses_a_workdir_that_holds_a_run(tmp_path):
    from dpjax.train import audit

    loop.train_and_evaluate(tiny_config(), str(tmp_path), data=DATA)
    before = sorted(os.listdir(tmp_path))
    for control in (None, "clip_off"):
        with pytest.raises(DpjaxError, match="fresh --workdir"):
            audit.run_audit(tiny_config(), str(tmp_path), num_canaries=10, control=control,
                            data=DATA)
    assert sorted(os.listdir(tmp_path)) == before and "audit.json" not in before


def test_asynchronous_checkpoints_resume_to_the_same_run(tmp_path, uninterrupted):
    """Checkpoints written in the background hold the same state, ledger and seed."""
    config = tiny_config(checkpoint_every=2, async_checkpoints=True)
    loop.train_and_evaluate(config, str(tmp_path), data=DATA, max_steps_this_run=3)
    _, meta = _params(str(tmp_path))
    assert meta["step"] == 3 == sum(p["steps"] for p in meta["ledger"])
    loop.train_and_evaluate(config, str(tmp_path), data=DATA)
    a, _ = _params(str(tmp_path))
    b, _ = _params(str(uninterrupted))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert _summary(tmp_path)["epsilon"] == _summary(uninterrupted)["epsilon"]
