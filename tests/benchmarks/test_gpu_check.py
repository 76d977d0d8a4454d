"""benchmarks/gpu_check.py on the CPU: --smoke writes both files, with every case measured."""

import io
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")
SMOKE_CASES = ["tiny_mlp_b4_fp32", "tiny_mlp_b2_k2_bf16", "dprandp_cifar10_eps1"]


def _tiny_zip(path):
    """An image-folder zip like the CIFAR-10 one: train/<class>/*.jpg, test/<class>/*.jpg."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", 14), ("test", 4)):
            for c in ("cat", "dog", "ship"):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        buf, "JPEG")
                    z.writestr(f"{split}/{c}/{i:04d}.jpg", buf.getvalue())
    return path


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("OUT", None)
    return subprocess.run([sys.executable, SCRIPT, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _read(out):
    report = json.loads((out / "gpu_check.json").read_text())
    return report, (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown_with_finite_numbers(tmp_path):
    out = tmp_path / "out"
    proc = _run("--smoke", "--out", str(out), "--zip", str(_tiny_zip(tmp_path / "tiny.zip")))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report, md = _read(out)
    assert {"format", "mode", "status", "started", "budget_s", "wall_s", "command",
            "environment", "notes", "cases"} <= set(report)
    assert report["mode"] == "smoke" and report["status"] == "complete", report
    assert report["environment"]["platform"] == "cpu" and report["environment"]["jax"]
    assert [c["name"] for c in report["cases"]] == SMOKE_CASES

    for case in report["cases"][:2]:
        assert case["status"] == "ok", case
        rows = {r["step"]: r for r in case["rows"]}
        assert {"nonprivate", "vmap", "fast"} <= set(rows)
        assert rows["nonprivate"]["ratio"] == 1.0
        for r in rows.values():
            assert r["error"] is None, r
            for key in ("examples_per_s", "seconds", "ratio", "compile_s"):
                assert _positive(r[key]), (key, r)
            assert r["repeats"] >= 2
            assert abs(r["examples_per_s"] * r["seconds"] - r["batch"]) < 1e-6 * r["batch"]

    randp = report["cases"][2]
    assert randp["status"] == "ok", randp
    assert randp["data"]["source"] == "zip" and "42 train" in randp["data"]["description"]
    assert _positive(randp["phase1"]["seconds_per_step"]) and randp["phase1"]["timed_steps"] >= 2
    private = randp["private"]
    assert private["outcome"] == "finished the requested steps"
    assert private["steps_run"] == private["requested_steps"] == 2 + 1 + 3
    assert private["phase2"]["timed_steps"] == 1 and private["phase3"]["timed_steps"] == 3
    assert all(_positive(t) for t in private["phase2"]["step_s"] + private["phase3"]["step_s"])
    proj = randp["projection"]
    parts = [proj[k]["seconds"] for k in ("phase1", "phase2", "phase3")]
    assert all(_positive(x) for x in parts) and _positive(proj["total_s"])
    assert proj["total_s"] >= sum(parts)
    assert [proj[k]["recipe_steps"] for k in ("phase1", "phase2", "phase3")] == [20, 2, 6]

    assert md.startswith("# GPU check (smoke)")
    for text in SMOKE_CASES + ["Phase I (pretrain step)", "Phase III (all)", "**total**"]:
        assert text in md


def test_a_spent_budget_still_writes_both_files(tmp_path):
    out = tmp_path / "out"
    proc = _run("--smoke", "--out", str(out), "--budget-s", "0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report, md = _read(out)
    assert report["status"] == "incomplete"
    assert [c["status"] for c in report["cases"]] == ["skipped"] * 3
    assert "time budget spent" in md
