"""Two processes joined by jax.distributed train the same model one process would.

The one-process run reads the data from memory; the two-process run streams
the same images from a TFDS array_record layout, each host decoding only its
own rows of each Poisson batch.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from dpjax.data import tfds_records
from dpjax.privacy.sampling import PoissonSampler
from dpjax.train import checkpoint as checkpoint_lib
from tests.helpers import REPO, make_splits

SCRIPT = os.path.join(os.path.dirname(__file__), "multihost_run.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(workdir):
    ckpt = checkpoint_lib.Checkpointer(str(workdir))
    args = checkpoint_lib.ocp.args
    restored = ckpt._manager.restore(ckpt.latest_step(), args=args.Composite(
        state=args.StandardRestore(), meta=args.JsonRestore()))
    return restored["state"], restored["meta"]


def _write_tfds(data_dir):
    """The splits multihost_run.py uses, as lossless PNGs in a TFDS layout."""
    import io

    from PIL import Image

    splits = make_splits(num_train=96, num_test=16, size=8, channels=3, seed=4)

    def png(a):
        out = io.BytesIO()
        Image.fromarray(a).save(out, format="PNG")
        return out.getvalue()

    tfds_records.write_prepared(
        str(data_dir), "synthetic",
        {s: ([png(a) for a in getattr(splits, s).images], getattr(splits, s).labels)
         for s in ("train", "test")}, splits.class_names, num_shards=2, image_format="png")


def test_two_processes_match_one(tmp_path):
    _write_tfds(tmp_path / "tfds")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = subprocess.run([sys.executable, SCRIPT, "0", "1", "0", str(tmp_path / "one")], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", port, str(tmp_path / "two"),
                               str(tmp_path / "tfds")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    a, meta_a = _state(tmp_path / "one")
    b, meta_b = _state(tmp_path / "two")
    num = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a if a[k].dtype.kind == "f"))
    den = np.sqrt(sum(np.sum(a[k] ** 2) for k in a if a[k].dtype.kind == "f"))
    assert num / den < 1e-5
    assert meta_a["ledger"] == meta_b["ledger"] and meta_a["seed"] == meta_b["seed"]
    sa = json.load(open(tmp_path / "one" / "summary.json"))
    sb = json.load(open(tmp_path / "two" / "summary.json"))
    assert sa["epsilon"] == sb["epsilon"]

    # Each host decoded only its own rows: per micro-batch the two hosts' indices are
    # disjoint, and together they are exactly the examples the sampler drew.
    lines = [open(tmp_path / "two" / f"fetched-{i}.txt").read().splitlines() for i in range(2)]
    assert len(lines[0]) == len(lines[1]) > 0
    fetched = []
    for a_line, b_line in zip(*lines):
        a_idx, b_idx = set(map(int, a_line.split())), set(map(int, b_line.split()))
        assert not a_idx & b_idx
        fetched += sorted(a_idx | b_idx)
    sampler = PoissonSampler(96, 24, 16, int(meta_b["seed"]) % (2**63))
    drawn = []
    for step in range(4):
        batch = sampler.batch(step)
        drawn += [sorted(batch.indices[m][batch.mask[m]].tolist())
                  for m in range(batch.num_micro_batches)]
    assert fetched == [i for m in drawn for i in m]
