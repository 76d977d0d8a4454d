"""8 forced CPU devices give the same update as 1 (noise is added once, from one key)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

SCRIPT = os.path.join(os.path.dirname(__file__), "multidevice_run.py")


def _run(n, tmp_path, sigma):
    out = tmp_path / f"params{n}_{sigma}.npz"
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, SCRIPT, str(n), str(tmp_path / f"w{n}_{sigma}"), str(out),
                    str(sigma)], check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    z = np.load(out)
    return [z[k] for k in sorted(z.files) if k.startswith("arr_")], float(z["epsilon"])


@pytest.mark.parametrize("sigma", [0.0, 1.5])
def test_eight_devices_match_one(tmp_path, sigma):
    one, eps1 = _run(1, tmp_path, sigma)
    eight, eps8 = _run(8, tmp_path, sigma)
    num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one, eight)))
    den = np.sqrt(sum(np.sum(a ** 2) for a in one))
    assert num / den < 1e-5
    assert eps1 == eps8
