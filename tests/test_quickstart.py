"""The README's quickstart reaches its accuracy at ε = 4.

How long it takes is a benchmark's business, not this test's: on a loaded
2-core machine the run has taken over 250 s. The subprocess timeout below
only catches a hung run.
"""

import json
import os
import subprocess
import sys

from tests.helpers import REPO


def test_quickstart_accuracy(tmp_path):
    workdir = tmp_path / "quickstart"
    r = subprocess.run(
        [sys.executable, "-m", "dpjax.cli", "train", "--config", "configs/quickstart.py",
         "--workdir", str(workdir), "--config.progress_bar=False", "--config.seed=0"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.load(open(workdir / "summary.json"))
    assert summary["epsilon"] <= 4.0 and summary["delta"] == 1e-5
    assert summary["num_train"] == 1437 and summary["num_test"] == 360
    assert summary["test_accuracy"] >= 0.88, summary["test_accuracy"]
