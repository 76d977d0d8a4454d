"""Phase I of DP-RandP: a prior learned from random-process images (no private data).

Tang et al. (2023) train a backbone with the alignment + uniformity objective
of Wang & Isola (2020) on images from a randomly initialised StyleGAN
(Baradad et al. 2021). Here the images are generated on the device, afresh
for every step, inside the jitted training step: nothing is written to disk
and there is no epoch over a fixed set. The objective, per batch of two
augmented views with L2-normalised projections z, z':

    align(z, z') + ½ [unif(z) + unif(z')],
    align = mean_i ‖z_i − z'_i‖²,   unif(z) = log mean_{i≠j} exp(−2 ‖z_i − z_j‖²).

SimCLR's InfoNCE (Chen et al. 2020) is available as `pretrain.loss=infonce`.

This module never receives or loads the private data set: its only inputs are
the config's `model` and `pretrain` blocks and a PRNG seed. The prior costs no
privacy, and its ε is 0.
"""

from __future__ import annotations

import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dpjax import models
from dpjax.data import random_processes
from dpjax.randp import priors, views
from dpjax.train import checkpoint as checkpoint_lib

log = logging.getLogger("dpjax")


class ProjectionHead(nn.Module):
    """Flatten -> Dense(hidden) -> GN -> ReLU -> Dense(hidden) -> GN -> ReLU -> Dense(out) -> L2.

    `build` sets `hidden_dim` with `head_width`: `pretrain.hidden_dim` capped by the
    backbone's feature size.
    """

    hidden_dim: int = 4096
    out_dim: int = 128

    @nn.compact
    def __call__(self, feature_map):
        x = feature_map.reshape(feature_map.shape[0], -1).astype(jnp.float32)
        for i in range(2):
            x = nn.Dense(self.hidden_dim, name=f"dense{i}")(x)
            x = nn.relu(nn.GroupNorm(num_groups=16, name=f"norm{i}")(x))
        x = nn.Dense(self.out_dim, name="out")(x)
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SSLModel(nn.Module):
    backbone: nn.Module
    head: ProjectionHead

    def __call__(self, x):
        return self.head(self.backbone(x, return_feature_map=True))


def align_uniform_loss(z1: jax.Array, z2: jax.Array, t: float = 2.0) -> jax.Array:
    """Wang & Isola (2020) alignment (α = 2) plus uniformity (t = 2) averaged over views."""
    align = jnp.mean(jnp.sum((z1 - z2) ** 2, axis=-1))

    def unif(z):
        n = z.shape[0]
        sq = jnp.sum((z[:, None] - z[None]) ** 2, axis=-1)
        off = ~jnp.eye(n, dtype=bool)
        return jax.nn.logsumexp(jnp.where(off, -t * sq, -jnp.inf)) - jnp.log(n * (n - 1))

    return align + 0.5 * (unif(z1) + unif(z2))


def infonce_loss(z1: jax.Array, z2: jax.Array, temperature: float = 0.2) -> jax.Array:
    """SimCLR's NT-Xent over 2N views: each view's positive is its pair."""
    z = jnp.concatenate([z1, z2])
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    targets = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def generate_batch(key, cfg: ml_collections.ConfigDict) -> jax.Array:
    """A batch of random-process images, split evenly over the configured families."""
    families = tuple(cfg.families)
    sizes = [cfg.batch_size // len(families)] * len(families)
    sizes[0] += cfg.batch_size - sum(sizes)
    def options(family, n):
        return {"group_size": min(cfg.group_size, n)} if family == "stylegan_oriented" else {}

    images = [random_processes.generate(k, f, n, cfg.resolution, **options(f, n))
              for k, f, n in zip(jax.random.split(key, len(families)), families, sizes)]
    images = jnp.concatenate(images)
    if cfg.channels == 1:
        images = jnp.mean(images, axis=-1, keepdims=True)
    return images


def _make_schedule(cfg):
    boundaries = {int(f * cfg.steps): 0.1 for f in cfg.decay_at if 0 < f < 1}
    return optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)


# The projection head's width follows the backbone's flattened feature map: at most
# one hidden unit per FEATURES_PER_HIDDEN_UNIT features, at least MIN_HIDDEN_DIM, and never
# above `pretrain.hidden_dim`. WRN-16-4's 8x8x256 map gives the paper's 4096; the small
# CNN's 16x16x16 map gives 1024 (4.2 M weights in the first layer, not 16.8 M).
FEATURES_PER_HIDDEN_UNIT = 4
MIN_HIDDEN_DIM = 256


def head_width(hidden_dim: int, feature_dim: int) -> int:
    """The projection head's width: `hidden_dim` capped by the feature size (a power of 2)."""
    scaled = 2 ** int(np.floor(np.log2(max(feature_dim // FEATURES_PER_HIDDEN_UNIT, 1))))
    return int(min(hidden_dim, max(MIN_HIDDEN_DIM, scaled)))


def feature_dim(backbone: nn.Module, resolution: int, channels: int) -> int:
    """Size of the backbone's flattened feature map for one image (no computation)."""
    x = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
    out = jax.eval_shape(lambda x: backbone.init_with_output(
        jax.random.key(0), x, return_feature_map=True)[0], x)
    return int(np.prod(out.shape[1:]))


def build(config: ml_collections.ConfigDict, num_classes: int = 10):
    """(ssl model, optimiser) for the config's model and pretrain blocks."""
    cfg = config.pretrain
    backbone = models.get_model(config.model.name, num_classes,
                                dtype=jnp.dtype(config.model.dtype), **config.model.kwargs)
    width = head_width(cfg.hidden_dim, feature_dim(backbone, cfg.resolution, cfg.channels))
    model = SSLModel(backbone, ProjectionHead(width, cfg.projection_dim))
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(_make_schedule(cfg), momentum=cfg.momentum))
    return model, tx


def make_train_step(model, tx, config):
    cfg = config.pretrain
    mean = jnp.asarray(config.dataset.mean, jnp.float32)
    std = jnp.asarray(config.dataset.std, jnp.float32)

    def loss_fn(params, v1, v2):
        z1 = model.apply({"params": params}, (v1 - mean) / std)
        z2 = model.apply({"params": params}, (v2 - mean) / std)
        if cfg.loss == "infonce":
            return infonce_loss(z1, z2, cfg.temperature)
        return align_uniform_loss(z1, z2)

    @jax.jit
    def train_step(params, opt_state, key):
        gen_key, view_key = jax.random.split(key)
        images = generate_batch(gen_key, cfg)
        v1, v2 = views.two_views(view_key, images)
        loss, grads = jax.value_and_grad(loss_fn)(params, v1, v2)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def pretrain(config: ml_collections.ConfigDict, workdir: str, seed: int = 0) -> str:
    """Runs Phase I (resumable) and writes the prior to `workdir/prior`; returns its path.

    Takes no data set: only `config.model`, `config.pretrain` and the public
    normalisation constants `config.dataset.mean/std` are read.
    """
    cfg = config.pretrain
    prior_dir = os.path.join(workdir, "prior")
    if priors.is_prior(prior_dir):
        return prior_dir
    model, tx = build(config)
    sample = jnp.zeros((2, cfg.resolution, cfg.resolution, cfg.channels), jnp.float32)
    params = model.init(jax.random.key(seed), sample)["params"]
    opt_state = tx.init(params)
    checkpointer = checkpoint_lib.Checkpointer(workdir, subdir="pretrain_checkpoints")
    start = 0
    if checkpointer.latest_step() is not None:
        (params, opt_state), meta = checkpointer.restore((params, opt_state))
        start = int(meta["step"])
        log.info("Resuming Phase I from step %d.", start)
    train_step = make_train_step(model, tx, config)
    base_key = jax.random.key(seed)
    t0 = time.time()
    losses = []
    for step in range(start, cfg.steps):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(base_key, step))
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            loss = float(loss)
            if not np.isfinite(loss):
                raise FloatingPointError(f"Phase I loss is {loss} at step {done}: lower "
                                         "pretrain.learning_rate.")
            losses.append((done, loss))
            rate = (done - start) * cfg.batch_size / max(time.time() - t0, 1e-9)
            log.info("phase I step %d/%d loss %.4f (%.0f img/s)", done, cfg.steps, loss, rate)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            checkpointer.save(done, (params, opt_state), {"step": done})
    checkpointer.close()
    info = {"model": config.model.name, "model_kwargs": config.model.kwargs.to_dict(),
            "families": list(cfg.families), "resolution": cfg.resolution,
            "channels": cfg.channels, "loss": cfg.loss, "pretrain_steps": cfg.steps,
            "projection_width": model.head.hidden_dim,
            "pretrain_batch_size": cfg.batch_size, "loss_history": losses,
            "wall_time_s": time.time() - t0, "private_data_used": False}
    priors.save_prior(prior_dir, params["backbone"], info)
    return prior_dir

