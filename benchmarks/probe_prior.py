#!/usr/bin/env python3
"""How much a Phase I prior gives a linear classifier: a non-private diagnostic.

DP-RandP (Tang et al.) helps only if its prior's features separate the
classes better than the features of a freshly initialised backbone: Phase II
is a DP linear probe on them. This script measures exactly that, without
privacy, on the training split of a tuning data set (never on a split a
number is reported on): the backbone's classifier input (the flattened map of
the small CNN, the pooled map of the others) for a fresh initialisation and
for each prior given, standardised, then multinomial logistic regression
(full-batch Adam, L2, class-balanced) fitted on the training split and scored on the test
split of the config's data set.

    python benchmarks/probe_prior.py \
        --config configs/dprandp_cifar10_cpu.py:path=.data/cifar10-val.zip \
        --prior runs/c10cpu/val/randp_eps2_p1500/prior

With `--dp_epsilon` it also fits the same features with DP-SGD (Poisson
sampling, per-example clipping, Gaussian noise; σ from dpjax's accountant) at
each `--dp_grid` batch size, step count and learning rate: the ceiling of
Phase II (the DP linear probe) when its steps cost nothing, since the
features of a frozen backbone need computing once.

It spends privacy of whatever data it reads (the standardisation and the
non-private fit are not private; the DP fit's ε is not reported anywhere):
run it on a tuning copy (benchmarks/make_cifar_val.py,
benchmarks/make_standin.py), never on data whose test numbers are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dpjax.config import load_config  # noqa: E402
from dpjax.data import sources  # noqa: E402
from dpjax.errors import DpjaxError  # noqa: E402
from dpjax.privacy import accounting, clipping  # noqa: E402
from dpjax.randp import priors  # noqa: E402
from dpjax.train import metrics  # noqa: E402
from dpjax.train import model as model_lib  # noqa: E402
from dpjax.train import step as step_lib  # noqa: E402


def features(built: model_lib.BuiltModel, params, ds, flatten: bool,
             batch: int = 1000, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 (n, D) classifier inputs, labels) of `limit` random (or all) examples."""
    @jax.jit
    def fmap(p, images):
        x = step_lib.prepare_eval(images, built.spec)  # as evaluation normalises them
        m = built.module.apply({"params": p, **built.extra}, x, return_feature_map=True)
        m = m.astype(jnp.float32)
        return m.reshape(m.shape[0], -1) if flatten else jnp.mean(m, axis=(1, 2))

    # A subset is a fixed random one: splits are often stored sorted by class.
    order = np.arange(len(ds)) if not limit or limit >= len(ds) else \
        np.sort(np.random.default_rng(0).permutation(len(ds))[:limit])
    out, labels = [], []
    for start in range(0, len(order), batch):
        images, lb = ds.fetch(order[start:start + batch])
        out.append(np.asarray(fmap(params, images)))
        labels.append(lb)
    return np.concatenate(out), np.concatenate(labels)


def fit_probe(train_x, train_y, test_x, test_y, num_classes: int, steps: int = 300,
              l2: float = 1e-4) -> dict:
    """Multinomial logistic regression on standardised features, class-balanced loss
    (each class weighted by N / (K · its count), so that a skewed task is not
    answered by its majority class): train accuracy and the test split's metrics."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    tx, vx = (train_x - mu) / sd, (test_x - mu) / sd
    w = {"w": jnp.zeros((tx.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    opt = optax.adam(1e-2)
    state = opt.init(w)

    counts = np.bincount(train_y, minlength=num_classes).astype(np.float32)
    weights = jnp.asarray(len(train_y) / (num_classes * np.maximum(counts, 1.0)))

    def loss(w, x, y):
        logits = x @ w["w"] + w["b"]
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return (jnp.mean(weights[y] * per_example)
                + l2 * jnp.sum(w["w"] ** 2))

    @jax.jit
    def step(w, state, x, y):
        g = jax.grad(loss)(w, x, y)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state

    tx_j, ty_j = jnp.asarray(tx), jnp.asarray(train_y)
    for _ in range(steps):
        w, state = step(w, state, tx_j, ty_j)
    probs = lambda x: np.asarray(jax.nn.softmax(x @ w["w"] + w["b"]))
    train_acc = float(np.mean(probs(tx).argmax(1) == train_y))
    test = metrics.classification_metrics(test_y, probs(vx), num_classes)
    return {"train_accuracy": train_acc, "test_accuracy": test["accuracy"],
            "test_balanced_accuracy": test["balanced_accuracy"], "test_auroc": test["auroc"],
            "feature_dim": int(tx.shape[1])}


def linear_example_grad_norms(x: jax.Array, residual: jax.Array) -> jax.Array:
    """‖∇ℓ_i‖ of softmax regression with bias: ∇_W ℓ_i = x_i ⊗ r_i, ∇_b ℓ_i = r_i,
    r_i = softmax(x_i W + b) − onehot(y_i), so ‖∇ℓ_i‖ = ‖r_i‖·√(‖x_i‖² + 1)."""
    return jnp.linalg.norm(residual, axis=1) * jnp.sqrt(jnp.sum(x * x, axis=1) + 1.0)


def dp_probe(train_x, train_y, test_x, test_y, num_classes: int, *, epsilon: float,
             delta: float, batch: int, steps: int, learning_rate: float,
             clip_norm: float = 1.0, seed: int = 0) -> dict:
    """DP-SGD on multinomial logistic regression over fixed (raw) features.

    Each step: every example joins with probability q = batch/N (Poisson), its
    gradient is clipped to `clip_norm`, N(0, σ²C²) is added to the sum, which
    is divided by the expected batch size; plain SGD. σ is calibrated with
    PLD so that the `steps` steps compose to (`epsilon`, `delta`). Features
    are not standardised (that would need private statistics). The noise is
    the trainer's (`clipping.privatize_sum`); a diagnostic with a fixed seed.
    """
    n, dim = train_x.shape
    q = batch / n
    sigma = accounting.calibrate_noise_multiplier(epsilon, delta, q, steps)
    x_all, y_all = jnp.asarray(train_x), jnp.asarray(train_y)

    def step(wb, key):
        w, b = wb
        k_sample, k_noise = jax.random.split(key)
        mask = jax.random.bernoulli(k_sample, q, (n,)).astype(jnp.float32)
        residual = jax.nn.softmax(x_all @ w + b) - jax.nn.one_hot(y_all, num_classes)
        factor = mask * clipping.clip_factor(linear_example_grad_norms(x_all, residual),
                                             clip_norm)
        r = residual * factor[:, None]
        grad_w, grad_b = clipping.privatize_sum(k_noise, (x_all.T @ r, jnp.sum(r, axis=0)),
                                                sigma, clip_norm, batch)
        return (w - learning_rate * grad_w, b - learning_rate * grad_b), None

    init = (jnp.zeros((dim, num_classes)), jnp.zeros(num_classes))
    (w, b), _ = jax.jit(lambda wb, keys: jax.lax.scan(step, wb, keys))(
        init, jax.random.split(jax.random.key(seed), steps))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(test_x) @ w + b))
    test = metrics.classification_metrics(test_y, probs, num_classes)
    return {"dp_epsilon": epsilon, "dp_delta": delta, "dp_batch": batch, "dp_steps": steps,
            "dp_learning_rate": learning_rate, "dp_noise_multiplier": round(sigma, 3),
            "dp_test_accuracy": test["accuracy"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="config spec: the model and data set")
    ap.add_argument("--prior", action="append", default=[], help="a prior directory (repeat)")
    ap.add_argument("--train_limit", type=int, default=0, help="use N random training images")
    ap.add_argument("--steps", type=int, default=300, help="full-batch Adam steps of the probe")
    ap.add_argument("--l2", type=float, default=1e-2, help="L2 penalty on the probe's weights")
    ap.add_argument("--dp_epsilon", type=float, default=0.0,
                    help="> 0: also fit DP probes at this ε (δ = --dp_delta)")
    ap.add_argument("--dp_delta", type=float, default=1e-5)
    ap.add_argument("--dp_grid", default="1024x250x2,4096x500x4",
                    help="comma-separated BATCHxSTEPSxLR of the DP probes")
    ap.add_argument("--out", default="", help="write the results as JSON here too")
    args = ap.parse_args(argv)
    for directory in args.prior:  # fail before the minutes of feature extraction, in one line
        try:
            priors.load_prior(directory)  # the trainer's rule for what a prior is
        except DpjaxError:
            ap.error(f"--prior {directory}: not a prior (nor a .npz of parameters); pass the "
                     "directory `dpjax pretrain` wrote it to (params.msgpack, prior.json)")

    dp_grid = [spec for spec in args.dp_grid.split(",") if spec] if args.dp_epsilon > 0 else []
    config = load_config(args.config)
    data = sources.load(config.dataset)
    built = model_lib.build(config, data)
    flatten = config.model.name == "small_cnn"
    rows = []
    for name in ["fresh initialisation"] + args.prior:
        start = time.perf_counter()
        params = built.params if name == "fresh initialisation" else \
            priors.load_into(name, built.params)[0]
        tr = features(built, params, data.train, flatten, limit=args.train_limit)
        te = features(built, params, data.test, flatten)
        row = dict(backbone=name, model=config.model.name, dataset=data.name,
                   num_train=len(tr[1]), num_test=len(te[1]),
                   **fit_probe(*tr, *te, data.num_classes, steps=args.steps, l2=args.l2),
                   wall_s=round(time.perf_counter() - start, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        for spec in dp_grid:
            batch, steps, lr = spec.split("x")
            start = time.perf_counter()
            dp_row = dict(backbone=name, **dp_probe(
                *tr, *te, data.num_classes, epsilon=args.dp_epsilon, delta=args.dp_delta,
                batch=int(batch), steps=int(steps), learning_rate=float(lr)),
                wall_s=round(time.perf_counter() - start, 1))
            rows.append(dp_row)
            print(json.dumps(dp_row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
