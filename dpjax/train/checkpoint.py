"""Checkpoints: orbax for the arrays, JSON for what the accountant needs.

Each checkpoint holds the train state (unreplicated, host numpy) and a JSON
record with the step, the privacy ledger (the (σ, q, steps) that actually
ran), the seed and its source, the wall time so far, and a fingerprint of the
config. Orbax writes each step to a temporary directory and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact and
the half-written one is ignored on restore.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dpjax.errors import DpjaxError

PyTree = Any


def _as_leaf_dict(tree: PyTree) -> dict:
    """{"00000": leaf, ...}: the structure comes from the caller's template on
    restore, so optimiser states of any pytree type round-trip exactly."""
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}


class Checkpointer:
    """Saves and restores (state, meta) under `workdir/checkpoints`."""

    def __init__(self, workdir: str, max_to_keep: int = 2, subdir: str = "checkpoints"):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        self._manager.reload()
        return self._manager.latest_step()

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Writes a complete checkpoint of `state` (a host pytree) and `meta`."""
        state = _as_leaf_dict(state)
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
            self._manager.wait_until_finished()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DpjaxError(f"Disk full while writing a checkpoint to {self.directory}: "
                                 "free space and rerun the same command to resume.") from e
            raise

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """Restores state shaped like `template` and its meta (latest if step is None)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_as_leaf_dict(template)),
            meta=ocp.args.JsonRestore()))
        leaves = [restored["state"][k] for k in sorted(restored["state"])]
        treedef = jax.tree_util.tree_structure(template)
        return jax.tree_util.tree_unflatten(treedef, leaves), restored["meta"]

    def close(self) -> None:
        self._manager.close()
