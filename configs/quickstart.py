"""Quickstart: DP-SGD on scikit-learn's handwritten digits, on a CPU, in about a minute.

    dpjax train --config configs/quickstart.py --workdir runs/quickstart

1797 8x8 grey digits ship with scikit-learn (no download); a stratified 80/20
split with seed 0 gives 1437 training and 360 test images. A small GroupNorm
CNN trained with DP-SGD (Poisson sampling, PLD accounting) at ε = 4,
δ = 1e-5 reaches about 0.9 test accuracy.

Variants: `configs/quickstart.py:eps=1`, `...:eps=8,steps=400`.
"""

from dpjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, eps=4.0, steps=300, batch=256)
    c = base_config()
    c.name = "quickstart"
    c.dataset.name = "digits"
    # 0.3 / 0.4 round the digits training set's mean and std: acceptable here only
    # because the digits are public; for private data use public constants.
    c.dataset.mean = (0.3,)
    c.dataset.std = (0.4,)
    c.model.name = "small_cnn"
    c.privacy.target_epsilon = args.eps
    c.privacy.delta = 1e-5
    c.privacy.clip_norm = 1.0
    c.batch_size = args.batch
    c.micro_batch_size = 128
    c.num_steps = args.steps
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 2.0
    c.ema_decay = 0.99
    c.log_every = 25
    c.eval_every = 100
    c.checkpoint_every = 100
    return c
