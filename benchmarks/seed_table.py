#!/usr/bin/env python3
"""A markdown table of repeated runs: mean ± sd and the range over seeds, per row.

    python benchmarks/seed_table.py \
        "DP-SGD, ε = 1=runs/report/dpsgd_eps1*" "DP-SGD, ε = 8=runs/report/dpsgd_eps8*"

Each argument is `LABEL=GLOB[,GLOB...]`; the globs match run workdirs (a
`summary.json` in each; unfinished runs are counted as missing; a workdir
matched twice counts once), so `"A=runs/x_eps1,runs/x_eps1_run[23]"` names
three seeds exactly while `runs/x_eps1*` would take every one. Columns: runs, ε (the
largest of the row's runs), test accuracy, balanced accuracy and AUROC
(mean ± sd over runs, then min–max), wall time and examples/s (mean; steps ×
expected batch / wall time, compilation and evaluation included). The
summaries are read through `launch/sweep.py`'s `gather`, as the sweep's own
tables are.
"""

from __future__ import annotations

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launch import sweep  # noqa: E402


def _stat(cell: dict, key: str, scale: float, digits: int) -> str:
    values = [v for v in cell.get(key, []) if v is not None]
    if not values:
        return "—"
    mean, std = sweep._mean_std(values)  # noqa: SLF001 — the sweep's own statistics
    if len(values) == 1:
        return f"{scale * mean:.{digits}f}"
    return (f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f} "
            f"({scale * min(values):.{digits}f}–{scale * max(values):.{digits}f})")


def table(rows: list[tuple[str, str]]) -> list[str]:
    out = ["| run | runs | ε | accuracy (%) | balanced accuracy | AUROC | wall time (s) | "
           "examples/s |", "|---|---|---|---|---|---|---|---|"]
    for label, pattern in rows:
        dirs = sorted({d for p in pattern.split(",") if p for d in glob.glob(p)
                       if os.path.isdir(d)})
        cell = sweep.gather([{"workdir": d, "point": {}, "method": label} for d in dirs]
                            )[0]["methods"][label] if dirs else {"values": [], "missing": 0}
        n = len(cell["values"])
        eps = cell.get("epsilon")
        missing = f" ({cell['missing']} unfinished)" if cell.get("missing") else ""
        out.append(f"| {label} | {n}{missing} | {'∞' if eps is None else f'{eps:.2f}'} | "
                   f"{_stat(cell, 'test_accuracy', 100, 1)} | "
                   f"{_stat(cell, 'test_balanced_accuracy', 1, 3)} | "
                   f"{_stat(cell, 'test_auroc', 1, 3)} | {_stat(cell, 'wall_time_s', 1, 0)} | "
                   f"{_stat(cell, 'examples_per_s', 1, 0)} |")
    return out


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(table([tuple(a.rsplit("=", 1)) for a in argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
