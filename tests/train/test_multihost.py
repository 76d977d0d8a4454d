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
from dpjax.privacy import randomness
from dpjax.privacy.sampling import PoissonSampler
from dpjax.train import checkpoint as checkpoint_lib
from tests.helpers import REPO, make_splits

SCRIPT = os.path.join(os.path.dirname(__file__), "multihost_run.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(workdir):
    named, meta, _ = checkpoint_lib.Checkpointer(str(workdir)).restore_named()
    return checkpoint_lib.flatten_named(named), meta


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


def _two_processes(workdir, last_arg, expect=0, **env_extra):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **env_extra)
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", port, str(workdir),
                               last_arg], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == expect, err[-3000:]


def _one_process(workdir):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = subprocess.run([sys.executable, SCRIPT, "0", "1", "0", str(workdir)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]


def test_a_signal_to_one_host_stops_both_at_the_same_step(tmp_path):
    """SIGTERM reaches process 1 only, mid-step 1: both save step 2 and exit 143; the
    resumed pair ends with the model and ε of a run never interrupted."""
    _two_processes(tmp_path / "two", "", expect=143, DPJAX_TEST_SIGTERM="1:1")
    state, meta = _state(tmp_path / "two")
    assert meta["step"] == 2 and int(state["step"]) == 2
    _two_processes(tmp_path / "two", "")
    _one_process(tmp_path / "one")
    a, meta_a = _state(tmp_path / "one")
    b, meta_b = _state(tmp_path / "two")
    num = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a if a[k].dtype.kind == "f"))
    den = np.sqrt(sum(np.sum(a[k] ** 2) for k in a if a[k].dtype.kind == "f"))
    assert num / den < 1e-5 and meta_a["ledger"] == meta_b["ledger"]
    sa = json.load(open(tmp_path / "one" / "summary.json"))
    sb = json.load(open(tmp_path / "two" / "summary.json"))
    assert sa["epsilon"] == sb["epsilon"]


def test_default_os_seed_is_shared_by_all_hosts(tmp_path):
    """No seed in the config: one OS seed for the cluster, the same batches, one model."""
    _two_processes(tmp_path / "w", "default_seed")
    batches = [open(tmp_path / "w" / f"batches-{i}.txt").read().splitlines() for i in range(2)]
    assert batches[0] and batches[0] == batches[1]
    summary = json.load(open(tmp_path / "w" / "summary.json"))
    prints = summary["replica_fingerprints"]
    assert summary["seed_source"] == "os" and len(prints) == 2 and prints[0] == prints[1]


def test_two_processes_match_one(tmp_path):
    _write_tfds(tmp_path / "tfds")
    _one_process(tmp_path / "one")
    _two_processes(tmp_path / "two", str(tmp_path / "tfds"))
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
    sampler = PoissonSampler(96, 24, 16, randomness.derive_seed(int(meta_b["seed"]), "sampling"))
    drawn = []
    for step in range(4):
        batch = sampler.batch(step)
        drawn += [sorted(batch.indices[m][batch.mask[m]].tolist())
                  for m in range(batch.num_micro_batches)]
    assert fetched == [i for m in drawn for i in m]
