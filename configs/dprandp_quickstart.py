"""DP-RandP in a few minutes on a CPU: all three phases on scikit-learn's digits.

    dpjax train --config configs/dprandp_quickstart.py --workdir runs/randp_quickstart
    dpjax train --config configs/dprandp_quickstart.py:eps=1 --workdir runs/randp_qs_eps1

Phase I trains the quickstart's small CNN on 8x8 grey random-process images
(StyleGAN-Oriented, dead leaves and spectral noise, mixed) with the
alignment + uniformity loss; nothing of the digits is used. Phases II + III
are one DP-SGD run on the 1437 training digits: a DP linear probe of the
prior, then fine-tuning of everything, at the chosen ε (δ = 1e-5).
`launch/compare_randp.py` runs this against DP-SGD from scratch
(`configs/quickstart.py`) at the same ε.
"""

from dpjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, eps=4.0, steps=300, head_steps=60, pretrain_steps=1000, prior="",
                     lr=1.0, head_lr=0.5)
    c = base_config()
    c.name = "dprandp_quickstart"
    c.dataset.name = "digits"
    # Rounded digits training-set mean/std (public data; see configs/quickstart.py).
    c.dataset.mean = (0.3,)
    c.dataset.std = (0.4,)
    c.model.name = "small_cnn"
    c.model.init_from = args.prior
    c.pretrain.steps = args.pretrain_steps
    c.pretrain.batch_size = 128
    c.pretrain.families = ("stylegan_oriented", "dead_leaves", "spectrum")
    c.pretrain.resolution = 8
    c.pretrain.channels = 1
    c.pretrain.hidden_dim = 512
    c.pretrain.learning_rate = 0.12
    c.pretrain.checkpoint_every = 250
    c.pretrain.log_every = 100
    c.privacy.target_epsilon = args.eps
    c.privacy.delta = 1e-5
    c.batch_size = 256
    c.micro_batch_size = 128
    c.num_steps = args.steps
    c.phases.head_steps = args.head_steps
    c.phases.head_learning_rate = args.head_lr
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = args.lr
    c.ema_decay = 0.99
    c.ema_warmup = True
    c.log_every = 25
    c.checkpoint_every = 100
    return c
