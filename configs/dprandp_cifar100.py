"""DP-RandP on CIFAR-100: the CIFAR-10 recipe of `dprandp_cifar10.py` on 100 classes.

    dpjax train --config configs/dprandp_cifar100.py:eps=8 --workdir runs/randp_c100_eps8
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "dprandp_cifar10", os.path.join(os.path.dirname(__file__), "dprandp_cifar10.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(arg=None):
    return _base.randp_config(arg, "cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
