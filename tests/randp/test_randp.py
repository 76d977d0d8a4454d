"""DP-RandP: Phase I on generated images, priors, and the three-phase private run."""

import json

import jax
import numpy as np
import pytest

from dpjax.config import base_config
from dpjax.data import sources
from dpjax.errors import ConfigError
from dpjax.privacy import accounting
from dpjax.randp import pretrain, priors, views
from dpjax.train import loop
from tests.helpers import make_splits


def _config(pretrain_steps=30):
    c = base_config()
    c.model.name = "small_cnn"
    c.model.kwargs.width = 8
    c.dataset.mean = (0.5,)
    c.dataset.std = (0.5,)
    c.pretrain.steps = pretrain_steps
    c.pretrain.batch_size = 32
    c.pretrain.resolution = 8
    c.pretrain.channels = 1
    c.pretrain.families = ("dead_leaves", "spectrum")
    c.pretrain.hidden_dim = 64
    c.pretrain.projection_dim = 16
    c.pretrain.log_every = 10
    c.pretrain.checkpoint_every = 10
    c.pretrain.learning_rate = 0.05
    c.privacy.target_epsilon = 2.0
    c.privacy.delta = 1e-3
    c.batch_size = 16
    c.micro_batch_size = 16
    c.num_steps = 6
    c.phases.head_steps = 2
    c.phases.head_learning_rate = 1.0
    c.optimizer.learning_rate = 0.5
    c.ema_decay = 0.9999
    c.ema_warmup = True
    c.seed = 1
    c.progress_bar = False
    c.log_every = 1
    c.checkpoint_every = 2
    return c


def test_views_shapes_and_range():
    images = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
    v1, v2 = views.two_views(jax.random.key(1), images)
    assert v1.shape == images.shape and float(v1.min()) >= 0 and float(v1.max()) <= 1
    assert not np.allclose(v1, v2)


def test_losses_prefer_aligned_and_spread_embeddings():
    z = jax.random.normal(jax.random.key(0), (32, 8))
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    collapsed = np.tile(z[:1], (32, 1))
    assert pretrain.align_uniform_loss(z, z) < pretrain.align_uniform_loss(collapsed, collapsed)
    assert pretrain.infonce_loss(z, z, 0.2) < pretrain.infonce_loss(z, np.roll(z, 1, 0), 0.2)


def test_phase_one_never_opens_private_data_and_loss_falls(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("Phase I opened a data set")

    from dpjax.data import registry

    for name in ("load", "load_digits", "load_npz", "load_image_folder"):
        monkeypatch.setattr(sources, name, forbidden)
    monkeypatch.setattr(registry, "loader", forbidden)
    path = pretrain.pretrain(_config(pretrain_steps=60), str(tmp_path), seed=0)
    info = json.load(open(f"{path}/prior.json"))
    history = [loss for _, loss in info["loss_history"]]
    assert len(history) == 6 and history[-1] < history[0]
    assert info["private_data_used"] is False
    flat, _ = priors.load_prior(path)
    assert "classifier/kernel" not in flat and "conv0/kernel" in flat


def test_phase_one_resumes_to_the_same_prior(tmp_path):
    import shutil

    path = pretrain.pretrain(_config(20), str(tmp_path), seed=0)
    first, _ = priors.load_prior(path)
    # As if the machine died after the step-10 checkpoint, before the prior was written.
    shutil.rmtree(path)
    assert (tmp_path / "pretrain_checkpoints" / "10").exists()
    again, _ = priors.load_prior(pretrain.pretrain(_config(20), str(tmp_path), seed=0))
    for k in first:
        np.testing.assert_allclose(first[k], again[k], rtol=1e-5, atol=1e-6)


def test_three_phase_run_composed_accounting(tmp_path):
    c = _config()
    data = make_splits(num_train=64, num_test=32, size=8)
    summary = loop.train_and_evaluate(c, str(tmp_path), data=data)
    names = [p["name"] for p in summary["phases"]]
    assert names == ["phase1_prior", "phase2_linear_probe", "phase3_finetune"]
    prior, p2, p3 = summary["phases"]
    assert prior["steps"] == 0 and prior["epsilon"] == 0.0 and prior["noise_multiplier"] is None
    assert summary["prior"]["tensors_loaded"] > 0
    assert (p2["steps"], p3["steps"]) == (2, 4)
    q = 16 / 64
    direct = accounting.epsilon([accounting.Phase(2, p2["noise_multiplier"], q),
                                 accounting.Phase(4, p3["noise_multiplier"], q)], 1e-3, "pld")
    assert summary["epsilon"] == pytest.approx(direct) and p3["epsilon"] == summary["epsilon"]
    assert p2["epsilon"] < p3["epsilon"] <= 2.0


def test_phase_two_trains_only_the_head(tmp_path):
    c = _config()
    c.num_steps = 3
    c.phases.head_steps = 2
    c.pretrain.steps = 10
    data = make_splits(num_train=64, num_test=32, size=8)
    loop.train_and_evaluate(c, str(tmp_path / "a"), data=data, max_steps_this_run=2)
    named, _, _ = loop.checkpoint_lib.Checkpointer(str(tmp_path / "a")).restore_named()
    prior, _ = priors.load_prior(str(tmp_path / "a" / "prior"))
    flat = loop.checkpoint_lib.flatten_named(named["params"])
    for path, value in flat.items():
        if loop.is_head_param(path):
            continue
        np.testing.assert_array_equal(value, prior[path])   # backbone frozen in Phase II
    # Resuming across the phase switch finishes the run.
    summary = loop.train_and_evaluate(c, str(tmp_path / "a"), data=data)
    assert summary["steps"] == 3


def test_different_sigma_per_phase(tmp_path):
    c = _config()
    c.phases.head_noise_multiplier = 3.0
    plan = loop.plan_from_config(c, 64)
    assert plan.phases[0].noise_multiplier == 3.0
    assert plan.planned_epsilon() == pytest.approx(2.0, rel=0.01)
    assert plan.phases[1].noise_multiplier != 3.0


def test_linear_probe_only_run(tmp_path):
    """head_steps == num_steps: one accounted phase that trains the head alone."""
    c = _config()
    c.phases.head_steps = c.num_steps
    data = make_splits(num_train=64, num_test=32, size=8)
    summary = loop.train_and_evaluate(c, str(tmp_path), data=data)
    assert [p["name"] for p in summary["phases"]] == ["phase1_prior", "phase2_linear_probe"]
    probe = summary["phases"][1]
    assert probe["steps"] == c.num_steps and probe["epsilon"] == summary["epsilon"] <= 2.0
    named, _, _ = loop.checkpoint_lib.Checkpointer(str(tmp_path)).restore_named()
    prior, _ = priors.load_prior(str(tmp_path / "prior"))
    for path, value in loop.checkpoint_lib.flatten_named(named["params"]).items():
        if not loop.is_head_param(path):
            np.testing.assert_array_equal(value, prior[path])


def test_more_head_steps_than_steps_is_one_line_error():
    c = _config()
    c.phases.head_steps = c.num_steps + 1
    with pytest.raises(ConfigError, match="phases.head_steps"):
        loop.plan_from_config(c, 64)


def test_probe_only_with_its_own_sigma_and_a_target_is_refused():
    """A target ε with no phase left to calibrate would be silently ignored."""
    c = _config()
    c.phases.head_steps = c.num_steps
    c.phases.head_noise_multiplier = 3.0
    with pytest.raises(ConfigError, match="nothing to calibrate"):
        loop.plan_from_config(c, 64)
    c.privacy.target_epsilon = 0.0
    plan = loop.plan_from_config(c, 64)
    assert [p.noise_multiplier for p in plan.phases] == [3.0]
