"""Trains a few steps on N forced CPU devices and saves the parameters (run as a script).

Usage: python multidevice_run.py NUM_DEVICES WORKDIR OUT.npz SIGMA [MAX_STEPS_THIS_RUN]
"""

import os
import sys

n = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dpjax.config import base_config  # noqa: E402
from dpjax.train import loop  # noqa: E402
from tests.helpers import make_splits  # noqa: E402

assert jax.local_device_count() == n, jax.devices()
c = base_config()
c.model.name = "mlp"  # the device logic is model-agnostic; small compiles keep the test fast
c.model.kwargs.width = 16
c.privacy.noise_multiplier = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
c.privacy.delta = 1e-3
c.batch_size = 24
c.micro_batch_size = {1: 16, 2: 8, 8: 4}[n]  # different padding and micro-batching
c.augmult = 2
c.augment.crop_padding = 1
c.augment.flip = True
c.num_steps = 3
c.seed = 11
c.progress_bar = False
c.optimizer.learning_rate = 0.5
data = make_splits(num_train=96, num_test=16, size=8, seed=4)
if c.privacy.noise_multiplier == 0:
    c.privacy.noise_multiplier = 1e-30  # effectively noiseless, still the private path
max_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 0
summary = loop.train_and_evaluate(c, sys.argv[2], data=data, max_steps_this_run=max_steps)
if not summary["finished"]:
    sys.exit(0)
leaves = jax.tree_util.tree_leaves(summary["final_params"])
np.savez(sys.argv[3], *[np.asarray(x) for x in leaves], epsilon=summary["epsilon"])
