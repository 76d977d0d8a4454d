"""`dpjax audit`: one-run privacy auditing of a training config (Steinke et al. 2023).

m canaries, each included in the training set by a fair coin; one training
run; a score per canary; guesses of which canaries were in; an empirical
lower bound on ε at 95 % confidence (`dpjax.privacy.audit`), set beside the
accountant's ε for the same run.

* White-box (`kind="gradient"`): canary j is a training row whose gradient is
  scale · d_j, a fixed random unit direction in parameter space with
  scale ≫ C, so clipping and Poisson sampling act on it like on any example.
  Score = ⟨θ_initial − θ_final, d_j⟩ (descent moves along −d_j).
* Black-box (`kind="input"`): canary j is a random-noise image with a random
  label. Score = its loss under θ_initial minus its loss under θ_final.

Negative controls (`control="noise_off"` or `"clip_off"`) run the same
training with the noise or the clipping switched off while the claimed ε is
unchanged: an audit that cannot catch those proves nothing. The bound has a
ceiling set by m and δ (about 3.5 / 5.8 / 7.3 for m = 100 / 1000 / 5000 at
δ = 1e-5), so controls are meaningful at a claimed ε ≤ 1 with m ≥ 1000.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dpjax.data import sources
from dpjax.errors import ConfigError
from dpjax.privacy import audit as audit_stats
from dpjax.train import loop
from dpjax.train import step as step_lib

KINDS = ("gradient", "input")
CONTROLS = (None, "noise_off", "clip_off")


def _with_canaries(data: sources.DataSplits, kind: str, inclusion: np.ndarray, seed: int):
    """Training set plus the included canaries; returns (splits, canary images, labels)."""
    m = len(inclusion)
    rng = np.random.default_rng([seed, 0xCA7])
    shape = data.train.images.shape[1:]
    if kind == "gradient":
        images = np.zeros((m,) + shape, np.uint8)
        labels = (-1 - np.arange(m)).astype(np.int32)       # canary j <-> label −1 − j
    else:
        images = rng.integers(0, 256, (m,) + shape, dtype=np.uint8)
        labels = rng.integers(0, data.num_classes, m).astype(np.int32)
    train = sources.ArrayDataset(np.concatenate([data.train.images, images[inclusion]]),
                                 np.concatenate([data.train.labels, labels[inclusion]]))
    return dataclasses.replace(data, train=train), images, labels


def _gradient_scores(key, scale, initial, final, m: int) -> np.ndarray:
    before, _ = step_lib.split_params(initial, None)
    after, _ = step_lib.split_params(final, None)
    # Gradient descent moves θ along −d_j for an included canary j.
    delta = {k: jnp.asarray(before[k] - after[k], jnp.float32) for k in after}

    @jax.jit
    def score(ids):
        def one(j):
            d = step_lib.canary_direction(key, j, delta)
            return sum(jnp.vdot(delta[n], d[n]) for n in d)

        return jax.lax.map(one, ids)

    del scale
    return np.asarray(score(jnp.arange(m)))


def _input_scores(config, data, initial, final, images, labels) -> np.ndarray:
    model, variables, spec = loop.build_model(config, data)
    extra = {k: v for k, v in variables.items() if k != "params"}
    predict = step_lib.make_predict(model, spec, extra)

    def losses(params):
        logits = np.concatenate([np.asarray(predict(params, images[i:i + 256]))
                                 for i in range(0, len(images), 256)])
        return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(logits), jnp.asarray(labels)))

    return losses(initial) - losses(final)


def run_audit(config: ml_collections.ConfigDict, workdir: str, *, num_canaries: int = 1000,
              kind: str = "gradient", control: str | None = None, canary_scale: float = 50.0,
              seed: int = 0, confidence: float = 0.95,
              data: sources.DataSplits | None = None) -> dict:
    """Trains once with m canaries and reports the empirical ε lower bound.

    Args:
      config: the training config to audit (one phase; σ from it as usual).
      workdir: the run's workdir; `audit.json` is written there.
      num_canaries: m (≥ 1000 for the controls to be able to exceed ε ≤ 1).
      kind: "gradient" (white-box) or "input" (black-box).
      control: None, "noise_off" or "clip_off" (negative controls).
      canary_scale: gradient canaries' norm as a multiple of clip_norm.
      seed: canary coins and directions.
    """
    if kind not in KINDS:
        raise ConfigError(f"Expected audit kind in {KINDS}, got {kind!r}.")
    if control not in CONTROLS:
        raise ConfigError(f"Expected audit control in {CONTROLS}, got {control!r}.")
    if config.phases.head_steps or config.privacy.mode != "dpsgd":
        raise ConfigError("dpjax audit audits one-phase DP-SGD configs: set "
                          "phases.head_steps=0 and privacy.mode=dpsgd.")
    if config.privacy.clipping != "vmap":
        raise ConfigError("dpjax audit runs with privacy.clipping=vmap (gradient canaries "
                          "enter through the per-example loss).")
    if num_canaries < 2:
        raise ConfigError(f"Expected num_canaries={num_canaries} >= 2.")
    data = data if data is not None else sources.load(config.dataset)
    inclusion = audit_stats.canary_inclusion(num_canaries, seed)
    audited, images, labels = _with_canaries(data, kind, inclusion, seed)
    canary_key = jax.random.fold_in(jax.random.key(seed), 0xCA7)
    hooks = loop.AuditHooks(
        canaries=step_lib.GradientCanaries(canary_key, canary_scale * config.privacy.clip_norm)
        if kind == "gradient" else None,
        disable_noise=control == "noise_off", disable_clipping=control == "clip_off")
    summary = loop.train_and_evaluate(config, workdir, data=audited, audit=hooks)
    initial, final = summary["audit_params"]
    if kind == "gradient":
        scores = _gradient_scores(canary_key, canary_scale, initial, final, num_canaries)
    else:
        scores = _input_scores(config, data, initial, final, images, labels)
    result = audit_stats.audit_from_scores(scores, inclusion, config.privacy.delta, confidence)
    report = {
        "kind": kind,
        "control": control,
        "num_canaries": num_canaries,
        "canaries_included": int(inclusion.sum()),
        "theoretical_epsilon": summary["epsilon"],
        "delta": config.privacy.delta,
        "empirical_epsilon_lower_bound": result.epsilon_lower_bound,
        "confidence": confidence,
        "best_guesses": {"k_plus": result.k_plus, "k_minus": result.k_minus,
                         "num_guesses": result.num_guesses, "num_correct": result.num_correct},
        "consistent_with_claim": result.epsilon_lower_bound <= (summary["epsilon"] or 0.0),
        "test_accuracy": summary["test_accuracy"],
        "note": ("A negative control: noise or clipping was OFF, so the claimed ε does not "
                 "hold and the bound should exceed it.") if control else
                ("An honest run: the bound must stay at or below the claimed ε; a bound "
                 "below ε is expected (one-run audits are not tight)."),
    }
    with open(os.path.join(workdir, "audit.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
