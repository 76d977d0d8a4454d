"""`dpjax audit`: empirical privacy audits of a training config.

Three kinds, each training once, from scratch, in a fresh workdir, with m
canaries each included in the training set by a fair coin:

* `iterates` (white-box, all iterates; Nasr, Hayes, Steinke, Balle, Tramèr,
  Jagielski, Carlini, Terzis, "Tight auditing of differentially private
  machine learning", USENIX Security 2023): canary j's gradient is
  scale · e_j on an extra parameter coordinate no other example touches
  (scale ≫ C). The auditor reads every step's privatized update on those
  coordinates, so each canary is an independent trial of the one-example
  mechanism over all T steps; the mechanism's σ, q and per-example
  contribution are measured from the traces and turned into ε with a 95 %
  confidence interval (`dpjax.privacy.audit_iterates`). It catches a noise
  scale 0.67× too small or a sampler running at 2q.
* `gradient` (white-box, final model only; Steinke, Nasr & Jagielski 2023,
  one run): canary j's gradient is scale · d_j, a random direction over the
  model's parameters; score = ⟨θ_0 − θ_T, d_j⟩.
* `input` (black-box): canary j is a random-noise image with a random label;
  score = its loss under θ_0 minus under θ_T.

Controls switch the mechanism away from what the accountant is told, to
show the audit can fail: `noise_off`, `clip_off`, `noise_scale=X` (the noise
multiplied by X) and `sampling_x2` (the sampler runs at 2q, the accountant
is told q). They are audit-only switches, never config fields.
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

from dpjax import config as config_lib
from dpjax import models, validate
from dpjax.data import sources
from dpjax.errors import ConfigError, DpjaxError
from dpjax.privacy import audit as audit_stats
from dpjax.privacy import audit_iterates, randomness
from dpjax.train import devices, loop
from dpjax.train import model as model_lib
from dpjax.train import step as step_lib
from dpjax.train import workdir as workdir_lib

KINDS = ("iterates", "gradient", "input")


@dataclasses.dataclass(frozen=True)
class Control:
    """How a control run departs from the claimed mechanism (None fields: as claimed)."""

    name: str | None = None
    noise_scale: float = 1.0
    sampling_multiplier: int = 1
    disable_clipping: bool = False


def parse_control(text: str | None) -> Control:
    """`None`, "noise_off", "clip_off", "sampling_x2" or "noise_scale=X" (0 ≤ X)."""
    if text in (None, ""):
        return Control()
    if text == "noise_off":
        return Control(text, noise_scale=0.0)
    if text == "clip_off":
        return Control(text, disable_clipping=True)
    if text == "sampling_x2":
        return Control(text, sampling_multiplier=2)
    if text.startswith("noise_scale="):
        scale = text.split("=", 1)[1]
        try:
            scale = float(scale)
        except ValueError:
            pass  # refused below, as given
        validate.non_negative_finite("--control noise_scale", scale,
                                     fix="give --control noise_scale=X with X >= 0")
        return Control(text, noise_scale=scale)
    raise ConfigError(f"--control {text!r}: expected noise_off, clip_off, sampling_x2 or "
                      "noise_scale=X.")


def _with_canaries(data: sources.DataSplits, kind: str, inclusion: np.ndarray,
                   rng: np.random.Generator):
    """Training set plus the included canaries; returns (splits, canary images, labels)."""
    m = len(inclusion)
    shape = data.train.image_shape
    if kind == "input":
        images = rng.integers(0, 256, (m,) + shape, dtype=np.uint8)
        labels = rng.integers(0, data.num_classes, m).astype(np.int32)
    else:
        images = np.zeros((m,) + shape, np.uint8)
        labels = (-1 - np.arange(m)).astype(np.int32)       # canary j <-> label −1 − j
    train = sources.ArrayDataset(np.concatenate([data.train.images, images[inclusion]]),
                                 np.concatenate([data.train.labels, labels[inclusion]]))
    return dataclasses.replace(data, train=train), images, labels


def _gradient_scores(key, initial, final, m: int) -> np.ndarray:
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

    return np.asarray(score(jnp.arange(m)))


def _input_scores(built, initial, final, images, labels) -> np.ndarray:
    def losses(params):
        logits = np.concatenate([np.asarray(built.predict(params, images[i:i + 256]))
                                 for i in range(0, len(images), 256)])
        return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
            jnp.asarray(logits), jnp.asarray(labels)))

    return losses(initial) - losses(final)


def run_audit(config: ml_collections.ConfigDict, workdir: str, *, num_canaries: int = 4000,
              kind: str = "iterates", control: str | None = None, canary_scale: float = 50.0,
              seed: int = -1, confidence: float = 0.95,
              data: sources.DataSplits | None = None) -> dict:
    """Trains once with m canaries in a fresh `workdir` and writes `workdir/audit.json`.

    Args:
      config: the training config to audit (one DP-SGD phase).
      workdir: a new directory (a workdir holding a run is refused: an audit
        must train every step with its canaries).
      num_canaries: m. For `iterates`, 4000 lets the quickstart's lower bound catch a
        noise scale of 0.67 in every simulated run (1000: about 86 %); the one-run
        kinds need m ≥ 1000 to be able to exceed ε ≤ 1 at all.
      kind: "iterates", "gradient" or "input".
      control: None or a negative control (see `parse_control`).
      canary_scale: the canaries' gradient norm as a multiple of clip_norm.
      seed: the auditor's coins and canary directions: -1 draws from OS entropy;
        a fixed seed is domain-separated from every training stream.
    """
    if kind not in KINDS:
        raise ConfigError(f"Expected audit kind in {KINDS}, got {kind!r}.")
    ctrl = parse_control(control)
    config_lib.validate(config)
    if config.phases.head_steps or config.privacy.mode != "dpsgd" or config.pretrain.steps \
            or config.model.init_from:
        raise ConfigError("dpjax audit audits one-phase DP-SGD configs from scratch: set "
                          "phases.head_steps=0, pretrain.steps=0, model.init_from='' and "
                          "privacy.mode=dpsgd.")
    if config.privacy.unit != "example" or config.ldp.scale:
        raise ConfigError("dpjax audit needs privacy.unit=example and ldp.scale=0.")
    validate.integer("--canaries", num_canaries, 2,
                     fix="the audit needs canaries both in and out; 0 picks the default")
    if workdir_lib.Workdir(workdir).has_run():
        raise DpjaxError(f"{workdir} already holds a run: an audit trains every step with its "
                         "canaries, so give it a fresh --workdir.")
    randomness.check_seed("--seed", seed)
    seed = randomness.os_seed() if seed < 0 else seed
    data = data if data is not None else sources.load(config.dataset)
    inclusion = randomness.numpy_rng(seed, "canary_coins").integers(0, 2, num_canaries) \
        .astype(bool)
    audited, images, labels = _with_canaries(data, kind, inclusion,
                                             randomness.numpy_rng(seed, "canary"))
    canary_key = randomness.jax_key(seed, "canary")
    scale = canary_scale * config.privacy.clip_norm
    module = models.get_model(config.model.name, data.num_classes,
                              dtype=jnp.dtype(config.model.dtype), **config.model.kwargs)
    built = model_lib.build(config, data, module=module)
    initial = built.params
    traces = []
    if kind == "iterates":
        initial = dict(built.params, **{step_lib.CANARY_PARAM: np.zeros(num_canaries,
                                                                         np.float32)})
        factor = config.batch_size / config.privacy.clip_norm
        observe = lambda step, released: traces.append(
            devices.to_host(released.canaries) * factor)
    else:
        observe = None
    hooks = loop.AuditHooks(
        canaries=step_lib.GradientCanaries(canary_key, scale, coordinate=kind == "iterates")
        if kind != "input" else None,
        noise_scale=ctrl.noise_scale, sampling_multiplier=ctrl.sampling_multiplier,
        disable_clipping=ctrl.disable_clipping, observe=observe)
    summary = loop.train_and_evaluate(config, workdir, data=audited, model=module,
                                      init_params=initial, audit=hooks)
    if summary["steps"] < 1:
        raise DpjaxError("The audit trained no step: nothing to report.")
    report = {"kind": kind, "control": ctrl.name, "num_canaries": num_canaries,
              "canaries_included": int(inclusion.sum()), "steps": summary["steps"],
              "delta": config.privacy.delta, "confidence": confidence,
              "test_accuracy": summary["test_accuracy"]}
    if kind == "iterates":
        result = audit_iterates.audit_traces(
            np.stack(traces, axis=1), inclusion,
            claimed_noise_multiplier=summary["noise_multiplier"],
            claimed_sampling_rate=summary["sampling_rate"], steps=summary["steps"],
            delta=config.privacy.delta, accountant=config.privacy.accountant,
            confidence=confidence)
        report.update(result)
    else:
        final = summary["final_params"]
        scores = (_gradient_scores(canary_key, initial, final, num_canaries)
                  if kind == "gradient" else _input_scores(built, initial, final, images, labels))
        result = audit_stats.audit_from_scores(scores, inclusion, config.privacy.delta,
                                               confidence)
        report.update({
            "theoretical_epsilon": summary["epsilon"],
            "empirical_epsilon_lower_bound": result.epsilon_lower_bound,
            "best_guesses": {"k_plus": result.k_plus, "k_minus": result.k_minus,
                             "num_guesses": result.num_guesses,
                             "num_correct": result.num_correct},
            "consistent_with_claim": result.epsilon_lower_bound <= (summary["epsilon"] or 0.0)})
    report["note"] = (
        f"A negative control ({ctrl.name}): the mechanism departs from what the accountant is "
        "told, so the claimed epsilon does not hold and the lower bound should exceed it."
        if ctrl.name else
        "An honest run: the lower bound must stay at or below the claimed epsilon.")
    workdir_lib.atomic_write_json(os.path.join(workdir, "audit.json"), report)
    return report


def load_report(workdir: str) -> dict:
    with open(os.path.join(workdir, "audit.json")) as f:
        return json.load(f)
