"""DP-RandP on CIFAR-10 (Tang et al. 2023): prior from random processes, then DP-SGD.

    dpjax train --config configs/dprandp_cifar10.py:eps=1 --workdir runs/randp_c10_eps1
    dpjax train --workdir runs/randp_c10_eps1 \
        --config configs/dprandp_cifar10.py:eps=1,data=folder,path=data/cifar10-jpeg.zip
    dpjax account --config configs/dprandp_cifar10.py:eps=8

Phase I (no privacy cost): WRN-16-4 (GroupNorm 16, pre-activation) with the
paper's projection head, alignment + uniformity loss, on StyleGAN-Oriented
images generated on the device: 200 "epochs" of 105,000 images at batch 256
(82,031 steps), SGD lr 0.12, momentum 0.9, weight decay 1e-4, lr x0.1 at
epochs 155/170/185; two SimCLR views per image.

Phases II + III (one accounted DP-SGD run): B = 4096 (q = 4096/50000),
875 steps, C = 1, δ = 1e-5, augmult 16 (crop with 4 px reflect padding, flip),
no momentum or weight decay, EMA min(0.9999, (1+t)/(10+t)) across both
phases. Phase II: the first 96 steps train only the final GroupNorm's affine
and the classifier at lr 15; Phase III: everything at lr 0.4. σ is calibrated
with PLD for the chosen ε over all 875 steps (≈ 9.13 at ε = 1; the paper's
PRV accountant gave 9.3). Paper: 72.3 % at ε = 1 (De et al. from scratch 56.8).

Variants: `pretrain_steps=N` (shorter Phase I), `augmult=K`, `prior=DIR`
(reuse a prior), `runlocal=True` (a smoke run on a CPU; values given beside it
are kept).
"""

from configs import common


def get_config(arg=None):
    return common.dprandp_recipe(arg, "cifar10", common.CIFAR10_MEAN, common.CIFAR10_STD)
