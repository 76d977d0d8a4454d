"""The `dpjax` command: train, account, evaluate, generate, ...

    dpjax train   --config configs/quickstart.py --workdir runs/quickstart
    dpjax account --config configs/cifar10_wrn16_4.py:eps=1
    dpjax evaluate --workdir runs/quickstart [--split test|train]

Any config field can be overridden with `--config.FIELD=VALUE` (e.g.
`--config.privacy.target_epsilon=2`). A user's mistake ends the command with
one line naming the field or file and the fix, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from dpjax.errors import DpjaxError


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` (or `--config.a.b v`) from the other arguments."""
    rest, overrides = [], []
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise DpjaxError(f"{arg} needs a value: {arg}=VALUE.")
                body = f"{body}={argv[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


class _Parser(argparse.ArgumentParser):
    """argparse, except that a mistake is one line (a DpjaxError), not usage + error."""

    def error(self, message: str):
        raise DpjaxError(f"{self.prog}: {message} (see {self.prog} --help).")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dpjax", description="Differentially private image classification in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train (and resume) from a config file")
    train.add_argument("--config", required=True, help="configs/NAME.py[:key=value,...]")
    train.add_argument("--workdir", required=True, help="output directory (resumed if present)")
    train.add_argument("--max_steps_this_run", type=int, default=0,
                       help="checkpoint and stop after this many steps (rerun to resume)")
    train.add_argument("--coordinator_address", default=None,
                       help="multi-host: HOST:PORT of process 0 (else env / SLURM / TPU)")
    train.add_argument("--num_processes", type=int, default=None)
    train.add_argument("--process_id", type=int, default=None)

    account = sub.add_parser("account", help="print σ and ε for a config without training")
    account.add_argument("--config", required=True)
    account.add_argument("--num_examples", type=int, default=0,
                         help="N, the training set's size (default: the published size of a "
                         "known TFDS set, else the data's)")

    evaluate = sub.add_parser("evaluate", help="evaluate a finished or interrupted run")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="test", choices=("test", "train"))

    pretrain = sub.add_parser("pretrain", help="DP-RandP Phase I only: write DIR/prior")
    pretrain.add_argument("--config", required=True)
    pretrain.add_argument("--workdir", required=True)

    audit = sub.add_parser("audit", help="empirical privacy audit (canaries; a fresh workdir)")
    audit.add_argument("--config", required=True)
    audit.add_argument("--workdir", required=True)
    audit.add_argument("--canaries", type=int, default=0,
                       help="number of canaries m (default 4000 for iterates, 1000 otherwise)")
    audit.add_argument("--kind", default="iterates", choices=("iterates", "gradient", "input"),
                       help="iterates: white-box over all steps (Nasr et al. 2023); gradient / "
                       "input: one run, final model (Steinke et al. 2023)")
    audit.add_argument("--control", default=None,
                       help="negative control: noise_off, clip_off, sampling_x2 or "
                       "noise_scale=X (the claimed epsilon then no longer holds)")
    audit.add_argument("--seed", type=int, default=-1,
                       help="the auditor's coins: -1 = OS entropy; fixed = debugging")

    ldp_grid = sub.add_parser("ldp_grid", help="PNG: training images at the original and "
                              "at local-DP noise scales (Singh et al. Figure 2)")
    ldp_grid.add_argument("--config", required=True)
    ldp_grid.add_argument("--out", required=True)
    ldp_grid.add_argument("--scales", default="1,2,4", help="Laplace scales β on [0, 1]")
    ldp_grid.add_argument("--num_images", type=int, default=4)
    ldp_grid.add_argument("--seed", type=int, default=-1,
                          help="-1 (default): noise from OS entropy, each column its own draw; "
                               "S >= 0: a fixed seed, for debugging only (anyone who knows S "
                               "can subtract the noise from the figure)")

    generate = sub.add_parser("generate", help="write a grid of random-process samples")
    generate.add_argument("--config", required=True)
    generate.add_argument("--out", required=True, help="PNG path")
    generate.add_argument("--per_family", type=int, default=8)
    generate.add_argument("--resolution", type=int, default=0,
                          help="default: the config's pretrain.resolution")
    generate.add_argument("--seed", type=int, default=0)
    return parser


def _cmd_train(args, overrides) -> int:
    from dpjax import config as config_lib
    from dpjax import distributed

    config = config_lib.load_config(args.config, overrides)
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    _one_voice()
    from dpjax.train import loop

    summary = loop.train_and_evaluate(config, args.workdir,
                                      max_steps_this_run=args.max_steps_this_run)
    if not summary["finished"]:
        print(f"stopped at step {summary['step']} (ε so far {summary['epsilon']}); rerun the "
              "same command to resume.")
        return 0
    eps, acc = summary["epsilon"], summary["test_accuracy"]
    eps_text = "non-private" if eps is None else f"ε = {eps:.3f}, δ = {summary['delta']:g}"
    acc_text = "none (empty test split)" if acc is None else f"{acc:.4f}"
    print(f"test accuracy {acc_text} ({eps_text}); "
          f"summary: {os.path.join(args.workdir, 'summary.json')}")
    return 0


def _one_voice() -> None:
    """On a cluster only process 0 logs progress; the others log warnings and errors."""
    import jax

    if jax.process_index() != 0:
        logging.getLogger("dpjax").setLevel(logging.WARNING)


def _cmd_account(args, overrides) -> int:
    from dpjax import config as config_lib
    from dpjax import validate
    from dpjax.data import registry
    from dpjax.train import loop

    config = config_lib.load_config(args.config, overrides)
    if args.num_examples:
        num_examples = validate.positive_int("--num_examples", args.num_examples)
    else:  # a known public set needs no data on this machine
        num_examples = registry.published_train_size(config.dataset, config.privacy.unit)
    result = loop.account(config, num_examples=num_examples)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_evaluate(args, overrides) -> int:
    from dpjax.train import evaluate

    result = evaluate.evaluate_workdir(args.workdir, split=args.split)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_pretrain(args, overrides) -> int:
    from dpjax import config as config_lib
    from dpjax.randp import pretrain
    from dpjax.train import workdir as workdir_lib

    config = config_lib.load_config(args.config, overrides)
    config_lib.validate(config)
    work = workdir_lib.Workdir(args.workdir).open()  # a directory we may write, locked
    try:
        path = pretrain.pretrain(config, work.path, seed=max(config.seed, 0))
    finally:
        work.close()
    print(f"prior written to {path} (no private data used; ε = 0)")
    return 0


def _cmd_audit(args, overrides) -> int:
    from dpjax import config as config_lib
    from dpjax.train import audit

    config = config_lib.load_config(args.config, overrides)
    canaries = args.canaries if args.canaries != 0 else (4000 if args.kind == "iterates"
                                                         else 1000)
    report = audit.run_audit(config, args.workdir, num_canaries=canaries, kind=args.kind,
                             control=args.control, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_ldp_grid(args, overrides) -> int:
    from dpjax import config as config_lib
    from dpjax import validate
    from dpjax.data import sources
    from dpjax.privacy import ldp, randomness

    randomness.check_seed("--seed", args.seed)
    scales = validate.comma_floats("--scales", args.scales, positive=True,
                                   fix="give Laplace scales β on [0, 1], e.g. --scales 1,2,4")
    validate.positive_int("--num_images", args.num_images)
    config = config_lib.load_config(args.config, overrides)
    data = sources.load(config.dataset)
    images = data.train.images[: args.num_images]
    if data.info.get(ldp.GREY_TO_RGB_KEY) == "all":
        images = images[..., :1]  # grey repeated into RGB: perturb the grey value once
    # Not config.ldp.seed: the figure draws its own noise, from OS entropy
    # unless --seed fixes it; each column is an independent draw.
    seed, source = randomness.shared_seed(args.seed)
    grid = ldp.comparison_grid(images, scales, seed)
    del seed
    ldp.save_png(args.out, grid)
    for beta in scales:
        report = ldp.ldp_report(ldp.LaplaceMechanism(beta), images.shape[1:])
        print(f"β = {beta:g}: ε per value {report['ldp_epsilon_per_value']:g}, per pixel "
              f"{report['ldp_epsilon_per_pixel']:g}, per image "
              f"{report['ldp_epsilon_per_image']:g} (labels are not protected)")
    noise = ("OS entropy, an independent draw per column" if source == "os" else
             f"FIXED --seed {args.seed} (debugging only: whoever knows it can subtract the "
             "noise; do not publish this figure as private)")
    print(f"{args.out}: columns original, " + ", ".join(f"β={b:g}" for b in scales)
          + f"; noise from {noise}")
    return 0


def _cmd_generate(args, overrides) -> int:
    import jax

    from dpjax import config as config_lib
    from dpjax import validate
    from dpjax.data import random_processes

    validate.positive_int("--per_family", args.per_family)
    validate.non_negative_int("--resolution", args.resolution,
                              fix="give the side in pixels, or 0 for pretrain.resolution")
    validate.non_negative_int("--seed", args.seed)
    config = config_lib.load_config(args.config, overrides)
    families = random_processes.FAMILIES
    resolution = args.resolution or config.pretrain.resolution
    grid = random_processes.sample_grid(jax.random.key(args.seed), families, args.per_family,
                                        resolution)
    random_processes.save_grid_png(args.out, grid)
    print(f"{args.out}: rows {', '.join(families)}; {args.per_family} samples each at "
          f"{resolution}x{resolution}")
    return 0


_HANDLERS = {"train": _cmd_train, "account": _cmd_account, "evaluate": _cmd_evaluate,
             "pretrain": _cmd_pretrain, "generate": _cmd_generate, "audit": _cmd_audit,
             "ldp_grid": _cmd_ldp_grid}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = _split_overrides(argv)
        args = _parser().parse_args(rest)
        return _HANDLERS[args.command](args, overrides)
    except DpjaxError as e:
        print(f"dpjax: error: {' '.join(str(e).split())}", file=sys.stderr)
        # 128 + SIGTERM for a preempted run, so cluster schedulers requeue it.
        return 143 if type(e).__name__ == "Preempted" else 2
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug, with its traceback
            raise
        print(f"dpjax: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
