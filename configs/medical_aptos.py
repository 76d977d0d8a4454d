"""APTOS 2019 diabetic retinopathy (5 grades), Singh et al. (2020)'s benchmark, done honestly.

    python launch/sweep.py --workdir runs/aptos --medical configs/medical_aptos.py:path=aptos.zip
    dpjax train --workdir runs/aptos_dp \
        --config configs/medical_aptos.py:path=aptos.zip,mode=dpsgd,sigma=2
    # CPU variant on RetinaMNIST (5-grade fundus images, 28 px):
    dpjax train --workdir runs/retina_cpu \
        --config configs/medical_aptos.py:cpu=True,data=npz,path=retinamnist.npz

`train.csv` (id_code, diagnosis) with `train_images/*.png`, a seeded
stratified 80/20 split; the same modes, recipes and arguments as
`medical_pneumonia.py` (`recipe=dp`, the default, or `recipe=paper`: 224 px,
batch 128, 50 epochs, SGD lr 0.01, wd 1e-3), and quadratic weighted kappa
among the metrics. APTOS has no patient ids: privacy here is per image only.

The dp recipe was chosen on binary stand-ins (one class against the rest at
10:1); its mechanisms (expected batch, steps, lr for the clip norm, EMA,
logit adjustment with a DP prior composed into ε) carry over to five grades,
but its τ = 2 and its settings have not been measured on a five-grade task
(docs/results.md, "The medical stand-in").
"""

from configs import medical_pneumonia


def get_config(arg=None):
    c = medical_pneumonia.medical_config(arg, name="aptos", data_name="csv", ordinal=True)
    # Fixed constants, not statistics of the (private) fundus images.
    c.dataset.mean = (0.5, 0.5, 0.5)
    c.dataset.std = (0.25, 0.25, 0.25)
    return c
