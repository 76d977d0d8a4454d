"""Chest X-ray pneumonia (Kermany et al. 2018), Singh et al. (2020)'s benchmark, done honestly.

    # The paper's seven columns on the Kaggle download, at 224 px (GPU):
    python launch/sweep.py --workdir runs/pneumonia \
        --medical configs/medical_pneumonia.py:path=chest_xray.zip
    # One column:
    dpjax train --workdir runs/pn_ldp2 \
        --config configs/medical_pneumonia.py:path=chest_xray.zip,mode=ldp,beta=2
    # The small variant for a CPU, on PneumoniaMNIST (the same source at 28 px):
    dpjax train --workdir runs/pn_cpu \
        --config configs/medical_pneumonia.py:cpu=True,data=npz,path=pneumoniamnist.npz

Paper settings: ResNet-18, 224 px, batch 128, 50 epochs, SGD lr 0.01, weight
decay 1e-3. Done properly here (docs/methods.md, "Local DP and the medical benchmark"):
* `mode=original`: non-private training (shuffled batches).
* `mode=ldp,beta=B`: every pixel of every training image gets independent
  Laplace noise of scale B on [0, 1] before training (the paper's code drew
  one value per image); ε is reported per pixel (1/B) and per image (d/B).
* `mode=dpsgd,sigma=S` (or `eps=E` to calibrate σ): DP-SGD with Poisson
  sampling, per-example clipping (C = 1) and PLD accounting, δ = 1e-5 < 1/N.
ResNet-18 uses GroupNorm (no batch statistics), from scratch by default;
`init=DIR_OR_FILE` starts from a DP-RandP prior or a user-supplied
pretrained checkpoint (.npz of parameters keyed by path).
Kermany file names carry patient ids; `unit=patient` would make the privacy
unit a patient — see docs/medical.md for what is and is not supported.
`cpu=True` changes the defaults only (28 px, width 16, 5 epochs): a value given
beside it (`cpu=True,batch=64,size=32`) is kept.
"""

from configs import common


def get_config(arg=None):
    return common.medical_recipe(arg, name="pneumonia", data_name="kermany", ordinal=False)
