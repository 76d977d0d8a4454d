"""Any Flax model as the linen module the trainer drives.

The trainer calls `module.init` / `module.apply({"params": ...}, x)` and takes
per-example gradients of the `params` collection. A `flax.nnx.Module` is
wrapped as a linen module whose one parameter collection entry, "nnx", holds
the nnx model's `nnx.Param` values by dotted path ("layers.0.kernel"); its
other state (e.g. batch statistics, RNG state) is carried as constants. Fast
clipping cannot see the layers inside an nnx model, so their gradients come
from its per-example fallback (exact, as slow as vmap).
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import jax


def takes_train(module: Any) -> bool:
    """Whether the model's `__call__` has a `train` argument (passed True while training)."""
    call = getattr(module, "__call__", None)
    try:
        return "train" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _flatten(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (str(k),)))
        else:
            out[".".join(prefix + (str(k),))] = v
    return out


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(int(part) if part.isdigit() else part, {})
        node[int(leaf) if leaf.isdigit() else leaf] = value
    return out


class NnxModel(nn.Module):
    """A `flax.nnx.Module` seen as a linen module (its parameters under "nnx")."""

    graphdef: Any
    param_state: Any     # nnx.State of the nnx.Param variables (template and initial values)
    rest: Any            # every other nnx variable, constant during training
    call_takes_train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        from flax import nnx

        initial = _flatten(nnx.to_pure_dict(self.param_state))
        flat = self.param("nnx", lambda rng: initial)
        state = jax.tree_util.tree_map(lambda v: v, self.param_state)
        nnx.replace_by_pure_dict(state, _unflatten(dict(flat)))
        model = nnx.merge(self.graphdef, state, self.rest)
        return model(x, train=train) if self.call_takes_train else model(x)


def as_linen(module: Any) -> nn.Module:
    """`module` if it is a linen module; an `NnxModel` wrapping it if it is an nnx one."""
    if isinstance(module, nn.Module):
        return module
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if nnx is not None and isinstance(module, nnx.Module):
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return NnxModel(graphdef, params, rest, takes_train(module))
    from dpjax.errors import ConfigError

    raise ConfigError(f"model must be a flax.linen.Module or a flax.nnx.Module mapping float NHWC "
                      f"images to logits; got {type(module).__name__}.")
