"""CIFAR-10 on one CPU core, DP-SGD from scratch: the baseline of DP-RandP's CPU comparison.

    dpjax train --config configs/cifar10_cpu.py:eps=2 --workdir runs/c10cpu_eps2

Small GroupNorm CNN (width 16, tanh, 4x4 pooling: 1,024 classifier inputs;
`pool=2` is the first tries' 4,096), Poisson-sampled B = 1024, 250 steps,
C = 1, δ = 1e-5, σ calibrated with PLD to ε. Data: the CIFAR-10 image-folder
zip (`path=`, default ../shared/data/cifar10-jpeg.zip); tuning used
`path=.data/cifar10-val.zip` (benchmarks/make_cifar_val.py: 45,000 training
images, the last 500 per class as validation). `configs/dprandp_cifar10_cpu.py`
is DP-RandP with the same data, model, B, steps and C. Results and the tuning
record: docs/results.md, "CIFAR-10 on a CPU".
"""

from configs import common


def get_config(arg=None):
    return common.cifar_cpu_recipe(arg, randp=False)
