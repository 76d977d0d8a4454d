"""Evaluation: accuracy and clinical metrics of parameters on a split.

Used by the training loop (periodic and final evaluation) and by
`dpjax evaluate` (the metrics of a run's latest checkpoint). Metrics on the
training split are computed from private data and are not covered by ε;
results say so.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from dpjax.data import sources
from dpjax.errors import DpjaxError
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import devices, metrics
from dpjax.train import model as model_lib

TRAIN_METRICS_NOTE = ("train_* metrics are computed on the private training set and are NOT "
                      "covered by epsilon.")


def _rows(ds, indices: np.ndarray) -> np.ndarray:
    """uint8 images of `indices` (all valid) from a split in memory or streamed."""
    if isinstance(ds, sources.ArrayDataset):
        return ds.images[indices]
    return ds.fetch(indices)[0]


def predict_probs(predict, params, ds, batch_size: int) -> np.ndarray:
    """Class probabilities (float64, (N, classes)) of `params` on split `ds`.

    Data-parallel over every device of every host: each chunk of the split is
    one global batch, each host decodes and predicts only its own rows, and the
    logits are gathered back to every host.
    """
    n = len(ds)
    if n == 0:
        return np.zeros((0, 1))
    params = _on_devices(params)
    d = jax.device_count()
    chunk = -(-min(batch_size, n) // d) * d      # one compiled shape, a multiple of devices
    rows = devices.host_rows(chunk)
    probs = []
    for start in range(0, n, chunk):
        idx = np.arange(start + rows.start, start + rows.stop)
        valid = idx < n
        images = np.zeros((len(idx),) + tuple(ds.image_shape), np.uint8)
        images[valid] = _rows(ds, idx[valid])
        logits = predict(params, devices.global_batch(images, chunk))
        logits = _gather(logits)[: min(chunk, n - start)]
        probs.append(np.asarray(jax.nn.softmax(np.asarray(logits, np.float64), -1)))
    return np.concatenate(probs)


def _on_devices(params):
    leaves = jax.tree_util.tree_leaves(params)
    if leaves and all(isinstance(x, jax.Array) and len(x.sharding.device_set) ==
                      jax.device_count() for x in leaves):
        return params
    return devices.replicate(devices.to_host(params))


def _gather(x: jax.Array) -> np.ndarray:
    """A global array's full value on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy; None for an empty split (never NaN in a JSON file)."""
    if len(labels) == 0:
        return None
    return float(np.mean(np.argmax(probs, -1) == labels))


def evaluate_params(predict, params, ema_params, ds, batch_size: int, ema: bool,
                    with_probs: bool = False) -> dict:
    """{"accuracy" (EMA parameters when EMA is on), "accuracy_raw"[, "probs"]}."""
    main = predict_probs(predict, ema_params, ds, batch_size)
    raw = predict_probs(predict, params, ds, batch_size) if ema else main
    out = {"accuracy": accuracy(main, ds.labels), "accuracy_raw": accuracy(raw, ds.labels)}
    if with_probs:
        out["probs"] = main
    return out


def clinical_metrics(config: ml_collections.ConfigDict, data: sources.DataSplits, test_probs,
                     predict, params) -> dict:
    """Test metrics with bootstrap CIs; train metrics (only with train_metrics) marked."""
    out = {}
    test = metrics.evaluate_predictions(
        data.test.labels, test_probs, data.num_classes, ordinal=config.metrics.ordinal,
        num_resamples=config.metrics.bootstrap_resamples)
    out.update({f"test_{k}": v for k, v in test.items()})
    if "quadratic_weighted_kappa" in test:
        out["test_kappa"] = test["quadratic_weighted_kappa"]
    if config.train_metrics:
        probs = predict_probs(predict, params, data.train, config.eval_batch_size)
        train = metrics.classification_metrics(data.train.labels, probs, data.num_classes,
                                               ordinal=config.metrics.ordinal)
        out.update({f"train_{k}": v for k, v in train.items()})
        out["train_metrics_note"] = TRAIN_METRICS_NOTE
    return out


def evaluate_workdir(workdir: str, split: str = "test") -> dict:
    """`dpjax evaluate`: metrics (bootstrap CIs) of the latest checkpoint's EMA parameters."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise DpjaxError(f"{workdir} has no config.json: is it the --workdir of a dpjax run?")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except ValueError as e:
        raise DpjaxError(f"{path} is not valid JSON ({e}).") from None
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise DpjaxError(f"{workdir} has no checkpoint yet.")
    data = sources.load(config.dataset)
    built = model_lib.build(config, data)
    named, meta, step = checkpoint_lib.Checkpointer(workdir).restore_named()
    params = checkpoint_lib.from_named(named["ema_params"], built.params)
    ds = data.test if split == "test" else data.train
    probs = predict_probs(built.predict, params, ds, config.eval_batch_size)
    result = metrics.evaluate_predictions(ds.labels, probs, data.num_classes)
    result = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
    result.update(split=split, step=int(step), workdir=workdir)
    if split == "train":
        result["not_covered_by_epsilon"] = True
    return result
