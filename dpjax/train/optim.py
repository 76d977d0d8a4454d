"""Optimisers and learning-rate schedules from optax, chosen by config."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    lr = float(cfg.learning_rate)
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(num_steps, 1))
    # warmup_cosine
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, min(cfg.warmup_steps, max(num_steps - 1, 0)), max(num_steps, 1))


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """SGD (DP-SGD's usual choice; De et al. use plain SGD), momentum or Adam.

    Weight decay is added to the privatised gradient (it depends on the
    parameters only, so it costs no privacy).
    """
    schedule = make_schedule(cfg, num_steps)
    parts = []
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.name == "sgd":
        parts.append(optax.sgd(schedule))
    elif cfg.name == "momentum":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum))
    else:
        parts.append(optax.adam(schedule))
    return optax.chain(*parts)
