"""Metric writers: JSON lines and TensorBoard event files (no TensorFlow needed)."""

from __future__ import annotations

import json
import math
import os

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
        record = {"step": step, **metrics}
        private = [k for k in metrics if k in NOT_COVERED_BY_EPSILON]
        if private:
            record["not_covered_by_epsilon"] = private
        self._jsonl.write(json.dumps(record) + "\n")
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
