"""The training loop end to end on tiny data: summary, resume, refusals, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpjax.config import base_config, validate
from dpjax.errors import ConfigError
from dpjax.train import loop
from tests.helpers import REPO, make_splits


def tiny_config(**overrides):
    c = base_config()
    c.model.name = "mlp"
    c.model.kwargs.width = 16
    c.privacy.target_epsilon = 2.0
    c.privacy.delta = 1e-3
    c.batch_size = 16
    c.micro_batch_size = 8
    c.num_steps = 6
    c.checkpoint_every = 2
    c.log_every = 2
    c.eval_every = 3
    c.seed = 5
    c.progress_bar = False
    c.ema_decay = 0.9
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def _params(workdir, config=None, data=None):
    """(the latest checkpoint's state as {name: array}, its meta)."""
    named, meta, _ = loop.checkpoint_lib.Checkpointer(workdir).restore_named()
    return loop.checkpoint_lib.flatten_named(named), meta


def test_summary_fields(tmp_path):
    data = make_splits()
    summary = loop.train_and_evaluate(tiny_config(), str(tmp_path), data=data)
    saved = json.load(open(tmp_path / "summary.json"))
    for key in ("test_accuracy", "test_accuracy_raw", "epsilon", "delta", "accountant",
                "noise_multiplier", "sampling_rate", "steps", "batch_size", "clip_norm",
                "neighbouring", "dataset", "model", "wall_time_s", "seed_source", "phases"):
        assert key in saved, key
    assert saved["steps"] == 6 and saved["seed_source"] == "config"
    assert saved["epsilon"] == pytest.approx(2.0, rel=0.01) and saved["epsilon"] <= 2.0
    assert saved["neighbouring"] == "add_remove" and saved["accountant"] == "pld"
    assert 0 <= saved["test_accuracy"] <= 1
    assert summary["sampling_rate"] == pytest.approx(16 / 64)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_records = [r for r in records if "train_loss" in r]
    assert train_records and all("train_loss" in r["not_covered_by_epsilon"]
                                 for r in train_records)
    assert os.listdir(tmp_path / "tensorboard")
    env = json.load(open(tmp_path / "environment.json"))
    assert env["versions"]["jax"]


def test_train_metrics_can_be_switched_off(tmp_path):
    loop.train_and_evaluate(tiny_config(train_metrics=False), str(tmp_path), data=make_splits())
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert not any("train_loss" in r or "train_accuracy" in r for r in records)


def test_resume_equals_uninterrupted(tmp_path):
    data = make_splits()
    config = tiny_config()
    loop.train_and_evaluate(config, str(tmp_path / "a"), data=data)
    partial = loop.train_and_evaluate(config, str(tmp_path / "b"), data=data,
                                      max_steps_this_run=3)
    assert partial["finished"] is False and partial["step"] == 3
    again = loop.train_and_evaluate(config, str(tmp_path / "b"), data=data,
                                    max_steps_this_run=1)
    assert again["step"] == 4
    loop.train_and_evaluate(config, str(tmp_path / "b"), data=data)
    a, meta_a = _params(str(tmp_path / "a"), config, data)
    b, meta_b = _params(str(tmp_path / "b"), config, data)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert meta_a["ledger"] == meta_b["ledger"]
    sa = json.load(open(tmp_path / "a" / "summary.json"))
    sb = json.load(open(tmp_path / "b" / "summary.json"))
    assert sa["epsilon"] == sb["epsilon"] and sa["test_accuracy"] == sb["test_accuracy"]


def test_os_seed_is_kept_in_checkpoint(tmp_path):
    data = make_splits()
    config = tiny_config(seed=-1)
    loop.train_and_evaluate(config, str(tmp_path), data=data, max_steps_this_run=2)
    _, meta = _params(str(tmp_path), config, data)
    assert meta["seed_source"] == "os" and meta["seed"] > 2**32
    loop.train_and_evaluate(config, str(tmp_path), data=data)
    _, meta2 = _params(str(tmp_path), config, data)
    assert meta2["seed"] == meta["seed"]
    assert json.load(open(tmp_path / "summary.json"))["seed_source"] == "os"


def test_resume_with_changed_config_is_refused(tmp_path):
    data = make_splits()
    loop.train_and_evaluate(tiny_config(), str(tmp_path), data=data, max_steps_this_run=2)
    with pytest.raises(ConfigError, match="privacy.clip_norm"):
        loop.train_and_evaluate(tiny_config(**{"privacy.clip_norm": 2.0}), str(tmp_path),
                                data=data)


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 0, "batch_size"),
    ("batch_size", 1000, "batch_size"),
    ("privacy.delta", 0.05, "privacy.delta"),
    ("privacy.target_epsilon", -1.0, "privacy.target_epsilon"),
    ("augmult", 0, "augmult"),
    ("optimizer.learning_rate", 0.0, "optimizer.learning_rate"),
    ("privacy.sampling", "random", "privacy.sampling"),
    ("dataset.name", "folder", "dataset.path"),
    ("model.name", "vgg", "model.name"),
])
def test_bad_config_is_refused_before_writing(tmp_path, field, value, match):
    workdir = tmp_path / "w"
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        loop.train_and_evaluate(tiny_config(**{field: value}), str(workdir), data=make_splits())
    assert not workdir.exists()


def test_unknown_field_is_refused():
    with pytest.raises(AttributeError):
        base_config().batchsize = 3
    config = base_config()
    config.privacy.target_epsilon = 1.0
    validate(config)


def test_shuffle_sampling_is_labelled(tmp_path):
    loop.train_and_evaluate(tiny_config(**{"privacy.sampling": "shuffle"}), str(tmp_path),
                            data=make_splits())
    s = json.load(open(tmp_path / "summary.json"))
    assert s["epsilon_valid_for_sampling"] is False and "does NOT apply" in s["warning"]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dpjax.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))


def test_cli_account_prints_sigma_and_epsilon():
    r = _cli("account", "--config", "configs/cifar10_wrn16_4.py:eps=1,data=folder,path=x.zip")
    assert r.returncode == 2 and "dataset.path" in r.stderr  # data missing: one clear line
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("account", "--config", "configs/quickstart.py:eps=2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["num_train"] == 1437 and out["epsilon"] == pytest.approx(2.0, rel=0.01)
    assert out["noise_multiplier"] > 0 and out["accountant"] == "pld"


@pytest.mark.parametrize("args,match", [
    (["--config", "configs/quickstart.py:epz=1"], "epz"),
    (["--config", "configs/quickstart.py", "--config.batchsize=3"], "batchsize"),
    (["--config", "configs/quickstart.py", "--config.batch_size=abc"], "batch_size"),
    (["--config", "configs/nope.py"], "nope.py"),
    (["--config", "configs/quickstart.py", "--config.privacy.delta=0.01"], "privacy.delta"),
])
def test_cli_errors_are_one_line(tmp_path, args, match):
    workdir = tmp_path / "w"
    r = _cli("train", "--workdir", str(workdir), *args)
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not workdir.exists()


def test_local_dp_and_clinical_metrics_in_summary(tmp_path):
    config = tiny_config(**{"privacy.mode": "none", "ldp.scale": 0.5, "metrics.clinical": True,
                            "metrics.bootstrap_resamples": 50})
    data = make_splits(num_classes=2)
    summary = loop.train_and_evaluate(config, str(tmp_path), data=data)
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["epsilon"] is None and saved["ldp_epsilon_per_value"] == pytest.approx(2.0)
    assert saved["ldp_epsilon_per_image"] == pytest.approx(2.0 * 8 * 8 * 1)
    for key in ("test_auroc", "test_balanced_accuracy", "test_macro_f1", "test_confusion_matrix",
                "test_accuracy_ci95", "train_accuracy", "train_metrics_note"):
        assert key in saved, key
    assert summary["test_auroc"] is not None
    # The perturbed training set is kept in the workdir's private folder.
    assert "ldp_train.npz" in os.listdir(tmp_path / "private")


def test_evaluate_command(tmp_path, capsys, monkeypatch):
    # In-process (`cli.main`), to spare the suite three interpreter starts.
    from dpjax import cli

    monkeypatch.chdir(REPO)
    assert cli.main(["train", "--workdir", str(tmp_path), "--config",
                     "configs/quickstart.py:steps=3", "--config.model.name=mlp",
                     "--config.progress_bar=False"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "test" and out["num_examples"] == 360 and "auroc" in out
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--split", "train"]) == 0
    train = json.loads(capsys.readouterr().out)
    assert train["num_examples"] == 1437 and train["not_covered_by_epsilon"] is True


def test_ldp_grid_command(tmp_path):
    out = tmp_path / "grid.png"
    r = _cli("ldp_grid", "--config", "configs/quickstart.py", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 100 and "per image 64" in r.stdout
