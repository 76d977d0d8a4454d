"""The README's quickstart reaches its accuracy at ε = 4 within the time budget."""

import json
import os
import subprocess
import sys
import time

from tests.helpers import REPO


def test_quickstart_accuracy_and_time(tmp_path):
    workdir = tmp_path / "quickstart"
    start = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "dpjax.cli", "train", "--config", "configs/quickstart.py",
         "--workdir", str(workdir), "--config.progress_bar=False", "--config.seed=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=REPO))
    elapsed = time.time() - start
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.load(open(workdir / "summary.json"))
    assert summary["epsilon"] <= 4.0 and summary["delta"] == 1e-5
    assert summary["num_train"] == 1437 and summary["num_test"] == 360
    assert summary["test_accuracy"] >= 0.88, summary["test_accuracy"]
    assert elapsed < 180, elapsed
