"""Training: the loop and its modules — and `dpjax.train(...)` itself.

`dpjax.train` is both this package (`dpjax.train.loop`, `dpjax.train.step`,
...) and the library's entry point: calling the package,
`dpjax.train(config, workdir, model=..., data=...)`, runs
`loop.train_and_evaluate`. (A package cannot otherwise be called; its module
class is given a `__call__`.)
"""

from __future__ import annotations

import sys
import types
from typing import Any


def train(config: Any, workdir: str, *, model: Any = None, data: Any = None,
          max_steps_this_run: int = 0) -> dict:
    """Trains `model` (any Flax module; default: `config.model.name`) with DP-SGD as configured.

    Args:
      config: a config built on `dpjax.config.base_config()`.
      workdir: where checkpoints, metrics and summary.json go; a run there resumes.
      model: a `flax.linen.Module` or `flax.nnx.Module` mapping float NHWC images to
        logits (a `train` argument, if it has one, is True in training steps); it is
        checked for DP compatibility (nothing may mix the examples of a batch).
      data: `dpjax.data.from_arrays(...)` (or any `DataSplits`); default: `config.dataset`.
      max_steps_this_run: if > 0, checkpoint and return after this many steps.

    Returns:
      The summary (what `summary.json` holds), with the test probabilities.
    """
    from dpjax.train import loop

    return loop.train_and_evaluate(config, workdir, data=data, model=model,
                                   max_steps_this_run=max_steps_this_run)


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
