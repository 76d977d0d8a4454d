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
from dpjax.train import metrics
from dpjax.train import model as model_lib

TRAIN_METRICS_NOTE = ("train_* metrics are computed on the private training set and are NOT "
                      "covered by epsilon.")


def _chunk(ds, start: int, stop: int) -> np.ndarray:
    if isinstance(ds, sources.ArrayDataset):
        return ds.images[start:stop]
    return ds.fetch(range(start, min(stop, len(ds))))[0]


def predict_probs(predict, params, ds, batch_size: int) -> np.ndarray:
    """Class probabilities (float64, (N, classes)) of `params` on split `ds`."""
    probs = []
    n = len(ds)
    for start in range(0, n, batch_size):
        chunk = _chunk(ds, start, start + batch_size)
        pad = batch_size - len(chunk) if n > batch_size else 0
        if pad:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        logits = np.asarray(predict(params, chunk))[: len(chunk) - pad]
        probs.append(np.asarray(jax.nn.softmax(logits.astype(np.float64), -1)))
    return np.concatenate(probs) if probs else np.zeros((0, 1))


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
