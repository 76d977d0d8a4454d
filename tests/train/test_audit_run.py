"""One-run audit of a real training run, with negative controls that must fail it."""

import json

import pytest

from dpjax.config import base_config
from dpjax.errors import ConfigError
from dpjax.train import audit
from tests.helpers import make_splits


def _config():
    c = base_config()
    c.model.name = "mlp"
    c.model.kwargs.width = 256      # enough dimensions that canary directions barely interact
    c.privacy.target_epsilon = 1.0  # controls are meaningful at ε ≤ 1 with m ≥ 1000
    c.privacy.delta = 1e-5
    c.batch_size = 128
    c.micro_batch_size = 128
    c.num_steps = 30
    c.seed = 3
    c.progress_bar = False
    c.optimizer.learning_rate = 1.0
    c.checkpoint_every = 1000
    return c


DATA = make_splits(num_train=300, num_test=50, size=8)


def _iterates_config(clipping):
    """ε = 1 over 50 steps of B = 1024 from ~4100 rows (8000 canaries, half in)."""
    c = _config()
    c.model.kwargs.width = 8
    c.batch_size, c.micro_batch_size, c.num_steps = 1024, 2048, 50
    c.optimizer.learning_rate, c.log_every, c.train_metrics = 0.1, 50, False
    c.privacy.clipping = clipping
    return c


@pytest.mark.parametrize("control,clipping", [(None, "vmap"), (None, "fast"),
                                              ("noise_scale=0.67", "fast"),
                                              ("sampling_x2", "vmap")])
def test_iterates_audit_catches_a_subtle_bug(tmp_path, control, clipping):
    """All-iterates audit: the honest run's lower bound stays below the claim and its
    estimate is close to it; noise 0.67x too small or sampling at 2q push the lower
    bound above the claim (margins measured over simulated seeds: docs/assurance.md)."""
    data = make_splits(num_train=100, num_test=20, size=4)
    report = audit.run_audit(_iterates_config(clipping), str(tmp_path), num_canaries=8000,
                             kind="iterates", control=control, data=data)
    claimed = report["theoretical_epsilon"]
    assert claimed == pytest.approx(1.0, rel=0.01)
    lower, estimate = report["empirical_epsilon_lower_bound"], report["empirical_epsilon_estimate"]
    if control is None:
        assert lower <= claimed and report["consistent_with_claim"], report
        assert estimate >= 0.5 * claimed, report
    else:
        assert lower > claimed and not report["consistent_with_claim"], report
    assert json.load(open(tmp_path / "audit.json"))["control"] == control


def test_gradient_canary_audit_with_fast_clipping(tmp_path):
    c = _config()
    c.privacy.clipping = "fast"
    report = audit.run_audit(c, str(tmp_path), num_canaries=1000, kind="gradient", data=DATA)
    assert report["empirical_epsilon_lower_bound"] <= report["theoretical_epsilon"]


@pytest.mark.parametrize("control", [None, "noise_off", "clip_off"])
def test_gradient_canary_audit_and_controls(tmp_path, control):
    report = audit.run_audit(_config(), str(tmp_path), num_canaries=1000, control=control,
                             kind="gradient", data=DATA)
    eps = report["theoretical_epsilon"]
    assert eps == pytest.approx(1.0, rel=0.01)
    bound = report["empirical_epsilon_lower_bound"]
    if control is None:
        assert bound <= eps and report["consistent_with_claim"]   # positive control
    else:
        assert bound > 2.5 * eps, report                          # negative controls fail it
    assert json.load(open(tmp_path / "audit.json"))["control"] == control


def test_input_canary_audit_runs(tmp_path):
    report = audit.run_audit(_config(), str(tmp_path), num_canaries=200, kind="input",
                             data=DATA)
    assert report["control"] is None
    assert report["empirical_epsilon_lower_bound"] <= report["theoretical_epsilon"]
    assert report["kind"] == "input" and report["canaries_included"] > 50


def test_audit_refuses_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        audit.run_audit(_config(), str(tmp_path), kind="magic", data=DATA)
    c = _config()
    c.phases.head_steps = 5
    with pytest.raises(ConfigError, match="head_steps"):
        audit.run_audit(c, str(tmp_path), data=DATA)
    with pytest.raises(ConfigError, match="noise_scale"):
        audit.run_audit(_config(), str(tmp_path), control="noise_scale=-1", data=DATA)
