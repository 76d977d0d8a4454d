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

Class imbalance (MedMNIST sets are skewed): logit adjustment with τ = 2 and a
class prior from Laplace-noised counts at ε = 0.1, composed into the reported
ε (`la=False` turns it off; see configs/medical_pneumonia.py for why τ = 2
under per-example clipping).

`cpu=True`: the medical stand-in's CPU recipe (docs/results.md, "The medical
stand-in"): WRN-10-1 (GroupNorm, 8 groups), a short Phase I (1,000 steps of
batch 128 on grey StyleGAN-Oriented, dead-leaves and spectrum images, no
private data; the same prior for every run, so make it once with
`dpjax pretrain` and pass `prior=DIR/prior`), then B = 512, 200 private
steps (20 of them a linear probe at lr 2), fine-tuning at lr 1, EMA 0.99,
fast clipping, no augmult. Values given beside `cpu=True` are kept.

    dpjax pretrain --config configs/dprandp_medmnist.py:cpu=True,path=x.npz --workdir runs/p
    dpjax train --workdir runs/randp_eps1 \
        --config configs/dprandp_medmnist.py:cpu=True,path=x.npz,eps=1,prior=runs/p/prior
"""

from configs import common
from dpjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, path="", eps=2.0, size=28, channels=1, batch=1024, steps=500,
                     augmult=8, pretrain_steps=20_000, prior="", delta=1e-5, runlocal=False,
                     cpu=False, la=True, tau=2.0, prior_eps=0.1, head_lr=15.0, lr=0.4)
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
    c.phases.head_learning_rate = args.head_lr
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = args.lr
    if args.la:  # logit adjustment with a DP class prior (its ε is in the reported total)
        c.imbalance.method = "logit_adjustment"
        c.imbalance.prior = "dp"
        c.imbalance.prior_epsilon = args.prior_eps
        c.imbalance.tau = args.tau
    c.ema_decay = 0.9999
    c.ema_warmup = True
    c.eval_every = 100
    c.checkpoint_every = 50
    if args.cpu:  # the medical stand-in's CPU recipe; values given beside cpu=True are kept
        c.model.kwargs.depth, c.model.kwargs.width, c.model.kwargs.groups = 10, 1, 8
        common.shrink(c, arg, {"model.name": (None, "wrn"),
                               "pretrain.steps": ("pretrain_steps", 1000),
                               "pretrain.batch_size": (None, 128),
                               "pretrain.hidden_dim": (None, 512),
                               "pretrain.families": (None, ("stylegan_oriented", "dead_leaves",
                                                            "spectrum")),
                               "batch_size": ("batch", 512), "num_steps": ("steps", 200),
                               "phases.head_steps": ("steps", 20),
                               "phases.head_learning_rate": ("head_lr", 2.0),
                               "optimizer.learning_rate": ("lr", 1.0),
                               "augmult": ("augmult", 1), "augment.crop_padding": (None, 2),
                               "micro_batch_size": (None, 256), "ema_decay": (None, 0.99),
                               "privacy.clipping": (None, "fast"), "eval_every": (None, 0),
                               "eval_batch_size": (None, 256), "checkpoint_every": (None, 100),
                               "metrics.clinical": (None, True),
                               "metrics.bootstrap_resamples": (None, 200)})
    if args.runlocal:  # a smoke run on a CPU; values given beside runlocal=True are kept
        common.shrink(c, arg, {"model.name": (None, "small_cnn"),
                               "pretrain.steps": ("pretrain_steps", 20),
                               "pretrain.batch_size": (None, 32),
                               "pretrain.hidden_dim": (None, 256), "batch_size": ("batch", 64),
                               "num_steps": ("steps", 6), "phases.head_steps": ("steps", 2),
                               "augmult": ("augmult", 2), "eval_every": (None, 0)})
    return c
