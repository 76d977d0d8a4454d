"""`dpjax evaluate`: metrics of a run's latest checkpoint on a data split."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from dpjax.data import sources
from dpjax.errors import DpjaxError
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import loop, metrics, optim
from dpjax.train import step as step_lib


def load_run(workdir: str):
    """(config, data, model pieces, restored state, meta) of the run in `workdir`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise DpjaxError(f"{workdir} has no config.json: is it the --workdir of a dpjax run?")
    with open(path) as f:
        saved = json.load(f)
    config = ml_collections.ConfigDict(saved)
    data = sources.load(config.dataset)
    model, variables, spec = loop.build_model(config, data)
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    if checkpointer.latest_step() is None:
        raise DpjaxError(f"{workdir} has no checkpoint yet.")
    tx = optim.make_optimizer(config.optimizer, config.num_steps)
    template = step_lib.init_state(variables["params"], tx)
    state, meta = checkpointer.restore(template)
    checkpointer.close()
    return config, data, model, variables, spec, state, meta


def evaluate_workdir(workdir: str, split: str = "test") -> dict:
    """Accuracy and clinical metrics (with bootstrap CIs) of the EMA parameters.

    Metrics on the training split are computed from private data and are not
    covered by the run's ε; the result says so.
    """
    config, data, model, variables, spec, state, meta = load_run(workdir)
    extra = {k: v for k, v in variables.items() if k != "params"}
    predict = step_lib.make_predict(model, spec, extra)
    ds = data.test if split == "test" else data.train
    out = loop.evaluate_arrays(predict, state.ema_params, ds.images, ds.labels,
                               config.eval_batch_size)
    result = metrics.evaluate_predictions(ds.labels, out["probs"], data.num_classes)
    result = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
    result.update(split=split, step=int(meta["step"]), workdir=workdir)
    if split == "train":
        result["not_covered_by_epsilon"] = True
    return result
