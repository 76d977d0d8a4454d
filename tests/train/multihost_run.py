"""One process of a two-process (or one-process) CPU training run (run as a script).

Usage: python multihost_run.py PROCESS_ID NUM_PROCESSES PORT WORKDIR [TFDS_DIR | default_seed]

With TFDS_DIR the same images are streamed from a TFDS array_record layout
there (data set "synthetic"), and every call that decodes examples appends
the indices it fetched to WORKDIR/fetched-PROCESS_ID.txt, one line per call.

With `default_seed` the config sets no seed (OS entropy, the default), and
every batch the process's sampler draws is appended to
WORKDIR/batches-PROCESS_ID.txt.

With DPJAX_TEST_SIGTERM=PID:STEP in the environment, process PID sends itself
SIGTERM in the middle of step STEP (after the update); a preempted process
exits with status 143.
"""

import os
import sys

pid, n, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
tfds_dir = sys.argv[5] if len(sys.argv) > 5 else ""
default_seed = tfds_dir == "default_seed"
tfds_dir = "" if default_seed else tfds_dir

from dpjax import distributed  # noqa: E402

if n > 1:
    distributed.initialize(f"127.0.0.1:{port}", n, pid)

from dpjax.config import base_config  # noqa: E402
from dpjax.train import loop  # noqa: E402
from tests.helpers import make_splits  # noqa: E402

c = base_config()
c.model.name = "mlp"  # the multi-host logic is model-agnostic; small compiles keep it fast
c.model.kwargs.width = 16
c.privacy.noise_multiplier = 1.0
c.privacy.delta = 1e-3
c.batch_size = 24
c.micro_batch_size = 8 if n > 1 else 16   # different padding and micro-batching
c.augmult = 2
c.augment.crop_padding = 1
c.augment.flip = True
c.num_steps = 4
c.seed = -1 if default_seed else 5
c.progress_bar = False
c.checkpoint_every = 2
if default_seed:
    from dpjax.privacy import sampling

    batch = sampling.PoissonSampler.batch

    def logged_batch(self, step):
        plan = batch(self, step)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, f"batches-{pid}.txt"), "a") as f:
            f.write(f"{step}: " + " ".join(map(str, plan.indices[plan.mask])) + "\n")
        return plan

    sampling.PoissonSampler.batch = logged_batch
if tfds_dir:
    from dpjax.data import tfds_records

    c.dataset.name, c.dataset.tfds_name, c.dataset.data_dir = "tfds", "synthetic", tfds_dir
    c.dataset.streaming, c.dataset.image_size = True, 8
    fetch = tfds_records.StreamingTfds.fetch

    def logged_fetch(self, indices):
        if self.split == "train":
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, f"fetched-{pid}.txt"), "a") as f:
                f.write(" ".join(str(int(i)) for i in indices) + "\n")
        return fetch(self, indices)

    tfds_records.StreamingTfds.fetch = logged_fetch
if os.environ.get("DPJAX_TEST_SIGTERM"):
    import signal

    who, when = map(int, os.environ["DPJAX_TEST_SIGTERM"].split(":"))
    loop._test_hook = lambda where, step: os.kill(os.getpid(), signal.SIGTERM) \
        if (pid, where, step) == (who, "after_update", when) else None
try:
    if tfds_dir:
        loop.train_and_evaluate(c, workdir)
    else:
        loop.train_and_evaluate(c, workdir, data=make_splits(num_train=96, num_test=16, size=8,
                                                             channels=3, seed=4))
except loop.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(143)
