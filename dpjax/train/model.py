"""The model of a run: the module, its initial variables, its input spec, `predict`.

Initial parameters are public (drawn from a fixed key: they depend on no
private data), so they need no OS entropy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpjax import models
from dpjax.data import sources
from dpjax.errors import ConfigError
from dpjax.models import adapters
from dpjax.train import imbalance
from dpjax.train import step as step_lib

PyTree = Any
# Every zoo model names its output layer `classifier` and, where a norm comes after the
# last convolution with nothing but an activation and pooling between it and the
# classifier, that norm `final_norm` (WRN, small CNN). ResNet's last norm sits inside a
# residual block and the MLP has none: their probe trains the classifier alone.
# tests/randp/test_head.py checks this structurally for every zoo model.
HEAD_PARAMS = ("final_norm/", "classifier/")


def is_head_param(path: str) -> bool:
    """The parameters a DP linear probe trains: the last norm's affine and the classifier."""
    return path.startswith(HEAD_PARAMS)


@dataclasses.dataclass
class BuiltModel:
    """A module with its initial variables, input spec and jitted `predict`."""

    module: nn.Module
    params: PyTree          # initial 'params' collection
    extra: dict             # the other collections (e.g. frozen 'batch_stats')
    spec: step_lib.InputSpec
    predict: Callable       # predict(params, uint8 images) -> logits


def input_spec(config: ml_collections.ConfigDict, unit_size: int = 0,
               logit_offsets: tuple = (), train_arg: bool = False) -> step_lib.InputSpec:
    """`logit_offsets`: τ·log π per class for logit adjustment (`train.imbalance`), or ();
    `train_arg`: the model's __call__ takes `train`."""
    return step_lib.InputSpec(mean=tuple(config.dataset.mean), std=tuple(config.dataset.std),
                              crop_padding=config.augment.crop_padding, flip=config.augment.flip,
                              augmult=config.augmult, unit_size=unit_size,
                              logit_offsets=tuple(float(v) for v in logit_offsets),
                              train_arg=train_arg)


def _raise_if_too_small(config: ml_collections.ConfigDict, shape: tuple, init,
                        error: Exception) -> None:
    """ConfigError naming dataset.image_size and model.name when the model initialises on
    larger images (up to 64 px) but not on these; nothing when it fails at every size."""
    for side in (2, 4, 8, 16, 32, 64):
        if side <= min(shape[:2]):
            continue
        try:
            init((side, side))
        except Exception:  # noqa: BLE001 — try the next size
            continue
        raise ConfigError(
            f"Expected images of at least {side}x{side} for model.name={config.model.name!r}, "
            f"got {shape[0]}x{shape[1]} (it fails with {type(error).__name__}): set "
            f"dataset.image_size={side} or choose a model for small images.") from None


def build(config: ml_collections.ConfigDict, data: sources.DataSplits, unit_size: int = 0,
          module: nn.Module | None = None) -> BuiltModel:
    """The configured zoo model (or `module`: any linen or nnx module) for `data`, initialised."""
    if module is None:
        module = models.get_model(config.model.name, data.num_classes,
                                  dtype=jnp.dtype(config.model.dtype), **config.model.kwargs)
    module = adapters.as_linen(module)
    train_arg = adapters.takes_train(module)
    shape = tuple(data.train.image_shape)
    # The "rbg" generator compiles the initialisers several times faster than the
    # default on CPU; initial values are public (no privacy role).
    init = lambda hw: module.init(jax.random.key(0, impl="rbg"),
                                  np.zeros((1,) + hw + shape[2:], np.float32),
                                  **({"train": False} if train_arg else {}))
    try:
        variables = init(shape[:2])
    except Exception as e:  # noqa: BLE001 — images too small for the model: say so
        _raise_if_too_small(config, shape, init, e)
        raise
    extra = {k: v for k, v in variables.items() if k != "params"}
    # Logit adjustment's offsets, put in data.info by `imbalance.attach_prior` (or none).
    spec = input_spec(config, unit_size, imbalance.logit_offsets(data), train_arg)
    return BuiltModel(module, variables["params"], extra, spec,
                      step_lib.make_predict(module, spec, extra))


def with_data(built: BuiltModel, config: ml_collections.ConfigDict,
              data: sources.DataSplits) -> BuiltModel:
    """`built` with the input spec (and `predict`) for `data`: the class prior's logit
    offsets are known only once the run's seed has drawn them."""
    spec = dataclasses.replace(built.spec, logit_offsets=tuple(
        float(v) for v in imbalance.logit_offsets(data)))
    if spec == built.spec:
        return built
    return dataclasses.replace(built, spec=spec,
                               predict=step_lib.make_predict(built.module, spec, built.extra))
