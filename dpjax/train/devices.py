"""Placing arrays on this host's devices, and reading them back.

The steps run data-parallel over every local device of every host: replicated
state has one copy per local device (a leading device axis), and each device
gets its own rows of every micro-batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

PyTree = Any


def _local_sharding() -> jax.sharding.NamedSharding:
    devices = jax.local_devices()
    return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("d",)),
                                      jax.sharding.PartitionSpec("d"))


def to_devices(tree: PyTree) -> PyTree:
    """Leaves with a leading local-device axis, one slice per local device."""
    sharding = _local_sharding()
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: PyTree) -> PyTree:
    """A copy of every leaf on every local device (stacked on a leading axis)."""
    n = jax.local_device_count()
    return to_devices(jax.tree_util.tree_map(
        lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree))


def unreplicate(tree: PyTree) -> PyTree:
    """This host's first copy of a replicated pytree, as numpy."""
    def first(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_shards[0].data)[0]
        return np.asarray(x[0])

    return jax.tree_util.tree_map(first, tree)
