"""Prior checkpoints: a backbone's parameters learned without private data.

A prior is a directory with `params.msgpack` (flax serialisation of the
backbone's parameters, projection head removed) and `prior.json` (how it was
made: model, generator families, steps, loss). Any private run starts from it
with `model.init_from=DIR`; parameters are matched by path and shape, and the
classifier (absent from a prior) keeps its fresh initialisation.

Writing is atomic (temporary directory, then rename), so a prior directory is
either complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import flax
import numpy as np

from dpjax.errors import DpjaxError

PyTree = Any
PARAMS_FILE = "params.msgpack"
INFO_FILE = "prior.json"


def save_prior(directory: str, params: PyTree, info: dict) -> None:
    """Writes `params` and `info` to `directory` atomically (replacing it)."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".prior-", dir=parent)
    host = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    host = {k: np.asarray(v) for k, v in host.items()}
    with open(os.path.join(tmp, PARAMS_FILE), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(host))
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def is_prior(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, PARAMS_FILE)) and os.path.isfile(
        os.path.join(directory, INFO_FILE))


def load_prior(directory: str) -> tuple[dict, dict]:
    """({path: array}, info) of a prior directory, or of a user's checkpoint file.

    A checkpoint file is an `.npz` whose keys are parameter paths such as
    `stage0_block0/conv1/kernel` (as `flax.traverse_util.flatten_dict(params,
    sep="/")` names them), e.g. converted from public pre-trained weights.
    """
    if os.path.isfile(directory) and directory.endswith(".npz"):
        try:
            with np.load(directory, allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except Exception as e:
            raise DpjaxError(f"model.init_from={directory!r} is not a readable .npz of "
                             f"parameters ({type(e).__name__}: {e}).") from None
        return flat, {"model": None, "source": "checkpoint file", "pretrained_file": directory}
    if not is_prior(directory):
        raise DpjaxError(f"model.init_from={directory!r} is not a prior directory (expected "
                         f"{PARAMS_FILE} and {INFO_FILE}; run Phase I first).")
    with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
        flat = flax.serialization.msgpack_restore(f.read())
    with open(os.path.join(directory, INFO_FILE)) as f:
        info = json.load(f)
    return flat, info


# Parameters renamed since a prior may have been made: {model: {old prefix: new prefix}}.
# The small CNN's last GroupNorm was `norm1` until it became `final_norm` (the name the
# DP linear probe trains in every zoo model).
_RENAMED = {"small_cnn": {"norm1/": "final_norm/"}}


def _renamed(prior: dict, info: dict) -> dict:
    """`prior` with the old names of `info["model"]`'s parameters replaced by today's."""
    renames = _RENAMED.get(info.get("model"), {})
    out = {}
    for path, value in prior.items():
        for old, new in renames.items():
            if path.startswith(old) and new + path[len(old):] not in prior:
                path = new + path[len(old):]
        out[path] = value
    return out


def load_into(directory: str, params: PyTree) -> tuple[PyTree, dict]:
    """`params` with every tensor the prior has (same path and shape) replaced.

    Returns the new parameters and the prior's info with the counts of
    tensors taken from the prior and kept from the fresh initialisation.

    Raises:
      DpjaxError: the prior shares no tensor with the model (a different
        architecture), or a shared path has a different shape.
    """
    prior, info = load_prior(directory)
    prior = _renamed(prior, info)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    loaded = 0
    for path, value in flat.items():
        if path in prior:
            if tuple(prior[path].shape) != tuple(value.shape):
                raise DpjaxError(f"Prior {directory}: {path} has shape {prior[path].shape}, the "
                                 f"model expects {value.shape}: the prior was made for "
                                 f"model {info.get('model')!r}.")
            flat[path] = np.asarray(prior[path], dtype=value.dtype)
            loaded += 1
    if not loaded:
        raise DpjaxError(f"Prior {directory} (model {info.get('model')!r}) shares no parameter "
                         "with this model: set model.name to the prior's model.")
    name = "pretrained_checkpoint" if info.get("pretrained_file") else "phase1_prior"
    summary = dict(info, name=name, steps=0, epsilon=0.0, tensors_loaded=loaded,
                   tensors_fresh=len(flat) - loaded, path=os.path.abspath(directory))
    return flax.traverse_util.unflatten_dict(flat, sep="/"), summary
