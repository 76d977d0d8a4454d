"""CIFAR-100, WRN-16-4 from scratch with DP-SGD, De et al. (2022)'s CIFAR-10 recipe.

    dpjax train --config configs/cifar100_wrn16_4.py:eps=8 --workdir runs/c100_eps8

Same recipe as `cifar10_wrn16_4.py` (B = 4096, C = 1, augmult 16, lr 2.0,
EMA 0.999, δ = 1e-5, the same update counts by ε, σ calibrated with PLD) on
100 classes; De et al. report CIFAR-100 mostly for fine-tuning from
ImageNet, so from-scratch numbers here are our own measurements, not theirs.
"""

from configs import common


def get_config(arg=None):
    # CIFAR-100's published per-channel mean/std (public because CIFAR-100 is public;
    # never compute such constants from private data).
    return common.wrn_recipe(arg, "cifar100", common.CIFAR100_MEAN, common.CIFAR100_STD)
