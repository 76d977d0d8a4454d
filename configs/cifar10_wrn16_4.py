"""CIFAR-10, WRN-16-4 trained from scratch with DP-SGD: De et al. (2022)'s recipe.

    dpjax train --config configs/cifar10_wrn16_4.py:eps=1 --workdir runs/c10_eps1
    dpjax train --workdir runs/c10_eps8 \
        --config configs/cifar10_wrn16_4.py:eps=8,data=folder,path=data/cifar10-jpeg.zip
    dpjax account --config configs/cifar10_wrn16_4.py:eps=2

Recipe (De et al. 2022, "Unlocking high-accuracy differentially private image
classification through scale", appendix; jax_privacy's
`cifar10_wrn_16_4_eps1.py`): WRN-16-4 with GroupNorm and weight-standardised
convolutions, B = 4096, C = 1, augmult K = 16 (random crop with 4 px reflect
padding and flip), SGD without momentum at lr 2.0, EMA 0.999, δ = 1e-5.
Update counts by ε: 875 / 1125 / 1593 / 2468 for ε = 1 / 2 / 4 / 8 (their
noise multipliers were 10 / 6 / 4 / 3). Here σ is calibrated with PLD to
reach exactly the chosen ε over those steps, so it is a little below theirs.
Reference test accuracy: 56.8 / 65.9 / 73.5 / 79.5 %.

`runlocal=True` shrinks the defaults for a smoke run on a CPU (a value given
beside it, e.g. `runlocal=True,steps=3`, is kept).
"""

from configs import common


def get_config(arg=None):
    return common.wrn_recipe(arg, "cifar10", common.CIFAR10_MEAN, common.CIFAR10_STD)
