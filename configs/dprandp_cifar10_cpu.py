"""DP-RandP on CIFAR-10 on one CPU core, against `configs/cifar10_cpu.py` (from scratch).

    dpjax pretrain --config configs/dprandp_cifar10_cpu.py --workdir runs/c10cpu_prior
    dpjax train --config configs/dprandp_cifar10_cpu.py:eps=2,prior=runs/c10cpu_prior/prior \
        --workdir runs/randp_c10cpu_eps2

Phase I (no private data, ε = 0): 1,500 steps of the small CNN with a
projection head, alignment + uniformity loss, on random-process images
generated on the CPU (`families=`, '+'-separated; about 30 min on 2 cores).
Without `prior=` the run makes its own prior first. Then one accounted DP-SGD
run with the same data, model, B = 1024, 250 steps, lr and C as the scratch
baseline, every layer trained from the prior (`head_steps=0`). A DP linear
probe first (`head_steps=150`: 150 steps train only the last GroupNorm's
affine and the classifier at `head_lr`) scored lower at this scale: on the
validation split at ε = 1 a DP probe of this two-convolution prior tops out
near 46 %, as scratch at lr 2 does, and training every layer from it gave
47 % (at lr 4, the default: 49 %, scratch 48 %).
Results and the tuning record: docs/results.md, "CIFAR-10 on a CPU".
"""

from configs import common


def get_config(arg=None):
    return common.cifar_cpu_recipe(arg, randp=True)
