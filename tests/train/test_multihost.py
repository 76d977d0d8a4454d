"""Two processes joined by jax.distributed train the same model one process would."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from dpjax.train import checkpoint as checkpoint_lib
from tests.helpers import REPO

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


def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    one = subprocess.run([sys.executable, SCRIPT, "0", "1", "0", str(tmp_path / "one")], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT, str(i), "2", port, str(tmp_path / "two")],
                              env=env, cwd=REPO, stdout=subprocess.PIPE,
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
