"""DP-RandP on CIFAR-100: the CIFAR-10 recipe of `dprandp_cifar10.py` on 100 classes.

    dpjax train --config configs/dprandp_cifar100.py:eps=8 --workdir runs/randp_c100_eps8
"""

from configs import common


def get_config(arg=None):
    return common.dprandp_recipe(arg, "cifar100", common.CIFAR100_MEAN, common.CIFAR100_STD)
