"""1, 2 and 8 forced CPU devices give the same noiseless update for the same global batch."""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO

SCRIPT = os.path.join(os.path.dirname(__file__), "multidevice_run.py")


def _run(n, tmp_path, workdir=None, max_steps=0, sigma=0.0):
    out = tmp_path / f"params{n}_{sigma}.npz"
    env = dict(os.environ, PYTHONPATH=REPO)
    workdir = workdir or tmp_path / f"w{n}_{sigma}"
    r = subprocess.run([sys.executable, SCRIPT, str(n), str(workdir), str(out), str(sigma),
                        str(max_steps)],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if max_steps:
        return None, None
    z = np.load(out)
    return [z[k] for k in sorted(z.files) if k.startswith("arr_")], float(z["epsilon"])


def test_one_two_and_eight_devices_agree_and_resume_across_counts(tmp_path):
    # 1, 2 and 8 devices: the same model. Then two steps on one device and the rest
    # on eight (a resume on another device count): the same model and ε again.
    one, eps_one = _run(1, tmp_path)
    den = np.sqrt(sum(np.sum(a ** 2) for a in one))
    for n in (2, 8):
        other, _ = _run(n, tmp_path)
        num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one, other)))
        assert num / den < 1e-5, (n, num / den)
    _run(1, tmp_path, workdir=tmp_path / "switch", max_steps=2)
    switched, eps_switched = _run(8, tmp_path, workdir=tmp_path / "switch")
    num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one, switched)))
    assert num / den < 1e-5 and eps_one == eps_switched


def test_noise_is_the_same_draw_on_one_and_eight_devices(tmp_path):
    # σ = 1.5: the noise dominates the update, and it is added once to the global sum
    # from one shared key, so 1 and 8 devices still train the same model.
    one, _ = _run(1, tmp_path, sigma=1.5)
    eight, _ = _run(8, tmp_path, sigma=1.5)
    num = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(one, eight)))
    den = np.sqrt(sum(np.sum(a ** 2) for a in one))
    assert num / den < 1e-5
