"""DP-RandP on any 2D MedMNIST `.npz` (PneumoniaMNIST, RetinaMNIST, BloodMNIST, ...).

    dpjax train --workdir runs/randp_pneumonia \
        --config configs/dprandp_medmnist.py:path=data/pneumoniamnist.npz,eps=2
    dpjax train --workdir runs/randp_blood \
        --config configs/dprandp_medmnist.py:path=data/bloodmnist_64.npz,size=64,channels=3

Phase I learns a WRN-16-4 prior from StyleGAN-Oriented images at the data's
resolution (grey images when channels=1), then DP-SGD runs a 10 % linear-probe
phase and fine-tunes, as in the CIFAR recipe. MedMNIST training sets are
small (1,080 to 90,000 images): the batch is a quarter of the set, capped at
4096, so that q stays moderate. δ defaults to 1e-5 and must be below 1/N.
Normalisation constants are fixed (0.5, 0.5) — never computed from the data.
"""

from configs import common
from dpjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, path="", eps=2.0, size=28, channels=1, batch=1024, steps=500,
                     augmult=8, pretrain_steps=20_000, prior="", delta=1e-5, runlocal=False)
    c = base_config()
    c.name = "dprandp_medmnist"
    c.dataset.name = "npz"
    c.dataset.path = args.path
    c.dataset.image_size = args.size if args.size != 28 else 0
    # Fixed constants, not statistics of the (private) images.
    c.dataset.mean = (0.5,) * args.channels
    c.dataset.std = (0.5,) * args.channels
    c.augment.crop_padding = max(1, args.size // 8)
    c.augment.flip = True
    c.model.name = "wrn16_4"
    c.model.init_from = args.prior
    c.pretrain.steps = args.pretrain_steps
    c.pretrain.resolution = args.size
    c.pretrain.channels = args.channels
    c.privacy.target_epsilon = args.eps
    c.privacy.delta = args.delta
    c.batch_size = args.batch
    c.micro_batch_size = 64
    c.augmult = args.augmult
    c.num_steps = args.steps
    c.phases.head_steps = max(1, args.steps // 10)
    c.phases.head_learning_rate = 15.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.4
    c.ema_decay = 0.9999
    c.ema_warmup = True
    c.eval_every = 100
    c.checkpoint_every = 50
    if args.runlocal:  # a smoke run on a CPU; values given beside runlocal=True are kept
        common.shrink(c, arg, {"model.name": (None, "small_cnn"),
                               "pretrain.steps": ("pretrain_steps", 20),
                               "pretrain.batch_size": (None, 32),
                               "pretrain.hidden_dim": (None, 256), "batch_size": ("batch", 64),
                               "num_steps": ("steps", 6), "phases.head_steps": ("steps", 2),
                               "augmult": ("augmult", 2), "eval_every": (None, 0)})
    return c
