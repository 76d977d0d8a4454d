"""Class imbalance in a run: the class prior, its privacy cost and the logit offsets.

With `imbalance.method=logit_adjustment` the training loss is the
cross-entropy of logits + τ·log π (Menon et al. 2021, "Long-tail learning via
logit adjustment"; `train.step.training_loss`), while prediction uses the
plain logits: their argmax is then the prior-corrected decision, the one
that maximises balanced accuracy, with no threshold to choose and no test
label seen. The prior π comes from (`imbalance.prior`):

  * `dp`: Laplace-noised class counts of the private training labels at
    ε = `imbalance.prior_epsilon` (`dpjax.privacy.class_prior`), drawn from
    the run's "class_counts" stream (OS entropy by default). In a DP-SGD run
    the release is one of the plan's `pre_releases` (`pre_releases` below,
    called by `loop.plan_from_config`): σ calibration leaves room for it and
    the reported ε is the composition of both;
  * `public`: `imbalance.public_prior`, probabilities known without the data
    (e.g. from the literature on the population);
  * `empirical`: the exact training counts, for non-private runs only
    (refused with DP-SGD: no ε covers them).

`attach_prior` runs once the run's seed is known; it puts the offsets and
the summary entries in `data.info` (under `LOGIT_OFFSETS_KEY` and
`SUMMARY_KEY`), from where `train.model.build` reads the offsets and the loop
passes the entries into summary.json.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from dpjax.data import sources
from dpjax.errors import ConfigError
from dpjax.privacy import class_prior, randomness

LOGIT_OFFSETS_KEY = "imbalance_logit_offsets"
SUMMARY_KEY = "imbalance_summary"
DP_MECHANISM_NOTE = ("Laplace noise of scale 1/ε on each class count (L1 sensitivity 1 under "
                     "add/remove-one), clipped below at prior_floor and normalised; composed "
                     "into the run's epsilon")
EMPIRICAL_NOTE = ("exact class counts of the training labels: a statistic of the training set "
                  "not covered by any epsilon (allowed in non-private runs only)")


def uses_dp_prior(config: ml_collections.ConfigDict) -> bool:
    m = config.imbalance
    return m.method != "none" and m.prior == "dp"


def pre_releases(config: ml_collections.ConfigDict) -> tuple:
    """The releases this config makes before training, for `plan_lib.make_plan(pre_releases=)`."""
    if not uses_dp_prior(config):
        return ()
    return (class_prior.pre_release(config.imbalance.prior_epsilon),)


def attach_prior(config: ml_collections.ConfigDict, data: sources.DataSplits,
                 units: np.ndarray | None, seed: int) -> sources.DataSplits:
    """`data` with the run's logit offsets and imbalance summary entries in `data.info`.

    Args:
      config: the run's config (`imbalance` block).
      data: the splits; only `data.train.labels` and `num_classes` are read.
      units: `train.input.privacy_units` (None per example): with patients,
        each patient adds its label fractions, keeping the L1 sensitivity 1.
      seed: the run's seed; the noise is its "class_counts" stream.

    Returns `data` unchanged when `imbalance.method` is "none".
    """
    m = config.imbalance
    if m.method == "none":
        return data
    k = data.num_classes
    entries = {"imbalance_method": m.method, "logit_adjustment_tau": float(m.tau),
               "class_prior_source": m.prior}
    if m.prior == "public":
        prior = np.asarray(tuple(m.public_prior), np.float64)
        if prior.shape != (k,):
            raise ConfigError(f"imbalance.public_prior has {prior.size} values but the data have "
                              f"{k} classes: give one probability per class.")
        prior = prior / prior.sum()
    elif m.prior == "dp":
        noisy = class_prior.estimate_prior(
            data.train.labels, k, float(m.prior_epsilon),
            randomness.numpy_rng(seed, class_prior.RELEASE_NAME), floor=float(m.prior_floor),
            units=units)
        prior = np.asarray(noisy.prior)
        entries.update(class_prior_epsilon=noisy.epsilon,
                       class_prior_noisy_counts=list(noisy.counts),
                       class_prior_mechanism=DP_MECHANISM_NOTE)
    else:
        if config.privacy.mode != "none":
            raise ConfigError("imbalance.prior=empirical is for non-private runs only.")
        counts = class_prior.class_histogram(data.train.labels, k, units)
        prior = class_prior.prior_from_counts(counts, float(m.prior_floor))
        entries["class_prior_note"] = EMPIRICAL_NOTE
    offsets = class_prior.logit_offsets(prior, float(m.tau))
    entries.update(class_prior=[float(p) for p in prior], logit_offsets=list(offsets))
    info = dict(data.info, **{LOGIT_OFFSETS_KEY: offsets, SUMMARY_KEY: entries})
    return dataclasses.replace(data, info=info)


def summary_entries(data: sources.DataSplits) -> dict:
    """The imbalance entries for summary.json ({} without logit adjustment)."""
    return dict(data.info.get(SUMMARY_KEY, {}))


def logit_offsets(data: sources.DataSplits) -> tuple:
    """The offsets `attach_prior` computed (() without logit adjustment)."""
    return tuple(data.info.get(LOGIT_OFFSETS_KEY, ()))
