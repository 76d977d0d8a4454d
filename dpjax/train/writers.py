"""Metric writers: JSON lines and TensorBoard event files (no TensorFlow needed)."""

from __future__ import annotations

import json
import logging
import math
import os

log = logging.getLogger("dpjax")

# Metrics computed from the private training set. They are NOT covered by the
# run's ε: showing them to a person releases information about the data.
NOT_COVERED_BY_EPSILON = ("train_loss", "train_accuracy", "clipped_fraction",
                          "nonfinite_examples", "realised_batch_size")


class MetricWriter:
    """Appends `{"step": s, ...}` records to metrics.jsonl and TensorBoard."""

    def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
        """`enabled=False` (non-primary hosts of a cluster) writes nothing."""
        self._enabled = enabled
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self._tb = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self._enabled:
            return
        from dpjax.train.workdir import strict_json

        record = strict_json({"step": step, **metrics})
        private = [k for k in metrics if k in NOT_COVERED_BY_EPSILON]
        if private:
            record["not_covered_by_epsilon"] = private
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """tqdm progress bar (step, loss, ε so far, examples/s) on process 0, or plain log lines.

    Other processes of a cluster show nothing: one voice per cluster.
    """

    def __init__(self, config, start: int, total: int):
        import jax

        self._bar = None
        self._quiet = jax.process_index() != 0
        if config.progress_bar and not self._quiet:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc=config.name, unit="step",
                             dynamic_ncols=True)
        self._pos = start

    def update(self, step: int, metrics: dict) -> None:
        shown = {}
        if metrics.get("train_loss") is not None:
            shown["loss"] = f"{metrics['train_loss']:.3f}"
        if metrics.get("epsilon") is not None:
            shown["eps"] = f"{metrics['epsilon']:.3f}"
        shown["ex/s"] = f"{metrics['examples_per_s']:.0f}"
        if self._bar is not None:
            self._bar.update(step - self._pos)
            self._bar.set_postfix(shown, refresh=False)
        elif not self._quiet:
            log.info("step %d %s", step, " ".join(f"{k}={v}" for k, v in shown.items()))
        self._pos = step

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        elif not self._quiet:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
