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
    assert report["empirical_epsilon_lower_bound"] <= report["theoretical_epsilon"]
    assert report["kind"] == "input" and report["canaries_included"] > 50


def test_audit_refuses_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        audit.run_audit(_config(), str(tmp_path), kind="magic", data=DATA)
    c = _config()
    c.phases.head_steps = 5
    with pytest.raises(ConfigError, match="head_steps"):
        audit.run_audit(c, str(tmp_path), data=DATA)
