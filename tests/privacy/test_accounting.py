"""Accounting against dp_accounting called directly and the reference values."""

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from dpjax.errors import ConfigError
from dpjax.privacy import accounting

Q = 4096 / 50000


def _direct(sigma, q, steps, delta, acc):
    a = (pld.PLDAccountant(value_discretization_interval=1e-4) if acc == "pld"
         else rdp.RdpAccountant())
    a.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return a.get_epsilon(delta)


@pytest.mark.parametrize("acc,expected", [("rdp", 3.142), ("pld", 2.877)])
def test_reference_epsilon(acc, expected):
    eps = accounting.epsilon([accounting.Phase(10_000, 1.0, 256 / 50000)], 1e-5, acc)
    assert eps == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("acc", ["rdp", "pld"])
def test_epsilon_equals_dp_accounting(acc):
    eps = accounting.epsilon([accounting.Phase(875, 9.3, Q)], 1e-5, acc)
    assert eps == pytest.approx(_direct(9.3, Q, 875, 1e-5, acc), rel=1e-9)


def test_de_et_al_config():
    assert accounting.epsilon([accounting.Phase(875, 10.0, Q)], 1e-5, "rdp") == pytest.approx(
        0.988, abs=2e-3)


@pytest.mark.parametrize("acc,target,sigma", [("rdp", 1.0, 9.890), ("pld", 1.0, 9.128),
                                               ("rdp", 2.0, 5.314), ("rdp", 8.0, 1.734)])
def test_calibration_reference(acc, target, sigma):
    got = accounting.calibrate_noise_multiplier(target, 1e-5, Q, 875, acc)
    assert got == pytest.approx(sigma, rel=5e-3)
    eps = _direct(got, Q, 875, 1e-5, acc)
    assert eps <= target
    assert eps == pytest.approx(target, rel=0.01)


def test_composed_phases_equal_dp_accounting():
    phases = [accounting.Phase(96, 9.3, Q, "phase2"), accounting.Phase(779, 6.0, Q, "phase3")]
    a = rdp.RdpAccountant()
    a.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(9.3)), 96),
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(6.0)), 779)]))
    assert accounting.epsilon(phases, 1e-5, "rdp") == pytest.approx(a.get_epsilon(1e-5))


def test_edge_cases():
    assert accounting.epsilon([], 1e-5) == 0.0
    assert accounting.epsilon([accounting.Phase(0, 1.0, 0.1)], 1e-5) == 0.0
    assert accounting.epsilon([accounting.Phase(3, 0.0, 0.1)], 1e-5) == float("inf")


def test_unreachable_target_is_a_config_error():
    with pytest.raises(ConfigError, match="target_epsilon"):
        accounting.calibrate_noise_multiplier(1e-4, 1e-5, 0.5, 10_000, "rdp")


@pytest.mark.parametrize("kwargs", [dict(steps=-1), dict(noise_multiplier=-1.0),
                                    dict(sampling_rate=0.0), dict(sampling_rate=1.5)])
def test_phase_validation(kwargs):
    args = dict(steps=10, noise_multiplier=1.0, sampling_rate=0.1) | kwargs
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        accounting.Phase(**args)


@pytest.mark.parametrize("target", [1e3 + 1, 1e300, float("inf"), float("nan"), 0.0, -1.0])
def test_target_out_of_range_is_refused_at_once(target):
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        accounting.calibrate_noise_multiplier(target, 1e-5, 0.1, 300)


def test_large_target_and_huge_step_counts_answer_quickly():
    """ε = 50 calibrates (PLD on a grid scaled to ε); 10⁹ steps are refused (σ ≤ 4096
    cannot reach ε = 4) from RDP and one cheap PLD call, instead of hanging."""
    q = 256 / 1437
    sigma = accounting.calibrate_noise_multiplier(50.0, 1e-5, q, 300)
    eps = accounting.epsilon([accounting.Phase(300, sigma, q)], 1e-5)
    assert 49.5 < eps <= 50.0
    with pytest.raises(ConfigError, match="reachable"):
        accounting.calibrate_noise_multiplier(4.0, 1e-5, q, 10**9)


def test_pld_grid_is_the_fine_grid_for_usual_epsilons():
    assert accounting.pld_grid(0.5) == accounting.pld_grid(10.0) == 1e-4
    assert accounting.pld_grid(100.0) == pytest.approx(1e-3)


def test_very_many_participations_use_rdp_with_a_warning(caplog):
    phase = accounting.Phase(10**7, 100.0, 0.178)  # each example in ~1.8e6 steps
    with caplog.at_level("WARNING", logger="dpjax"):
        eps = accounting.epsilon([phase], 1e-5, "pld")
    assert eps == accounting.epsilon([phase], 1e-5, "rdp") and "RDP" in caplog.text
