"""1, 2 and 8 forced CPU devices give the same noiseless update for the same global batch."""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO

SCRIPT = os.path.join(os.path.dirname(__file__), "multidevice_run.py")


def _run(n, tmp_path):
    out = tmp_path / f"params{n}.npz"
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, SCRIPT, str(n), str(tmp_path / f"w{n}"), str(out), "0"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    z = np.load(out)
    return [z[k] for k in sorted(z.files) if k.startswith("arr_")], float(z["epsilon"])


def test_one_two_and_eight_devices_agree(tmp_path):
    one, _ = _run(1, tmp_path)
    den = np.sqrt(sum(np.sum(a ** 2) for a in one))
    for n in (2, 8):
        other, _ = _run(n, tmp_path)
        num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one, other)))
        assert num / den < 1e-5, (n, num / den)
