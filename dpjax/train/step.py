"""The training steps: per-example loss, micro-batch accumulation, the update.

A logical batch (Poisson-sampled, padded to whole micro-batches) is processed
as a sequence of micro-batches, each one global array sharded over every
device of every host (`jax.jit` of `jax.shard_map` over `train.devices.mesh()`):

    acc_d  = 0                                                     (per device d)
    for each micro-batch:  acc_d += Σ_{i on d} mask_i · clip_C(∇ℓ_i)   (accumulate)
    ĝ      = (psum_d(acc_d) + N(0, σ²C²)) / B                          (update)

The noise is drawn from one key every device holds, after the psum, so every
replica adds the *same* draw: noise enters once per logical batch, and the
replicated state stays identical. The noise scale σ·C and B are traced
arguments, so a phase switch or a new σ does not recompile.

The per-example loss sees one example (and its K augmult views) at a time, so
nothing in it can mix examples; models with training-mode BatchNorm are
refused before we get here (`models.check_dp_compatible`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dpjax.data import augment
from dpjax.privacy import clipping

PyTree = Any
DATA_AXIS = "data"  # the mesh axis of `train.devices` (imported lazily there)
# The parameter vector of `dpjax audit --kind iterates`: coordinate j is canary j's alone.
CANARY_PARAM = "audit_canaries"


class TrainState(NamedTuple):
    """Everything that changes during training (replicated across devices)."""

    step: jax.Array
    params: PyTree          # all model parameters (trainable and frozen)
    opt_state: PyTree       # optimiser state of the trainable parameters
    ema_params: PyTree      # EMA of params (equal to params when EMA is off)


class StepStats(NamedTuple):
    """Sums over a device's share of a logical batch (not covered by ε)."""

    loss: jax.Array
    correct: jax.Array
    count: jax.Array
    clipped: jax.Array      # examples whose gradient norm exceeded C
    nonfinite: jax.Array    # examples whose gradient was NaN/inf (dropped)


def zero_stats() -> StepStats:
    return StepStats(*(jnp.zeros((), jnp.float32) for _ in StepStats._fields))


# --- parameters: trainable / frozen ------------------------------------------

def split_params(params: PyTree, is_trainable: Callable[[str], bool] | None):
    """Splits params into flat {path: leaf} dicts (trainable, frozen)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    if is_trainable is None:
        return flat, {}
    trainable = {k: v for k, v in flat.items() if is_trainable(k)}
    frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
    return trainable, frozen


def merge_params(trainable: dict, frozen: dict) -> PyTree:
    return flax.traverse_util.unflatten_dict({**trainable, **frozen}, sep="/")


def model_params(params: PyTree) -> PyTree:
    """The parameters the model reads: all but the audit canaries' coordinates."""
    if isinstance(params, dict) and CANARY_PARAM in params:
        return {k: v for k, v in params.items() if k != CANARY_PARAM}
    return params


# --- the model seen one example at a time -----------------------------------

@flax.struct.dataclass
class InputSpec:
    """How a uint8 image becomes model input (public constants only)."""

    mean: tuple = flax.struct.field(pytree_node=False)
    std: tuple = flax.struct.field(pytree_node=False)
    crop_padding: int = flax.struct.field(pytree_node=False, default=0)
    flip: bool = flax.struct.field(pytree_node=False, default=False)
    augmult: int = flax.struct.field(pytree_node=False, default=1)
    # > 0: each "example" is a privacy unit (a patient) of up to this many
    # images; padded slots have label −1.
    unit_size: int = flax.struct.field(pytree_node=False, default=0)
    # Logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment"):
    # the training loss is computed on logits + these per-class offsets (τ·log prior),
    # prediction uses the raw logits. Empty: plain cross-entropy. Public constants,
    # or class priors estimated with DP and accounted.
    logit_offsets: tuple = flax.struct.field(pytree_node=False, default=())
    # The model's __call__ takes `train` (True in training steps, with a "dropout"
    # RNG per example; False in evaluation).
    train_arg: bool = flax.struct.field(pytree_node=False, default=False)


def apply_kwargs(spec: InputSpec, train: bool, key: jax.Array | None = None) -> dict:
    """Extra `model.apply` arguments: `train` (and a dropout RNG) for models that take it."""
    if not spec.train_arg:
        return {}
    if train and key is not None:
        return {"train": True, "rngs": {"dropout": jax.random.fold_in(key, 0x44524F50)}}
    return {"train": train}


def training_loss(logits: jax.Array, labels: jax.Array, spec: InputSpec) -> jax.Array:
    """Per-row training loss: softmax cross-entropy on the (adjusted) logits, 0 for label < 0."""
    from dpjax.privacy.fast_clipping import masked_cross_entropy

    if spec.logit_offsets:
        logits = logits + jnp.asarray(spec.logit_offsets, logits.dtype)
    return masked_cross_entropy(logits, labels)


def prepare_eval(images: jax.Array, spec: InputSpec) -> jax.Array:
    """uint8 (N, H, W, C) -> normalised float32, no augmentation."""
    return augment.normalize(augment.to_float(images), spec.mean, spec.std)


@flax.struct.dataclass
class GradientCanaries:
    """White-box audit canaries: training rows whose gradient is fixed and known.

    A training row whose label is −1 − j is canary j. Its per-example gradient
    is `scale` times a unit vector u_j, so it has norm `scale` (≫ C) and goes
    through sampling, clipping, micro-batching, the devices and the noise like
    any other example:

      * `coordinate=False` (Steinke, Nasr & Jagielski 2023, one run): u_j = d_j,
        a fixed random unit direction over the trainable parameters;
      * `coordinate=True` (Nasr et al. 2023, all iterates): u_j = e_j, coordinate
        j of the extra parameter vector `params[CANARY_PARAM]` that the model
        never reads, so no other example touches it and each step's released
        update on it is one trial of the one-example mechanism.

    A canary row contributes nothing else (its model loss is not used).
    """

    key: jax.Array
    scale: float = flax.struct.field(pytree_node=False)
    coordinate: bool = flax.struct.field(pytree_node=False, default=False)


def canary_direction(key: jax.Array, canary_id: jax.Array, like: dict) -> dict:
    """d_j: a unit-norm Gaussian direction over the pytree `like`, fixed by (key, j)."""
    k = jax.random.fold_in(key, canary_id)
    names = sorted(like)
    keys = jax.random.split(k, len(names))
    raw = {n: jax.random.normal(kk, like[n].shape, jnp.float32) for n, kk in zip(names, keys)}
    norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in raw.values()))
    return {n: v / norm for n, v in raw.items()}


def canary_gradient(canaries: GradientCanaries, label: jax.Array, trainable: dict) -> dict:
    """The per-example gradient of the row with `label` if it is a canary (else zeros).

    Only the leaves it can touch: `CANARY_PARAM` (coordinate canaries) or the
    model's trainable parameters (direction canaries); zero on all others.
    """
    is_canary = label < 0
    canary_id = jnp.maximum(-1 - label, 0)
    scale = jnp.where(is_canary, canaries.scale, 0.0)
    if canaries.coordinate:
        size = trainable[CANARY_PARAM].shape[0]
        return {CANARY_PARAM: scale * jax.nn.one_hot(canary_id, size, dtype=jnp.float32)}
    model_part = {n: v for n, v in trainable.items() if n != CANARY_PARAM}
    d = canary_direction(canaries.key, canary_id, model_part)
    return {n: scale * d[n] for n in d}


def make_example_loss(model: nn.Module, spec: InputSpec, variables_extra: PyTree = None,
                      canaries: GradientCanaries | None = None):
    """`loss(trainable, frozen, (image, label, key)) -> (loss, (loss, correct))` for ONE example.

    With augmult K > 1 the loss is the mean over K augmented views of the
    example (De et al. 2022): its gradient is clipped once, as one example's.
    With `canaries`, rows with negative labels are canaries whose loss is
    linear in the parameters, ⟨θ, canary_gradient⟩.
    """
    extra = variables_extra or {}
    if canaries is not None:
        data_loss = make_example_loss(model, spec, variables_extra)

        def canary_loss_fn(trainable, frozen, example):
            image, label, key = example
            is_canary = label < 0
            loss, (_, correct) = data_loss(trainable, frozen,
                                           (image, jnp.maximum(label, 0), key))
            g = jax.lax.stop_gradient(canary_gradient(canaries, label, trainable))
            inner = sum(jnp.vdot(trainable[n].astype(jnp.float32), g[n]) for n in g)
            total = jnp.where(is_canary, inner, loss)
            return total, (jnp.where(is_canary, 0.0, loss), jnp.where(is_canary, 0.0, correct))

        return canary_loss_fn

    def loss_fn(trainable, frozen, example):
        image, label, key = example
        if spec.augmult > 1 or spec.crop_padding or spec.flip:
            views = augment.augmult_views(
                key, augment.to_float(image), spec.augmult, spec.crop_padding, spec.flip)
        else:
            views = augment.to_float(image)[None]
        x = augment.normalize(views, spec.mean, spec.std)
        logits = model.apply({"params": model_params(merge_params(trainable, frozen)), **extra},
                             x, **apply_kwargs(spec, True, key))
        labels = jnp.full((x.shape[0],), label)
        loss = training_loss(logits, labels, spec).mean()
        correct = (jnp.argmax(logits, -1) == labels).mean()
        return loss, (loss, correct)

    if spec.unit_size:
        def unit_loss_fn(trainable, frozen, example):
            """A patient's loss: the sum of its images' losses, so that its gradient
            (clipped once) is the patient's summed gradient."""
            images, labels, key = example
            valid = labels >= 0
            keys = jax.random.split(key, images.shape[0])
            losses, (_, correct) = jax.vmap(
                lambda im, lb, k: loss_fn(trainable, frozen, (im, lb, k)))(
                    images, jnp.maximum(labels, 0), keys)
            total = jnp.sum(jnp.where(valid, losses, 0.0))
            count = jnp.maximum(jnp.sum(valid), 1)
            return total, (total / count, jnp.sum(jnp.where(valid, correct, 0.0)) / count)

        return unit_loss_fn
    return loss_fn


# --- accumulate one micro-batch (per device, under shard_map) -----------------

def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """One augmentation key per example, from the step key and the example's index.

    The augmentation of example i at step t is thus the same whatever the
    number of devices, hosts or micro-batches.
    """
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def accumulate_private(trainable, frozen, acc, stats, images, labels, indices, mask, key,
                       clip_norm, *, loss_fn):
    """acc += Σ_i mask_i · clip_C(∇ℓ_i) over this device's rows of a micro-batch."""
    keys = example_keys(key, indices)
    per_example = lambda p, ex: loss_fn(p, frozen, ex)
    clipped_sum, norms, (losses, correct) = clipping.clipped_grad_sum(
        per_example, trainable, (images, labels, keys), mask, clip_norm)
    acc = jax.tree_util.tree_map(jnp.add, acc, clipped_sum)
    m = mask.astype(jnp.float32)
    finite = jnp.isfinite(norms)
    stats = StepStats(
        loss=stats.loss + jnp.sum(jnp.where(mask & finite, losses, 0.0)),
        correct=stats.correct + jnp.sum(m * correct),
        count=stats.count + jnp.sum(m),
        clipped=stats.clipped + jnp.sum(m * (norms > clip_norm)),
        nonfinite=stats.nonfinite + jnp.sum(m * ~finite),
    )
    return acc, stats


def accumulate_private_fast(params, acc, stats, images, labels, indices, mask, key, clip_norm,
                            *, model, spec, extra, is_trainable, method="auto",
                            canaries: GradientCanaries | None = None):
    """Like `accumulate_private`, with norms and the clipped sum from one backward pass.

    `dpjax.privacy.fast_clipping` (ghost / book-keeping clipping) never forms
    per-example gradients; its result equals the vmap method's (tested). A
    privacy unit's K images (`spec.unit_size`) are rows of one example, like
    augmult views. Audit canaries' gradients (known in closed form) enter the
    norms through `extra_sqnorms` and the sum through the returned factors.
    """
    from dpjax.privacy import fast_clipping

    keys = example_keys(key, indices)

    def views(image, k):
        if spec.augmult > 1 or spec.crop_padding or spec.flip:
            return augment.augmult_views(k, augment.to_float(image), spec.augmult,
                                         spec.crop_padding, spec.flip)
        return augment.to_float(image)[None]

    if spec.unit_size:  # (B, K, H, W, C): each image its own key, as in the vmap loss
        v = jax.vmap(lambda ims, k: jax.vmap(views)(ims, jax.random.split(k, ims.shape[0])))(
            images, keys)
    else:
        v = jax.vmap(views)(images, keys)
    num_views = v.shape[-4]
    x = augment.normalize(v.reshape((-1,) + v.shape[-3:]), spec.mean, spec.std)
    model_only = model_params(params)
    extra_sq = aux = None
    if canaries is not None:
        trainable, _ = split_params(params, is_trainable)
        aux = jax.vmap(lambda lb: canary_gradient(canaries, lb, trainable))(labels)
        extra_sq = sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in aux.values())
    result = fast_clipping.clipped_sum_and_stats(
        model, model_only, extra or None, x, labels, mask, clip_norm, num_views,
        is_trainable=is_trainable, method=method, extra_sqnorms=extra_sq,
        loss_fn=lambda logits, lb: training_loss(logits, lb, spec),
        apply_kwargs=apply_kwargs(spec, True, key))
    clipped, _ = split_params(result.clipped_sum, is_trainable)
    if aux is not None:  # the canaries' clipped gradients, with the factors of their norms
        for n, g in aux.items():
            part = jnp.einsum("b,b...->...", result.factors, g,
                              precision=jax.lax.Precision.HIGHEST)
            clipped[n] = clipped[n] + part if n in clipped else part
    acc = jax.tree_util.tree_map(lambda a, c: a + c.astype(jnp.float32), acc, clipped)
    m = mask.astype(jnp.float32)
    finite = jnp.isfinite(result.norms)
    stats = StepStats(
        loss=stats.loss + jnp.sum(jnp.where(mask & finite, result.losses, 0.0)),
        correct=stats.correct + jnp.sum(m * result.correct),
        count=stats.count + jnp.sum(m),
        clipped=stats.clipped + jnp.sum(m * (result.norms > clip_norm)),
        nonfinite=stats.nonfinite + jnp.sum(m * ~finite),
    )
    return acc, stats


def accumulate_nonprivate(trainable, frozen, acc, stats, images, labels, indices, mask, key,
                          clip_norm, *, loss_fn):
    """acc += Σ_i mask_i ∇ℓ_i, batched (no per-example gradients, not private)."""
    del clip_norm
    keys = example_keys(key, indices)
    m = mask.astype(jnp.float32)

    def batch_loss(p):
        losses, (_, correct) = jax.vmap(lambda ex: loss_fn(p, frozen, ex))((images, labels, keys))
        return jnp.sum(m * losses), (losses, correct)

    grads, (losses, correct) = jax.grad(batch_loss, has_aux=True)(trainable)
    acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
    stats = StepStats(
        loss=stats.loss + jnp.sum(m * losses),
        correct=stats.correct + jnp.sum(m * correct),
        count=stats.count + jnp.sum(m),
        clipped=stats.clipped,
        nonfinite=stats.nonfinite + jnp.sum(m * ~jnp.isfinite(losses)),
    )
    return acc, stats


# --- the update (per device, under shard_map) ----------------------------------

def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay; with warmup min(decay, (1 + t) / (10 + t)) as in DP-RandP."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    t = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


class Released(NamedTuple):
    """What an update releases beside the new state (all post-processing of the noisy sum)."""

    grad_norm: jax.Array    # norm of the privatized gradient (divergence check)
    canaries: jax.Array     # the privatized gradient on the audit canaries' coordinates


def apply_update(state: TrainState, acc, stats: StepStats, noise_key, noise_stddev,
                 expected_batch_size, *, tx: optax.GradientTransformation, is_trainable,
                 private: bool, ema_decay: float, ema_warmup: bool):
    """One optimiser step from the accumulated (clipped) gradient sums.

    Private: ĝ = (psum(acc) + N(0, noise_stddev²)) / B, the noise drawn once
    from `noise_key`, which every device holds (so every replica adds the same
    draw), with `noise_stddev` = σ·Δ from the plan and B the expected batch size.
    """
    total = jax.lax.psum(acc, DATA_AXIS)
    stats = jax.tree_util.tree_map(lambda s: jax.lax.psum(s, DATA_AXIS), stats)
    if private:
        noise = clipping.gaussian_noise_like(noise_key, total, noise_stddev)
        grads = jax.tree_util.tree_map(
            lambda s, n: (s.astype(jnp.float32) + n) / expected_batch_size, total, noise)
    else:
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(stats.count, 1.0), total)
    trainable, frozen = split_params(state.params, is_trainable)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    params = merge_params(trainable, frozen)
    if ema_decay > 0:
        d = ema_decay_at(state.step, ema_decay, ema_warmup)
        ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
    else:
        ema = params
    new_state = TrainState(state.step + 1, params, opt_state, ema)
    canaries = grads.get(CANARY_PARAM, jnp.zeros((0,), jnp.float32))
    return new_state, stats, Released(clipping.global_norm(grads), canaries)


# --- building the jitted, sharded functions -------------------------------------

class StepFns(NamedTuple):
    """The jitted steps of one phase, data-parallel over `devices.mesh()`.

    accumulate(params, acc, stats, images, labels, indices, mask, key, clip_norm)
        -> (acc, stats): each device adds the clipped gradients of its rows of
        the micro-batch to its own partial sum (leading device axis).
    update(state, acc, stats, noise_key, noise_stddev, expected_batch_size)
        -> (state, stats, Released): psum of the partial sums, noise once from
        the shared key, the optimiser step; state replicated.
    zeros(params) -> (acc, stats): empty partial sums.
    accumulate_one_device: `accumulate`'s per-device body (to size its memory).
    """

    accumulate: Callable
    update: Callable
    zeros: Callable
    accumulate_one_device: Callable


def build_step_fns(model: nn.Module, spec: InputSpec, tx: optax.GradientTransformation, *,
                   private: bool, is_trainable=None, ema_decay: float = 0.0,
                   ema_warmup: bool = False, variables_extra=None,
                   canaries: GradientCanaries | None = None,
                   clipping_method: str = "vmap",
                   fast_method: str | dict[str, str] = "auto") -> StepFns:
    """Jitted accumulate/update functions for one model, input spec and optimiser.

    Both run under `jax.shard_map` over the mesh of every device of every host
    (`train.devices`): per-example clipping is per-device code, and the sum
    over devices is one explicit `psum` in the update.

    `clipping_method`: "vmap" (per-example gradients, the reference) or
    "fast" (`dpjax.privacy.fast_clipping`, no per-example gradients), with
    `fast_method` its per-layer norm form (`fast_clipping`'s `method`).
    """
    from jax.sharding import PartitionSpec as P

    from dpjax.train import devices

    loss_fn = make_example_loss(model, spec, variables_extra, canaries)
    accumulate = accumulate_private if private else accumulate_nonprivate

    def one_device(params, acc, stats, images, labels, indices, mask, key, clip_norm):
        if private and clipping_method == "fast":
            return accumulate_private_fast(params, acc, stats, images, labels, indices, mask,
                                           key, clip_norm, model=model, spec=spec,
                                           extra=variables_extra, is_trainable=is_trainable,
                                           method=fast_method, canaries=canaries)
        trainable, frozen = split_params(params, is_trainable)
        frozen = jax.lax.stop_gradient(frozen)
        return accumulate(trainable, frozen, acc, stats, images, labels, indices, mask, key,
                          clip_norm, loss_fn=loss_fn)

    first = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    stack = lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree)

    def device_accumulate(params, acc, stats, images, labels, indices, mask, key, clip_norm):
        acc, stats = one_device(params, first(acc), first(stats), images, labels, indices,
                                mask, key, clip_norm)
        return stack(acc), stack(stats)

    def device_update(state, acc, stats, noise_key, noise_stddev, expected_batch_size):
        return apply_update(state, first(acc), first(stats), noise_key, noise_stddev,
                            expected_batch_size, tx=tx, is_trainable=is_trainable,
                            private=private, ema_decay=ema_decay, ema_warmup=ema_warmup)

    mesh, data, rep = devices.mesh(), P(devices.AXIS), P()
    accumulate_fn = jax.jit(jax.shard_map(
        device_accumulate, mesh=mesh, in_specs=(rep, data, data, data, data, data, data, rep,
                                                rep), out_specs=(data, data), check_vma=False),
        donate_argnums=(1, 2))
    update_fn = jax.jit(jax.shard_map(
        device_update, mesh=mesh, in_specs=(rep, data, data, rep, rep, rep),
        out_specs=(rep, rep, rep), check_vma=False), donate_argnums=(0,))

    n = jax.device_count()

    @functools.partial(jax.jit, out_shardings=devices.data_sharding())
    def zeros(params):
        trainable, _ = split_params(params, is_trainable)
        acc = jax.tree_util.tree_map(lambda p: jnp.zeros((n,) + p.shape, jnp.float32),
                                     trainable)
        stats = jax.tree_util.tree_map(lambda z: jnp.zeros((n,), z.dtype), zero_stats())
        return acc, stats

    return StepFns(accumulate=accumulate_fn, update=update_fn, zeros=zeros,
                   accumulate_one_device=one_device)


def init_state(params: PyTree, tx: optax.GradientTransformation, is_trainable=None) -> TrainState:
    trainable, _ = split_params(params, is_trainable)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(trainable), params)


def make_predict(model: nn.Module, spec: InputSpec, variables_extra=None):
    """jitted `predict(params, images_uint8) -> logits` (float32)."""
    extra = variables_extra or {}

    @jax.jit
    def predict(params, images):
        return model.apply({"params": model_params(params), **extra},
                           prepare_eval(images, spec), **apply_kwargs(spec, False))

    return predict
