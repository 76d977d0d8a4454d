"""Checkpoints: the state by name, and the privacy record of the same step.

One checkpoint is one orbax step directory holding two items written
together: `state` (the train state as a nested dict keyed by the names in the
pytree — `params/conv0/kernel`, `opt_state/0/mu/...`, `ema_params/...`,
`step` — so a person can inspect it) and `meta` (JSON: the step, the privacy
ledger of the steps that ran, the seed and its source, the wall time).
Orbax writes the step to a temporary directory and renames it when both are
complete, so state and ledger are one record: a run killed mid-write leaves
the previous checkpoint intact and the half-written one is ignored.

The last two finished checkpoints are kept; when the latest cannot be read,
`restore` falls back to the one before it with a warning. Checkpoints hold
the seed and are as private as the data: whoever has one and the data can
remove the noise.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dpjax.errors import DpjaxError

PyTree = Any
log = logging.getLogger("dpjax")


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def to_named(tree: PyTree) -> dict:
    """A nested dict keyed by the names on each leaf's path (dict keys, fields, indices)."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = out
        names = [_key_name(p) for p in path] or ["value"]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(leaf)
    return out


def from_named(named: dict, template: PyTree) -> PyTree:
    """The inverse of `to_named`, shaped like `template`."""
    leaves = []
    for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]:
        node = named
        for name in [_key_name(p) for p in path] or ["value"]:
            node = node[name]
        leaves.append(node)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def flatten_named(named: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{"params/conv0/kernel": array, ...} of a nested named dict."""
    out = {}
    for k, v in named.items():
        if isinstance(v, dict):
            out.update(flatten_named(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def fingerprint(tree: PyTree, *extra: Any) -> str:
    """A short hash of every leaf's bytes (and of `extra`): equal trees, equal prints."""
    h = hashlib.blake2b(digest_size=12)
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.data)
    h.update(repr(extra).encode())
    return h.hexdigest()


def _is_disk_full(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return (isinstance(e, OSError) and e.errno == 28) or "RESOURCE_EXHAUSTED" in text \
        or "No space left" in text


class Checkpointer:
    """Saves and restores (state, meta) under `workdir/<subdir>`."""

    def __init__(self, workdir: str, max_to_keep: int = 2, subdir: str = "checkpoints",
                 async_save: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unreadable: set[int] = set()  # steps `restore_named` skipped as corrupt

    def latest_step(self) -> int | None:
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Writes `state` (host arrays) and `meta` as one checkpoint of step `step`.

        With asynchronous saving the arrays are copied first and written in
        the background; the step directory appears only once both items are
        complete. A full disk ends the run with one line; the previous
        checkpoint stays.
        """
        try:
            self._manager.wait_until_finished()
            if step in self._unreadable:  # the corrupt checkpoint this run fell back from
                self._manager.delete(step)
                self._unreadable.discard(step)
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(to_named(state)), meta=ocp.args.JsonSave(meta)),
                force=True)
        except Exception as e:
            self._raise_if_disk_full(e)
            raise

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished writing."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._raise_if_disk_full(e)
            raise

    def _raise_if_disk_full(self, e: BaseException) -> None:
        if _is_disk_full(e):
            raise DpjaxError(f"Disk full while writing a checkpoint to {self.directory}: "
                             "free space and rerun the same command to resume (the last "
                             "finished checkpoint is kept).") from e

    def restore_named(self, step: int | None = None) -> tuple[dict, dict, int]:
        """(named state, meta, step) of `step`, or of the latest readable checkpoint.

        Falls back to the previous finished checkpoint, with a warning, when
        the latest cannot be read.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise DpjaxError(f"{self.directory} holds no checkpoint.")
        failures = []
        for s in steps:
            try:
                restored = self._manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
                if failures:
                    self._unreadable.update(f for f, _ in failures)
                    log.warning("Checkpoint %s could not be read (%s); resumed from step %d.",
                                ", ".join(str(f) for f, _ in failures), failures[0][1], s)
                return restored["state"], restored["meta"], s
            except Exception as e:  # noqa: BLE001 — a corrupt step: try the one before
                failures.append((s, f"{type(e).__name__}: {str(e)[:200]}"))
        raise DpjaxError(f"No checkpoint in {self.directory} can be read (step "
                         f"{failures[0][0]}: {failures[0][1]}): use a new --workdir.")

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """State shaped like `template` and its meta (the latest readable if step is None)."""
        named, meta, _ = self.restore_named(step)
        try:
            return from_named(named, template), meta
        except (KeyError, TypeError) as e:
            raise DpjaxError(f"The checkpoint in {self.directory} does not match this model "
                             f"({e}): use a new --workdir.") from None

    def close(self) -> None:
        self.wait()
        self._manager.close()
