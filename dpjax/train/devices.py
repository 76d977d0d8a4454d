"""The device mesh of a run, and moving arrays onto it and back.

Training is data-parallel over one `Mesh` of every device of every host,
with one axis, "data":

  * the train state (parameters, optimiser state, EMA) is replicated:
    `NamedSharding(mesh, P())`, one copy per device, no leading device axis;
  * each micro-batch is one global array sharded along "data"
    (`P("data")`): every host supplies only its own rows
    (`jax.make_array_from_process_local_data`);
  * each device's partial clipped sum lives in an array with a leading
    device axis sharded along "data" until the update sums it (`psum`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
AXIS = "data"


@functools.lru_cache(maxsize=1)
def mesh() -> Mesh:
    """Every device of every host on one "data" axis (hosts' devices contiguous)."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (AXIS,))


def replicated_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P())


def data_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P(AXIS))


def replicate(tree: PyTree) -> PyTree:
    """Host arrays (the same on every host) as arrays replicated on every device."""
    sharding = replicated_sharding()

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def to_host(tree: PyTree) -> PyTree:
    """This host's copy of replicated arrays, as numpy (works on any number of hosts)."""
    def first(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree_util.tree_map(first, tree)


def host_rows(global_rows: int) -> slice:
    """The rows of a `global_rows`-row array sharded along "data" that this host holds."""
    index_map = data_sharding().addressable_devices_indices_map((global_rows,))
    starts = sorted(idx[0].start or 0 for idx in index_map.values())
    stops = sorted(global_rows if idx[0].stop is None else idx[0].stop
                   for idx in index_map.values())
    return slice(starts[0], stops[-1])


def global_batch(local: PyTree, global_rows: int) -> PyTree:
    """This host's rows (leading axis) as one global array sharded along "data"."""
    sharding = data_sharding()
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(
            sharding, np.asarray(x), (global_rows,) + np.shape(x)[1:]), local)
