"""Input: from the sampler's batch of step t to micro-batches on the devices.

The plan's sampler decides which examples step t uses (from the run's seed and
t alone, the same on every host). This module only moves them:

  * in-memory training sets are copied to every device once, and each step
    gathers its rows there (no host-to-device copy per step);
  * streamed sets (`dataset.streaming=True`) are fetched row by row by each
    host for ITS rows only, one step ahead, in a background thread that also
    copies them to the devices (device-side prefetch);
  * with `privacy.unit=patient` each sampled "example" is a patient: all of
    that patient's images, padded to the largest patient (label −1 slots).

Padding rows of a micro-batch hold example 0 and are masked out; they
contribute exactly zero to the clipped sum.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.data import sources
from dpjax.data import streaming as streaming_lib
from dpjax.errors import ConfigError
from dpjax.privacy.sampling import BatchPlan, PoissonSampler
from dpjax.train import devices as devices_lib


def privacy_units(unit: str, data: sources.DataSplits) -> np.ndarray | None:
    """For `privacy.unit=patient`: (P, K) image indices of each patient, −1 padded.

    The sampler then samples patients and each patient's summed gradient is
    clipped once, so ε is per patient. None for per-example privacy.
    """
    if unit == "example":
        return None
    ids = data.info.get("train_patient_ids")
    if ids is None:
        raise ConfigError(f"privacy.unit=patient needs patient ids, and {data.name} has none "
                          "(the Kermany chest X-ray loader provides them): use "
                          "privacy.unit=example, which protects single images only.")
    ids = np.asarray(ids, np.int64)
    if ids.shape != (len(data.train),):
        raise ConfigError(f"{data.name}: {ids.shape[0]} patient ids for {len(data.train)} "
                          "training images.")
    counts = np.bincount(ids)
    table = -np.ones((len(counts), int(counts.max())), np.int32)
    fill = np.zeros(len(counts), np.int64)
    for image, patient in enumerate(ids):
        table[patient, fill[patient]] = image
        fill[patient] += 1
    return table[counts > 0]


class TrainInput:
    """Micro-batches of each step as global arrays sharded over the mesh's "data" axis.

    Args:
      train: the training split (in memory or streamed).
      sampler: the plan's sampler (all hosts hold the same one); its
        micro-batch size is the global one (per-device size × devices).
      units: the patient table of `privacy_units`, or None.
    """

    def __init__(self, train, sampler: PoissonSampler, units: np.ndarray | None = None):
        from jax.sharding import PartitionSpec as P

        self.train = train
        self.sampler = sampler
        self.global_rows = sampler.micro_batch_size
        self.host_rows = devices_lib.host_rows(self.global_rows)
        self.streaming = not isinstance(train, sources.ArrayDataset)
        if self.streaming and units is not None:
            raise ConfigError("privacy.unit=patient needs dataset.streaming=False.")
        if self.streaming:
            self._prefetcher = streaming_lib.Prefetcher(self._fetch_step)
            return
        # The whole (in-memory) training set on every device; each device gathers its rows.
        self._images = devices_lib.replicate(train.images)
        self._labels = devices_lib.replicate(train.labels.astype(np.int32))
        rep, data = P(), P(devices_lib.AXIS)
        mesh = devices_lib.mesh()
        if units is None:
            gather = lambda x, y, i: (x[i], y[i])
            self._gather = jax.jit(jax.shard_map(gather, mesh=mesh, in_specs=(rep, rep, data),
                                                 out_specs=(data, data), check_vma=False))
        else:  # a privacy unit's images; padded slots get label −1
            table = devices_lib.replicate(units)
            gather = lambda x, y, i, t: (x[t[i]], jnp.where(t[i] >= 0, y[t[i]], -1))
            unit_gather = jax.jit(jax.shard_map(gather, mesh=mesh,
                                                in_specs=(rep, rep, data, rep),
                                                out_specs=(data, data), check_vma=False))
            self._gather = functools.partial(lambda g, t, x, y, i: g(x, y, i, t), unit_gather,
                                             table)

    def _rows(self, batch: BatchPlan, m: int) -> tuple[np.ndarray, np.ndarray]:
        """This host's (indices, mask) of micro-batch m."""
        return batch.indices[m, self.host_rows], batch.mask[m, self.host_rows]

    def _fetch_step(self, step: int):
        """Streaming: decode this host's rows of every micro-batch of `step`, onto the devices."""
        batch = self.sampler.batch(step)
        out = []
        for m in range(batch.num_micro_batches):
            idx, mask = self._rows(batch, m)
            images = np.zeros((len(idx),) + tuple(self.train.image_shape), np.uint8)
            labels = np.zeros((len(idx),), np.int32)
            images[mask], labels[mask] = self.train.fetch(idx[mask])
            out.append(devices_lib.global_batch((images, labels), self.global_rows))
        return batch, out

    def step(self, step: int, num_steps: int) -> tuple[BatchPlan, Iterator[tuple]]:
        """(the batch plan, an iterator of global (images, labels, indices, mask) arrays)."""
        if self.streaming:
            batch, fetched = self._prefetcher.get(step, step + 1 if step + 1 < num_steps
                                                  else None)
        else:
            batch, fetched = self.sampler.batch(step), None

        def micro_batches():
            for m in range(batch.num_micro_batches):
                idx, mask = devices_lib.global_batch(self._rows(batch, m), self.global_rows)
                if fetched is not None:
                    images, labels = fetched[m]
                else:
                    images, labels = self._gather(self._images, self._labels, idx)
                yield images, labels, idx, mask

        return batch, micro_batches()

    def close(self) -> None:
        if self.streaming:
            self._prefetcher.close()
