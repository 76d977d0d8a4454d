"""One process of a two-process (or one-process) CPU training run (run as a script).

Usage: python multihost_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
"""

import sys

pid, n, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

from dpjax import distributed  # noqa: E402

if n > 1:
    distributed.initialize(f"127.0.0.1:{port}", n, pid)

from dpjax.config import base_config  # noqa: E402
from dpjax.train import loop  # noqa: E402
from tests.helpers import make_splits  # noqa: E402

c = base_config()
c.model.name = "small_cnn"
c.model.kwargs.width = 8
c.privacy.noise_multiplier = 1.0
c.privacy.delta = 1e-3
c.batch_size = 24
c.micro_batch_size = 8 if n > 1 else 16   # different padding and micro-batching
c.augmult = 2
c.augment.crop_padding = 1
c.augment.flip = True
c.num_steps = 4
c.seed = 5
c.progress_bar = False
c.checkpoint_every = 2
loop.train_and_evaluate(c, workdir, data=make_splits(num_train=96, num_test=16, size=8, seed=4))
