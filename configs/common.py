"""Pieces the experiment configs share: published constants and the recipes.

    from configs import common

* the CIFAR-10/100 training sets' published per-channel mean and std;
* `wrn_recipe`: De et al. (2022)'s WRN-16-4 DP-SGD recipe (`cifar10_wrn16_4.py`,
  `cifar100_wrn16_4.py`);
* `dprandp_recipe`: DP-RandP's three phases (Tang et al. 2023;
  `dprandp_cifar10.py`, `dprandp_cifar100.py`);
* `medical_recipe`: Singh et al. (2020)'s benchmark settings, done properly
  (`medical_pneumonia.py`, `medical_aptos.py`);
* `shrink`: a variant switch (`runlocal=True`, `cpu=True`) that changes
  defaults only, never a value the user gave beside it.

The methods and the reference numbers behind these recipes are in
docs/methods.md.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from dpjax.config import base_config, given_keys, parse_arg

# The CIFAR training sets' per-channel mean and std: the published constants every
# CIFAR recipe uses. They are statistics of the training set, public only because
# CIFAR is public; for private data use constants from public data (or 0.5 / 0.25),
# never statistics of the private set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# De et al. (2022), WRN-16-4 on CIFAR-10 from scratch: updates by ε (their noise
# multipliers were 10 / 6 / 4 / 3; here σ is calibrated with PLD to reach ε exactly).
WRN_STEPS_FOR_EPSILON = {1.0: 875, 2.0: 1125, 4.0: 1593, 8.0: 2468}

# DP-RandP Phase I: 200 epochs of 105,000 StyleGAN-Oriented images at batch 256.
DPRANDP_PRETRAIN_STEPS = 200 * 105_000 // 256


def shrink(c: ml_collections.ConfigDict, arg: str | None,
           changes: dict[str, tuple[str | None, Any]]) -> None:
    """Applies a variant's smaller settings, except where `arg` gave the value explicitly.

    `changes` maps a config field ("batch_size", "model.name") to (the argument
    key that sets it, or None; the variant's value). A field whose argument key
    was given keeps the given value: `cpu=True,batch=64` trains at batch 64.
    """
    given = given_keys(arg)
    for field, (key, value) in changes.items():
        if key is not None and key in given:
            continue
        node = c
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value


def _cifar_wrn16_4_private(c: ml_collections.ConfigDict, args, tfds_name: str, mean,
                           std) -> None:
    """What De et al.'s recipe and DP-RandP share: data, augmentation, WRN-16-4, the
    privacy block (δ = 1e-5, C = 1), B = 4096 in micro-batches of 64, augmult, logging."""
    if args.data == "tfds":
        c.dataset.name, c.dataset.tfds_name, c.dataset.data_dir = "tfds", tfds_name, args.data_dir
    else:
        c.dataset.name, c.dataset.path = args.data, args.path
    c.dataset.mean, c.dataset.std = mean, std
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.model.name = "wrn16_4"
    c.privacy.target_epsilon = args.eps
    c.privacy.delta = 1e-5
    c.privacy.clip_norm = 1.0
    c.batch_size = 4096
    c.micro_batch_size = 64
    c.augmult = args.augmult
    c.optimizer.name = "sgd"
    c.eval_every = 100
    c.checkpoint_every = 25
    c.eval_batch_size = 500
    c.log_every = 5


def wrn_recipe(arg: str | None, tfds_name: str, mean, std) -> ml_collections.ConfigDict:
    """De et al. (2022)'s WRN-16-4 recipe on a CIFAR set (see cifar10_wrn16_4.py)."""
    args = parse_arg(arg, eps=1.0, data="tfds", path="", data_dir="", runlocal=False,
                     augmult=16, steps=0)
    c = base_config()
    c.name = f"{tfds_name}_wrn16_4_eps{args.eps:g}"
    _cifar_wrn16_4_private(c, args, tfds_name, mean, std)
    if args.steps:
        c.num_steps = args.steps
    elif args.eps in WRN_STEPS_FOR_EPSILON:
        c.num_steps = WRN_STEPS_FOR_EPSILON[args.eps]
    else:
        raise ValueError(f"eps={args.eps:g} has no step count in the recipe "
                         f"({sorted(WRN_STEPS_FOR_EPSILON)}); give steps=N too.")
    c.optimizer.learning_rate = 2.0
    c.ema_decay = 0.999
    if args.runlocal:  # a smoke run on a CPU
        shrink(c, arg, {"batch_size": (None, 256), "micro_batch_size": (None, 32),
                        "augmult": ("augmult", 2), "num_steps": ("steps", 5),
                        "eval_every": (None, 0), "log_every": (None, 1),
                        "checkpoint_every": (None, 5), "model.name": (None, "small_cnn")})
    return c


def dprandp_recipe(arg: str | None, tfds_name: str, mean, std) -> ml_collections.ConfigDict:
    """DP-RandP's three phases on a CIFAR set (see dprandp_cifar10.py)."""
    args = parse_arg(arg, eps=1.0, data="tfds", path="", data_dir="", runlocal=False,
                     augmult=16, pretrain_steps=DPRANDP_PRETRAIN_STEPS, prior="", steps=875,
                     head_steps=96)
    c = base_config()
    c.name = f"dprandp_{tfds_name}_eps{args.eps:g}"
    _cifar_wrn16_4_private(c, args, tfds_name, mean, std)
    c.model.init_from = args.prior
    c.pretrain.steps = args.pretrain_steps
    c.pretrain.batch_size = 256
    c.pretrain.families = ("stylegan_oriented",)
    c.pretrain.resolution = 32
    c.pretrain.channels = 3
    c.num_steps = args.steps
    c.phases.head_steps = args.head_steps
    c.phases.head_learning_rate = 15.0
    c.optimizer.learning_rate = 0.4
    c.ema_decay = 0.9999
    c.ema_warmup = True
    if args.runlocal:  # a smoke run on a CPU
        shrink(c, arg, {"model.name": (None, "small_cnn"), "pretrain.steps": ("pretrain_steps", 20),
                        "pretrain.batch_size": (None, 32), "pretrain.hidden_dim": (None, 256),
                        "batch_size": (None, 256), "micro_batch_size": (None, 64),
                        "augmult": ("augmult", 2), "num_steps": ("steps", 6),
                        "phases.head_steps": ("head_steps", 2), "eval_every": (None, 0),
                        "log_every": (None, 1)})
    return c


def medical_recipe(arg: str | None, *, name: str, data_name: str,
                   ordinal: bool) -> ml_collections.ConfigDict:
    """Singh et al. (2020)'s settings in three modes (see medical_pneumonia.py)."""
    args = parse_arg(arg, mode="original", beta=1.0, sigma=0.0, eps=0.0, size=224, path="",
                     data=data_name, epochs=50.0, batch=128, lr=0.01, init="", cpu=False,
                     seed_ldp=-1)
    c = base_config()
    c.name = f"{name}_{args.mode}"
    c.dataset.name = args.data
    c.dataset.path = args.path
    c.dataset.image_size = args.size
    # Fixed constants, not statistics of the (private) images.
    c.dataset.mean = (0.5,)
    c.dataset.std = (0.25,)
    c.augment.crop_padding = max(1, args.size // 16)
    c.augment.flip = True
    c.model.name = "resnet18"
    c.model.kwargs.norm = "group"
    c.model.init_from = args.init
    c.batch_size = args.batch
    c.micro_batch_size = 32
    c.num_epochs = args.epochs
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = args.lr
    c.optimizer.weight_decay = 1e-3
    c.metrics.clinical = True
    c.metrics.ordinal = ordinal
    c.eval_every = 0
    c.log_every = 10
    c.checkpoint_every = 100
    if args.mode in ("original", "ldp"):
        c.privacy.mode = "none"
        c.privacy.sampling = "shuffle"
        if args.mode == "ldp":
            c.ldp.scale = args.beta
            c.ldp.seed = args.seed_ldp
    elif args.mode == "dpsgd":
        c.privacy.mode = "dpsgd"
        c.privacy.delta = 1e-5
        c.privacy.clip_norm = 1.0
        if args.sigma > 0 and args.eps > 0:
            raise ValueError(f"sigma={args.sigma:g} and eps={args.eps:g} are both given: give "
                             "one (sigma trains at that σ; eps calibrates σ to it).")
        if args.sigma > 0:
            c.privacy.noise_multiplier = args.sigma
        elif args.eps > 0:
            c.privacy.target_epsilon = args.eps
        else:
            raise ValueError("mode=dpsgd needs sigma=S or eps=E.")
    else:
        raise ValueError(f"mode={args.mode!r} is not original, ldp or dpsgd.")
    if args.cpu:  # a small CPU variant (e.g. on MedMNIST at 28 px)
        shrink(c, arg, {"dataset.image_size": ("size", 28), "augment.crop_padding": (None, 2),
                        "model.kwargs.width": (None, 16), "model.kwargs.small_input": (None, True),
                        "micro_batch_size": (None, 64), "num_epochs": ("epochs", 5.0),
                        "eval_batch_size": (None, 256)})
    return c


# CIFAR at CPU scale (docs/results.md, "CIFAR-10 on a CPU"): DP-SGD from scratch and
# DP-RandP share everything private training touches (data, model, B, steps, C, δ,
# augmentation); only the initialisation, the phases and the learning rates differ.
CIFAR10_ZIP = "../shared/data/cifar10-jpeg.zip"


def cifar_cpu_recipe(arg: str | None, randp: bool) -> ml_collections.ConfigDict:
    """CIFAR-10 on one CPU core: small CNN, B = 1024, 250 steps (see cifar10_cpu.py)."""
    extra = dict(head_steps=0, head_lr=2.0, pretrain_steps=1500, prior="",
                 families="stylegan_oriented+dead_leaves+spectrum", hidden=4096,
                 pretrain_batch=256) if randp else {}
    args = parse_arg(arg, eps=2.0, path=CIFAR10_ZIP, steps=250, batch=1024, clip=1.0,
                     lr=4.0, width=16, act="tanh", pool=4, ema=0.0,
                     crop=0, flip=True, **extra)
    c = base_config()
    c.name = f"{'dprandp_' if randp else ''}cifar10_cpu_eps{args.eps:g}"
    c.dataset.name = "folder"
    c.dataset.path = args.path
    c.dataset.mean, c.dataset.std = CIFAR10_MEAN, CIFAR10_STD
    c.augment.crop_padding = args.crop
    c.augment.flip = args.flip
    c.model.name = "small_cnn"
    c.model.kwargs.width = args.width
    c.model.kwargs.pool = args.pool
    c.model.kwargs.activation = args.act
    c.privacy.target_epsilon = args.eps
    c.privacy.delta = 1e-5
    c.privacy.clip_norm = args.clip
    c.privacy.clipping = "vmap"
    c.batch_size = args.batch
    c.micro_batch_size = 256
    c.num_steps = args.steps
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = args.lr
    c.ema_decay = args.ema
    c.ema_warmup = args.ema > 0
    c.eval_every = 0
    c.eval_batch_size = 1000
    c.log_every = 10
    c.checkpoint_every = 50
    if randp:
        c.model.init_from = args.prior
        c.pretrain.steps = args.pretrain_steps
        c.pretrain.batch_size = args.pretrain_batch
        c.pretrain.families = tuple(args.families.split("+"))
        c.pretrain.resolution = 32
        c.pretrain.channels = 3
        c.pretrain.hidden_dim = args.hidden
        c.pretrain.checkpoint_every = 500
        c.pretrain.log_every = 100
        c.phases.head_steps = args.head_steps
        c.phases.head_learning_rate = args.head_lr
    return c
