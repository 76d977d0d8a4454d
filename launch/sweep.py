#!/usr/bin/env python3
"""The sweep launcher: a grid of runs over methods, config arguments and replicates.

Each method is a config (with its own `:key=value` variant arguments); the
grid adds more variant arguments (`--arg eps=1,2`) and replicates. Every run
is a `dpjax train` in its own workdir (so a sweep resumes: finished runs are
skipped, interrupted ones resume), and at the end the runs' `summary.json`
files are gathered into one table, mean ± std over replicates, one column
per method, as Markdown and CSV.

    # DP-RandP against DP-SGD from scratch at the same ε, 3 replicates each:
    python launch/sweep.py --workdir runs/randp_vs_scratch \
        --method "DP-SGD from scratch=configs/quickstart.py" \
        --method "DP-RandP=configs/dprandp_quickstart.py" \
        --arg eps=1,2 --seeds 0,1,2

    # Any config field on the grid, too:
    python launch/sweep.py --workdir runs/clip --method dpsgd=configs/quickstart.py \
        --override privacy.clip_norm=0.5,1,2 --seeds 0,1

Seeds. Every run draws its own seed from OS entropy (`--config.seed=-1`,
`--config.ldp.seed=-1` on its command line): its Poisson batches, its
DP-SGD noise and its local-DP Laplace noise are independent of every other
run's, so each run is an independent release. `--seeds 0,1,2` (alias
`--replicates`) only LABELS the replicates (run directories `rep=0`, ...;
the table's mean ± std). `--fixed_seeds` turns the labels into fixed
`--config.seed=S` (directories `seed=S`): a debugging option. Runs that
share a fixed seed share their batches and noise draws — two runs that
differ only in σ give away the noiseless gradient sums — so they are not
independent releases, and the tables say so. The local-DP seed is never
fixed by a sweep: the β columns would share one draw, and 2·y₁ − y₂ gives
the image back.

The ε column is taken from the runs' summaries (the accountant's ε for what
ran), never recomputed here.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence


def _parse_method(text: str) -> tuple[str, str]:
    if "=" not in text:
        return os.path.splitext(os.path.basename(text.split(":")[0]))[0], text
    name, spec = text.split("=", 1)
    return name.strip(), spec.strip()


def _parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"sweep: {item!r} must be KEY=V1,V2,...")
        grid.append((key.strip(), [v.strip() for v in values.split(",")]))
    return grid


# Seed settings a sweep decides itself (see the module docstring).
_SEED_FIELDS = ("seed", "ldp.seed")


def _run_dir(workdir: str, method: str, point: dict, replicate, fixed_seeds: bool) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in method)
    parts = [f"{k.replace('.', '_')}={v}" for k, v in point.items()]
    if replicate is not None:
        parts.append(f"{'seed' if fixed_seeds else 'rep'}={replicate}")
    return os.path.join(workdir, safe, ",".join(parts) or "default")


def check_no_seed_settings(override_grid, extra: Sequence[str] = ()) -> None:
    """Refuses seeds set through `--override` or extra `--config.` arguments."""
    keys = [k for k, _ in override_grid]
    keys += [a[len("--config."):].split("=", 1)[0] for a in extra if a.startswith("--config.")]
    for key in keys:
        if key in _SEED_FIELDS:
            raise SystemExit(f"sweep: {key} is set by the sweep: every run draws its seeds from "
                             "OS entropy; --fixed_seeds fixes config.seed to the replicate label "
                             "(debugging); a fixed ldp.seed is for single debugging runs "
                             "(dpjax train --config.ldp.seed=S), never for a sweep.")


def plan_runs(methods, args_grid, override_grid, replicates, workdir,
              fixed_seeds: bool = False) -> list[dict]:
    """Every (method, grid point, replicate) as a run dict.

    Keys: method, point, replicate (the label, or None), fixed_seed (the
    fixed config.seed with `fixed_seeds`, else None: the run draws an OS
    seed), config, overrides, workdir. Every run gets `--config.ldp.seed=-1`
    and, unless `fixed_seeds`, `--config.seed=-1`, so a config file's fixed
    seed cannot make runs share their randomness.
    """
    check_no_seed_settings(override_grid)
    runs = []
    keys = [k for k, _ in args_grid] + [k for k, _ in override_grid]
    values = [v for _, v in args_grid] + [v for _, v in override_grid]
    arg_keys = {k for k, _ in args_grid}
    for name, spec in methods:
        for combo in itertools.product(*values) if values else [()]:
            point = dict(zip(keys, combo))
            config_args = [f"{k}={v}" for k, v in point.items() if k in arg_keys]
            path, _, base_args = spec.partition(":")
            all_args = ",".join(a for a in [base_args] + config_args if a)
            overrides = [f"--config.{k}={v}" for k, v in point.items() if k not in arg_keys]
            for rep in replicates or [None]:
                fixed = int(rep) if fixed_seeds and rep is not None else None
                seeds = [f"--config.seed={-1 if fixed is None else fixed}", "--config.ldp.seed=-1"]
                runs.append({
                    "method": name, "point": point, "replicate": rep, "fixed_seed": fixed,
                    "config": f"{path}:{all_args}" if all_args else path,
                    "overrides": overrides + seeds,
                    "workdir": _run_dir(workdir, name, point, rep, fixed_seeds),
                })
    return runs


def run_local(run: dict, extra: Sequence[str]) -> int:
    """Runs one training job here (skipped when its summary exists)."""
    if os.path.isfile(os.path.join(run["workdir"], "summary.json")):
        return 0
    cmd = [sys.executable, "-m", "dpjax.cli", "train", "--config", run["config"],
           "--workdir", run["workdir"], "--config.progress_bar=False", *run["overrides"],
           *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def submit_slurm(run: dict, extra: Sequence[str], sbatch_args: Sequence[str]) -> int:
    """Submits one run as a SLURM job through launch/slurm.sbatch (does not wait)."""
    if os.path.isfile(os.path.join(run["workdir"], "summary.json")):
        return 0
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm.sbatch")
    cmd = ["sbatch", *sbatch_args, script, run["config"], run["workdir"], *run["overrides"],
           *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) \
        if len(values) > 1 else 0.0
    return mean, std


def gather(runs: list[dict], metric: str = "test_accuracy") -> list[dict]:
    """One row per grid point: per method, mean/std of `metric` and of ε over replicates."""
    rows = {}
    for run in runs:
        path = os.path.join(run["workdir"], "summary.json")
        summary = json.load(open(path)) if os.path.isfile(path) else None
        key = tuple(sorted(run["point"].items()))
        row = rows.setdefault(key, {"point": run["point"], "methods": {}})
        cell = row["methods"].setdefault(run["method"], {"values": [], "eps": [], "missing": 0})
        if summary is None:
            cell["missing"] += 1
            continue
        cell["values"].append(summary.get(metric))
        cell["eps"].append(summary.get("epsilon"))
        for extra in ("ldp_epsilon_per_value", "ldp_epsilon_per_pixel", "ldp_epsilon_per_image",
                      "train_accuracy", "test_accuracy", "test_auroc", "test_balanced_accuracy",
                      "one_class_predictor", "class_prior_epsilon", "epsilon_training_alone",
                      "wall_time_s", "seed_source", "ldp_seed_source"):
            if summary.get(extra) is not None:
                cell.setdefault(extra, []).append(summary[extra])
        if summary.get("wall_time_s") and summary.get("steps") and summary.get("batch_size"):
            # Whole run, compile and evaluation included; from the (public) expected batch.
            cell.setdefault("examples_per_s", []).append(
                summary["steps"] * summary["batch_size"] / summary["wall_time_s"])
    out = []
    for row in rows.values():
        for cell in row["methods"].values():
            cell["mean"], cell["std"] = _mean_std(cell["values"])
            cell["epsilon"] = max((e for e in cell["eps"] if e is not None), default=None)
        out.append(row)
    return out


def _fmt(mean, std, n):
    if mean is None:
        return "—"
    return f"{100 * mean:.1f} ± {100 * std:.1f} (n={n})" if n > 1 else f"{100 * mean:.1f}"


def seed_notes(rows: list[dict], fixed_seeds: Sequence[int] = ()) -> list[str]:
    """What the tables must say about where the runs' randomness came from."""
    notes = []
    if fixed_seeds:
        notes.append(f"Runs with fixed seeds {', '.join(str(s) for s in fixed_seeds)} "
                     "(--fixed_seeds, a debugging option): runs that share a fixed seed share "
                     "their batches and noise draws, so they are NOT independent releases "
                     "(two of them that differ only in σ give away the noiseless sums).")
    else:
        notes.append("Every run drew its own seed from OS entropy: the runs are independent "
                     "releases (rep=K only labels the replicate).")
    cells = [c for row in rows for c in row["methods"].values()]
    fixed = sum(c.get("seed_source", []).count("config") for c in cells)
    if fixed and not fixed_seeds:
        notes.append(f"Warning: {fixed} run(s) report seed_source = config (a fixed seed): "
                     "they are not independent releases.")
    fixed_ldp = sum(c.get("ldp_seed_source", []).count("config") for c in cells)
    if fixed_ldp:
        notes.append(f"Warning: {fixed_ldp} local-DP run(s) report ldp_seed_source = config "
                     "(a fixed ldp.seed, debugging only): their noise can be regenerated and "
                     "subtracted by whoever knows the seed.")
    return notes


def _values(cell, key):
    return [v for v in cell.get(key, []) if v is not None]


def _fmt_stat(cell, key, scale=1.0, digits=1):
    """mean ± std (n) of a per-run value, or "—"."""
    values = _values(cell, key)
    if not values:
        return "—"
    mean, std = _mean_std(values)
    if len(values) == 1:
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _fmt_one_class(cell, key="one_class_predictor"):
    flags = _values(cell, key)
    if not flags:
        return "—"
    return f"yes ({sum(flags)}/{len(flags)})" if any(flags) else "no"


# (summary key, column label, formatter) shown beside the chosen metric.
SIDE_COLUMNS = (
    ("test_balanced_accuracy", "balanced acc. (%)", lambda c, k: _fmt_stat(c, k, 100)),
    ("test_auroc", "AUROC", lambda c, k: _fmt_stat(c, k, 1, 3)),
    ("one_class_predictor", "one-class predictor", _fmt_one_class),
    ("wall_time_s", "wall time (s)", lambda c, k: _fmt_stat(c, k, 1, 0)),
    ("examples_per_s", "examples/s", lambda c, k: _fmt_stat(c, k, 1, 0)),
)


def one_class_notes(rows: list[dict]) -> list[str]:
    """A warning naming the runs that predicted one class for (almost) every test image."""
    flagged = []
    for row in rows:
        for method, cell in row["methods"].items():
            flags = _values(cell, "one_class_predictor")
            if any(flags):
                where = f"{method} {row['point']}" if row["point"] else method
                flagged.append(f"{where} ({sum(flags)}/{len(flags)} runs)")
    if not flagged:
        return []
    return ["Warning: one-class predictors (one class for >= 98 % of the test images; their "
            "accuracy is that class's share of the test set and their balanced accuracy about "
            "0.5): " + "; ".join(flagged) + "."]


def write_tables(rows: list[dict], methods: Sequence[str], workdir: str,
                 metric: str = "test_accuracy", fixed_seeds: Sequence[int] = ()) -> str:
    """Writes results.md and results.csv in `workdir`; returns the Markdown.

    `fixed_seeds`: the fixed seeds the runs were given (`--fixed_seeds`), if
    any; the Markdown then says that runs sharing a seed are not
    independent releases.
    """
    point_keys = list(rows[0]["point"]) if rows else []
    cells_all = [c for row in rows for c in row["methods"].values()]
    # Beside the metric: balanced accuracy and AUROC (when the runs report them) and time.
    side = [(key, label, fmt) for key, label, fmt in SIDE_COLUMNS
            if key != metric and any(c.get(key) for c in cells_all)]
    header = point_keys + [f"{m} {metric} (%)" for m in methods] + [
        f"{m} {label}" for _, label, _ in side for m in methods] + [f"{m} ε" for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(point_keys + [f"{m}_{k}" for m in methods
                                      for k in ("mean", "std", "n", "epsilon")])
        for row in rows:
            cells = [row["methods"].get(m, {}) for m in methods]
            eps = [c.get("epsilon") for c in cells]
            lines.append("| " + " | ".join(
                [str(row["point"][k]) for k in point_keys]
                + [_fmt(c.get("mean"), c.get("std"), len(c.get("values", []))) for c in cells]
                + [fmt(c, key) for key, _, fmt in side for c in cells]
                + ["non-private" if e is None else f"{e:.3f}" for e in eps]) + " |")
            writer.writerow([row["point"][k] for k in point_keys] + [
                x for c in cells for x in (c.get("mean"), c.get("std"),
                                           len(c.get("values", [])), c.get("epsilon"))])
    table = "\n".join(lines + [""] + one_class_notes(rows) + seed_notes(rows, fixed_seeds)) + "\n"
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    return table


def compare(rows: list[dict], methods: Sequence[str]) -> list[str]:
    """For two methods: does the second beat the first by more than the replicate spread?"""
    if len(methods) != 2:
        return []
    a, b = methods
    verdicts = []
    for row in rows:
        ca, cb = row["methods"].get(a, {}), row["methods"].get(b, {})
        if ca.get("mean") is None or cb.get("mean") is None:
            continue
        diff = cb["mean"] - ca["mean"]
        spread = max(ca["std"], cb["std"])
        verdict = "wins" if diff > spread else "does not win"
        verdicts.append(f"{row['point']}: {b} − {a} = {100 * diff:+.1f} points, replicate "
                        f"spread (largest std) {100 * spread:.1f}: {b} {verdict}")
    return verdicts


# --- Singh et al. (2020)'s seven columns --------------------------------------

MEDICAL_COLUMNS = (("Original", "mode=original"),
                   ("LDP β=1", "mode=ldp,beta=1"), ("LDP β=2", "mode=ldp,beta=2"),
                   ("LDP β=4", "mode=ldp,beta=4"),
                   ("DP-SGD σ=1", "mode=dpsgd,sigma=1"), ("DP-SGD σ=2", "mode=dpsgd,sigma=2"),
                   ("DP-SGD σ=4", "mode=dpsgd,sigma=4"))


def medical_methods(spec: str) -> list[tuple[str, str]]:
    """The paper's seven columns as (name, config spec) for a medical config."""
    path, _, base = spec.partition(":")
    return [(name, f"{path}:{','.join(a for a in (base, extra) if a)}")
            for name, extra in MEDICAL_COLUMNS]


def _mean(cell, key):
    values = [v for v in cell.get(key, []) if v is not None]
    return sum(values) / len(values) if values else None


LDP_LABELS_NOTE = ("Local DP (the LDP columns) adds Laplace noise to the training images' "
                   "pixels only: the labels are not perturbed and are NOT protected by local "
                   "DP. LDP ε is per stored value (Δ/β), per pixel (channels·Δ/β) and per "
                   "image (d·Δ/β for the d values perturbed).")


def write_paper_table(rows: list[dict], methods: Sequence[str], workdir: str,
                      fixed_seeds: Sequence[int] = ()) -> str:
    """The paper's layout (rows: train/test accuracy; columns: the methods) with ε added."""
    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]

    def line(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(row["methods"].get(m, {}))
                                                  for m in methods) + " |")

    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    for row in rows:
        if row["point"]:
            lines.append(f"| **{row['point']}** |" + " |" * len(methods))
        line("train accuracy (%, not covered by ε)", lambda c: pct(_mean(c, "train_accuracy")))
        line("test accuracy (%)", lambda c: _fmt(c.get("mean"), c.get("std"),
                                                  len(c.get("values", []))))
        line("test balanced accuracy (%)",
             lambda c: _fmt_stat(c, "test_balanced_accuracy", 100, 2))
        line("test AUROC", lambda c: _fmt_stat(c, "test_auroc", 1, 3))
        line("one-class predictor (≥ 98 % of test images one class)", _fmt_one_class)
        line("DP-SGD ε (δ = 1e-5, PLD; with the class prior's)",
             lambda c: "—" if c.get("epsilon") is None else f"{c['epsilon']:.2f}")
        line("of which: class prior ε (Laplace counts)",
             lambda c: "—" if _mean(c, "class_prior_epsilon") is None or c.get("epsilon") is None
             else f"{_mean(c, 'class_prior_epsilon'):.2f}")
        line("LDP ε per value", lambda c: "—" if _mean(c, "ldp_epsilon_per_value") is None
             else f"{_mean(c, 'ldp_epsilon_per_value'):.2f}")
        line("LDP ε per pixel", lambda c: "—" if _mean(c, "ldp_epsilon_per_pixel") is None
             else f"{_mean(c, 'ldp_epsilon_per_pixel'):.2f}")
        line("LDP ε per image", lambda c: "—" if _mean(c, "ldp_epsilon_per_image") is None
             else f"{_mean(c, 'ldp_epsilon_per_image'):,.0f}")
        line("labels protected by LDP", lambda c: "—" if _mean(c, "ldp_epsilon_per_image")
             is None else "no")
    table = "\n".join(lines + ["", LDP_LABELS_NOTE] + one_class_notes(rows)
                      + seed_notes(rows, fixed_seeds)) + "\n"
    with open(os.path.join(workdir, "paper_table.md"), "w") as f:
        f.write(table)
    _plot(rows, methods, os.path.join(workdir, "privacy_utility.png"))
    return table


PLOT_METRICS = (("test_accuracy", "test accuracy (%)", 100.0),
                ("test_balanced_accuracy", "test balanced accuracy (%)", 100.0),
                ("test_auroc", "test AUROC", 1.0))


def _plot(rows, methods, path) -> None:
    """Accuracy, balanced accuracy and AUROC against ε per example (DP-SGD ε; LDP ε per
    image), log scale; one-class predictors drawn as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label, scale) in zip(axes, PLOT_METRICS):
        for row in rows[:1]:
            for i, m in enumerate(methods):
                c = row["methods"].get(m, {})
                value = c.get("mean") if key == "test_accuracy" and not c.get(key) \
                    else _mean(c, key)
                if value is None:
                    continue
                one_class = any(_values(c, "one_class_predictor"))
                name = f"{m} (one class!)" if one_class else m
                eps = c.get("epsilon") if c.get("epsilon") is not None else _mean(
                    c, "ldp_epsilon_per_image")
                if eps is None:
                    ax.axhline(scale * value, linestyle="--", color="gray",
                               label=f"{name} (no privacy)")
                else:
                    marker = "x" if one_class else ("o" if m.startswith("DP-SGD") else "s")
                    ax.scatter([eps], [scale * value], marker=marker, label=name,
                               color=f"C{i}")
        if key == "test_balanced_accuracy":
            ax.axhline(50.0, linestyle=":", color="red", linewidth=0.8,
                       label="one class / chance (binary)")
        elif key == "test_auroc":
            ax.axhline(0.5, linestyle=":", color="red", linewidth=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("ε per example (DP-SGD; LDP: per image = d·Δ/β)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    axes[2].legend(fontsize=6)
    fig.suptitle("labels are not protected by LDP; crosses: one-class predictors", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--method", action="append", default=[],
                        help="NAME=configs/X.py[:k=v,...] (repeatable)")
    parser.add_argument("--medical", default="",
                        help="configs/medical_*.py[:k=v]: Singh et al.'s seven columns")
    parser.add_argument("--arg", action="append", default=[],
                        help="config argument grid KEY=V1,V2 (repeatable)")
    parser.add_argument("--override", action="append", default=[],
                        help="config field grid FIELD=V1,V2 (repeatable)")
    parser.add_argument("--seeds", "--replicates", dest="replicates", default="",
                        help="comma-separated replicate labels (0,1,2): each run draws its own "
                             "seed from OS entropy; the labels name run directories and group "
                             "the table")
    parser.add_argument("--fixed_seeds", action="store_true",
                        help="debugging: use the labels as fixed config.seed values; runs "
                             "sharing a seed are not independent releases (the tables say so)")
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--dry_run", action="store_true", help="print the runs and stop")
    parser.add_argument("--launcher", default="local", choices=("local", "slurm"),
                        help="local: run here one after another; slurm: sbatch each run")
    parser.add_argument("--sbatch_args", default="",
                        help="extra sbatch arguments: --sbatch_args='--nodes=2 --gpus-per-node=8'")
    parser.add_argument("--gather_only", action="store_true",
                        help="only gather finished runs' summaries into the tables")
    args, extra = parser.parse_known_args(argv)
    methods = [_parse_method(m) for m in args.method]
    if args.medical:
        methods += medical_methods(args.medical)
    if not methods:
        parser.error("give --method or --medical")
    replicates = [int(s) for s in args.replicates.split(",") if s.strip()]
    if args.fixed_seeds and not replicates:
        parser.error("--fixed_seeds needs --seeds S1,S2,...")
    check_no_seed_settings([], extra)
    runs = plan_runs(methods, _parse_grid(args.arg), _parse_grid(args.override), replicates,
                     args.workdir, fixed_seeds=args.fixed_seeds)
    fixed = replicates if args.fixed_seeds else []
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "sweep.json"), "w") as f:
        json.dump(runs, f, indent=2)
    if args.dry_run:
        for run in runs:
            print(run["workdir"], run["config"], " ".join(run["overrides"]))
        return 0
    if args.gather_only:
        failed = []
    elif args.launcher == "slurm":
        failed = [r for r in runs if submit_slurm(r, extra, args.sbatch_args.split()) != 0]
        print("submitted; when the jobs are done, rerun with --gather_only for the tables")
        return 1 if failed else 0
    else:
        failed = [r for r in runs if run_local(r, extra) != 0]
    names = [n for n, _ in methods]
    rows = gather(runs, args.metric)
    print(write_tables(rows, names, args.workdir, args.metric, fixed))
    if args.medical:
        print(write_paper_table(rows, names, args.workdir, fixed))
    for line in compare(rows, names):
        print(line)
    if failed:
        print(f"sweep: {len(failed)} run(s) failed: " + ", ".join(r["workdir"] for r in failed),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
