"""benchmarks/seed_table.py: the statistics it prints are those of the runs it reads."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks import seed_table  # noqa: E402


def _run(path, acc, bal, auroc, eps=1.0, wall=100.0):
    os.makedirs(path)
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(dict(test_accuracy=acc, test_balanced_accuracy=bal, test_auroc=auroc,
                       epsilon=eps, wall_time_s=wall, steps=10, batch_size=100), f)


def test_mean_sd_range_and_unfinished(tmp_path):
    _run(tmp_path / "a_1", 0.5, 0.6, 0.7)
    _run(tmp_path / "a_2", 0.7, 0.8, 0.9, wall=300.0)
    os.makedirs(tmp_path / "a_3")  # no summary.json: unfinished
    lines = seed_table.table([("A", str(tmp_path / "a_*")), ("B", str(tmp_path / "b_*"))])
    assert lines[2] == ("| A | 2 (1 unfinished) | 1.00 | 60.0 ± 14.1 (50.0–70.0) | "
                        "0.700 ± 0.141 (0.600–0.800) | 0.800 ± 0.141 (0.700–0.900) | "
                        "200 ± 141 (100–300) | 7 ± 5 (3–10) |")
    assert lines[3].startswith("| B | 0 |")


def test_comma_separated_globs_name_an_exact_subset(tmp_path):
    for name, acc in [("x", 0.4), ("x_run2", 0.5), ("x_run3", 0.6), ("x_run4", 0.9)]:
        _run(tmp_path / name, acc, acc, acc)
    base = str(tmp_path / "x")
    subset = seed_table.table([("S", f"{base},{base}_run[23],{base}")])[2]
    assert subset.startswith("| S | 3 | 1.00 | 50.0 ± 10.0 (40.0–60.0) |")
    assert seed_table.table([("All", base + "*")])[2].startswith("| All | 4 |")
