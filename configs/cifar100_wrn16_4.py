"""CIFAR-100, WRN-16-4 from scratch with DP-SGD, De et al. (2022)'s CIFAR-10 recipe.

    dpjax train --config configs/cifar100_wrn16_4.py:eps=8 --workdir runs/c100_eps8

Same recipe as `cifar10_wrn16_4.py` (B = 4096, C = 1, augmult 16, lr 2.0,
EMA 0.999, δ = 1e-5, the same update counts by ε, σ calibrated with PLD) on
100 classes; De et al. report CIFAR-100 mostly for fine-tuning from
ImageNet, so from-scratch numbers here are our own measurements, not theirs.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "cifar10_wrn16_4", os.path.join(os.path.dirname(__file__), "cifar10_wrn16_4.py"))
_c10 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_c10)


def get_config(arg=None):
    c = _c10.cifar_config(arg, "cifar100", _c10.STEPS_FOR_EPSILON)
    # The CIFAR-100 training set's published per-channel mean/std (public because
    # CIFAR-100 is public; never compute such constants from private data).
    c.dataset.mean = (0.5071, 0.4865, 0.4409)
    c.dataset.std = (0.2673, 0.2564, 0.2762)
    return c
