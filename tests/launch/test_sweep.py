"""The sweep launcher: run planning, gathering summaries, tables, comparison."""

import importlib.util
import json
import os

import pytest

from tests.helpers import REPO

_spec = importlib.util.spec_from_file_location("sweep", os.path.join(REPO, "launch", "sweep.py"))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_plan_runs_grid(tmp_path):
    methods = [sweep._parse_method("scratch=configs/quickstart.py"),
               sweep._parse_method("randp=configs/dprandp_quickstart.py:steps=10")]
    runs = sweep.plan_runs(methods, sweep._parse_grid(["eps=1,2"]),
                           sweep._parse_grid(["privacy.clip_norm=0.5,1"]), [0, 1], str(tmp_path))
    assert len(runs) == 2 * 2 * 2 * 2
    r = [x for x in runs if x["method"] == "randp"][0]
    assert r["config"] == "configs/dprandp_quickstart.py:steps=10,eps=1"
    assert "--config.privacy.clip_norm=0.5" in r["overrides"]
    assert len({x["workdir"] for x in runs}) == len(runs)


def test_replicates_draw_os_seeds_by_default(tmp_path):
    # `--seeds 0,1,2` labels replicates; every run draws its own seeds from OS entropy,
    # so two runs that differ only in σ (or β) never share batches or noise.
    methods = [("dpsgd", "configs/quickstart.py")]
    runs = sweep.plan_runs(methods, [], sweep._parse_grid(["privacy.noise_multiplier=1,2"]),
                           [0, 1, 2], str(tmp_path))
    assert len(runs) == 6
    for run in runs:
        assert "--config.seed=-1" in run["overrides"]
        assert "--config.ldp.seed=-1" in run["overrides"]
        assert not any(o.startswith("--config.seed=") and o != "--config.seed=-1"
                       for o in run["overrides"])
        assert run["fixed_seed"] is None and os.path.basename(run["workdir"]).endswith(
            f"rep={run['replicate']}")


def test_fixed_seeds_only_on_request_and_labelled(tmp_path):
    methods = [("dpsgd", "configs/quickstart.py")]
    runs = sweep.plan_runs(methods, [], [], [0, 1], str(tmp_path), fixed_seeds=True)
    assert [r["fixed_seed"] for r in runs] == [0, 1]
    assert "--config.seed=1" in runs[1]["overrides"] and runs[1]["workdir"].endswith("seed=1")
    assert "--config.ldp.seed=-1" in runs[1]["overrides"]  # never a shared local-DP seed
    for run in runs:
        os.makedirs(run["workdir"])
        with open(os.path.join(run["workdir"], "summary.json"), "w") as f:
            json.dump({"test_accuracy": 0.5, "epsilon": 1.0, "seed_source": "config"}, f)
    table = sweep.write_tables(sweep.gather(runs), ["dpsgd"], str(tmp_path), fixed_seeds=[0, 1])
    assert "fixed seeds 0, 1" in table and "NOT independent releases" in table
    # The default table says the runs are independent, unless a summary says otherwise.
    table = sweep.write_tables(sweep.gather(runs), ["dpsgd"], str(tmp_path))
    assert "Warning: 2 run(s) report seed_source = config" in table


@pytest.mark.parametrize("argv", [["--override", "seed=0,1"], ["--override", "ldp.seed=3"],
                                  ["--config.ldp.seed=0"], ["--config.seed=4"]])
def test_sweep_refuses_seed_settings(tmp_path, argv):
    with pytest.raises(SystemExit, match="set by the sweep"):
        sweep.main(["--workdir", str(tmp_path), "--method", "a=configs/quickstart.py",
                    "--dry_run", *argv])


def test_gather_tables_and_compare(tmp_path):
    methods = [("a", "configs/quickstart.py"), ("b", "configs/dprandp_quickstart.py")]
    runs = sweep.plan_runs(methods, sweep._parse_grid(["eps=1"]), [], [0, 1, 2], str(tmp_path))
    accuracy = {"a": [0.60, 0.62, 0.61], "b": [0.80, 0.79, 0.81]}
    for run in runs:
        os.makedirs(run["workdir"])
        with open(os.path.join(run["workdir"], "summary.json"), "w") as f:
            json.dump({"test_accuracy": accuracy[run["method"]][run["replicate"]],
                       "epsilon": 0.99, "seed_source": "os"}, f)
    rows = sweep.gather(runs)
    table = sweep.write_tables(rows, ["a", "b"], str(tmp_path))
    assert "61.0 ± 1.0 (n=3)" in table and "80.0 ± 1.0 (n=3)" in table and "0.990" in table
    assert "own seed from OS entropy" in table and "Warning" not in table
    assert (tmp_path / "results.csv").read_text().count("\n") == 2
    verdicts = sweep.compare(rows, ["a", "b"])
    assert len(verdicts) == 1 and "b wins" in verdicts[0]
    assert sweep.run_local(runs[0], []) == 0  # finished runs are skipped


def test_medical_seven_columns_table_and_plot(tmp_path):
    methods = sweep.medical_methods("configs/medical_pneumonia.py:cpu=True")
    assert [m for m, _ in methods][0] == "Original" and len(methods) == 7
    assert methods[1][1] == "configs/medical_pneumonia.py:cpu=True,mode=ldp,beta=1"
    runs = sweep.plan_runs(methods, [], [], [], str(tmp_path))
    for i, run in enumerate(runs):
        os.makedirs(run["workdir"])
        summary = {"test_accuracy": 0.9 - 0.01 * i, "train_accuracy": 0.95, "test_auroc": 0.9,
                   "epsilon": None}
        if "ldp" in run["config"]:
            beta = float(run["config"].split("beta=")[1])
            summary.update(ldp_epsilon_per_value=1 / beta, ldp_epsilon_per_pixel=1 / beta,
                           ldp_epsilon_per_image=784 / beta, ldp_labels_protected=False)
        if "dpsgd" in run["config"]:
            summary["epsilon"] = 2.0 / i
        with open(os.path.join(run["workdir"], "summary.json"), "w") as f:
            json.dump(summary, f)
    rows = sweep.gather(runs)
    table = sweep.write_paper_table(rows, [m for m, _ in methods], str(tmp_path))
    assert "LDP ε per image" in table and "784" in table and "test accuracy" in table
    assert "LDP ε per value" in table and "| labels protected by LDP | — | no | no | no |" in table
    assert "labels are not perturbed and are NOT protected by local DP" in table
    assert "--config.ldp.seed=-1" in runs[1]["overrides"]  # each β its own OS draw
    assert (tmp_path / "privacy_utility.png").stat().st_size > 1000


def test_medical_table_shows_balanced_accuracy_auroc_and_one_class_predictors(tmp_path):
    methods = sweep.medical_methods("configs/medical_pneumonia.py:cpu=True")
    runs = sweep.plan_runs(methods, [], [], [0, 1], str(tmp_path))
    for run in runs:
        os.makedirs(run["workdir"])
        dp = "dpsgd" in run["config"]
        # The DP-SGD columns answer "pneumonia" for every test image, as in the issue.
        summary = {"test_accuracy": 0.625 if dp else 0.85, "test_auroc": 0.58 if dp else 0.93,
                   "test_balanced_accuracy": 0.5 if dp else 0.8 + 0.02 * run["replicate"],
                   "one_class_predictor": dp, "epsilon": 2.0 if dp else None,
                   "class_prior_epsilon": 0.1, "wall_time_s": 100.0, "steps": 10,
                   "batch_size": 500}
        with open(os.path.join(run["workdir"], "summary.json"), "w") as f:
            json.dump(summary, f)
    names = [m for m, _ in methods]
    rows = sweep.gather(runs)
    table = sweep.write_paper_table(rows, names, str(tmp_path))
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "| 81.00 ± 1.41 |" in lines["test balanced accuracy (%)"]
    assert lines["test balanced accuracy (%)"].count("50.00 ± 0.00") == 3
    assert "0.930 ± 0.000" in lines["test AUROC"] and "0.580" in lines["test AUROC"]
    one_class = lines["one-class predictor (≥ 98 % of test images one class)"]
    assert one_class.count("yes (2/2)") == 3 and one_class.count("no") == 4
    assert "of which: class prior ε (Laplace counts)" in lines
    assert "Warning: one-class predictors" in table and "DP-SGD σ=1 (2/2 runs)" in table
    assert (tmp_path / "privacy_utility.png").stat().st_size > 1000
    results = sweep.write_tables(rows, names, str(tmp_path))
    header = results.splitlines()[0]
    for column in ("Original balanced acc. (%)", "DP-SGD σ=2 AUROC",
                   "DP-SGD σ=4 one-class predictor", "Original wall time (s)",
                   "Original examples/s"):
        assert column in header
    assert "| 50 ± 0 |" in results and "Warning: one-class predictors" in results


def test_slurm_launcher_submits_each_run(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/submitted\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    code = sweep.main(["--workdir", str(tmp_path / "w"), "--method", "a=configs/quickstart.py",
                       "--arg", "eps=1,2", "--launcher", "slurm", "--sbatch_args=--nodes=2"])
    assert code == 0
    lines = (tmp_path / "submitted").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("--nodes=2 ") for line in lines)
    assert "slurm.sbatch configs/quickstart.py:eps=1" in lines[0]
