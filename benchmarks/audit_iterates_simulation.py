"""Simulated white-box audit over all iterates: what `audit_traces` reports, and how often.

The traces are simulated with `dpjax.privacy.audit_iterates.simulate_traces` for the
quickstart setting at ε = 1 (N = 1437 training examples, expected batch 256, so
q = 256/(N + m/2); T = 300, δ = 1e-5, σ calibrated by the PLD accountant) and five runs:
honest, noise × 0.67, sampling at 2q (accountant told q), clipping off (an included
canary contributes 50 instead of 1) and noise off.

    python benchmarks/audit_iterates_simulation.py                  # m = 1000, as in docs
    python benchmarks/audit_iterates_simulation.py --canaries 4000 --rate-seeds 500

Per run it prints the accountant's ε at the true parameters, the medians over `--seeds`
full audits (PLD estimate, lower bound, GDP fit), and over `--rate-seeds` simulations the
fraction whose lower bound exceeds the claimed ε (a violation) and whose GDP-fit lower
bound does. Takes about a minute with the defaults on one core.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from dpjax.privacy import accounting
from dpjax.privacy.audit_iterates import (
    audit_traces,
    empirical_epsilon_lower_bound,
    estimate_mechanism,
    gaussian_dp_fit,
    simulate_traces,
    subsampled_gaussian_epsilon,
)


def _num(v):
    return math.inf if v == "inf" else v


def _fmt(v):
    return "∞" if math.isinf(v) else f"{v:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train", type=int, default=1437, help="training examples N")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seeds", type=int, default=20, help="full audits per run (PLD estimate)")
    ap.add_argument("--rate-seeds", type=int, default=2000,
                    help="simulations per run for the violation rates")
    args = ap.parse_args()

    m, steps, delta = args.canaries, args.steps, args.delta
    q = args.batch / (args.train + m / 2)
    sigma = accounting.calibrate_noise_multiplier(args.epsilon, delta, q, steps)
    claimed = accounting.epsilon([accounting.Phase(steps, sigma, q)], delta)
    print(f"m = {m}, T = {steps}, q = {q:.4f}, σ = {sigma:.4f}, claimed ε = {claimed:.4f} "
          f"at δ = {delta:g}\n")
    runs = [
        ("honest", {}),
        ("noise × 0.67", {"noise_multiplier": 0.67 * sigma}),
        ("sampling at 2q", {"sampling_rate": 2 * q}),
        ("clipping off (c = 50)", {"contribution": 50.0}),
        ("noise off", {"noise_multiplier": 0.0}),
    ]
    print("| run | true ε | ε̂ (median) | lower bound (median) | P(lower bound > claimed) "
          "| GDP fit ε̂ (median) | P(GDP lower > claimed) | σ̂ / q̂ / ĉ (seed 0) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, change in runs:
        truth = {"noise_multiplier": sigma, "sampling_rate": q, "contribution": 1.0}
        truth.update(change)
        true_eps, _ = subsampled_gaussian_epsilon(
            steps, truth["noise_multiplier"] / truth["contribution"], truth["sampling_rate"],
            delta)
        est, low, gdp = [], [], []
        first = None
        for seed in range(args.seeds):
            traces, inclusion = simulate_traces(m, steps, seed=seed, **truth)
            r = audit_traces(traces, inclusion, claimed_noise_multiplier=sigma,
                             claimed_sampling_rate=q, steps=steps, delta=delta)
            first = first or r
            est.append(_num(r["empirical_epsilon_estimate"]))
            low.append(_num(r["empirical_epsilon_lower_bound"]))
            gdp.append(_num(r["gdp_fit"]["epsilon"]))
        violations = gdp_violations = 0
        for seed in range(10_000, 10_000 + args.rate_seeds):
            traces, inclusion = simulate_traces(m, steps, seed=seed, **truth)
            bound = empirical_epsilon_lower_bound(estimate_mechanism(traces, inclusion), delta)
            violations += bound > claimed
            gdp_violations += gaussian_dp_fit(traces, inclusion, delta).epsilon_lower > claimed
        params = " / ".join(_fmt(_num(first[k]["estimate"]))
                            for k in ("noise_multiplier", "sampling_rate", "contribution"))
        print(f"| {name} | {_fmt(true_eps)} | {_fmt(float(np.median(est)))} | "
              f"{_fmt(float(np.median(low)))} | {violations / args.rate_seeds:.3f} | "
              f"{_fmt(float(np.median(gdp)))} | {gdp_violations / args.rate_seeds:.3f} | "
              f"{params} |", flush=True)


if __name__ == "__main__":
    main()
