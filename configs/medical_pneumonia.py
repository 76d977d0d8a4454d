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
decay 1e-3. Done properly here (design.md section 6):
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
"""

from dpjax.config import base_config, parse_arg


def medical_config(arg, *, name, data_name, ordinal):
    args = parse_arg(arg, mode="original", beta=1.0, sigma=0.0, eps=0.0, size=224, path="",
                     data=data_name, epochs=50.0, batch=128, lr=0.01, init="", cpu=False,
                     seed_ldp=-1)
    c = base_config()
    c.name = f"{name}_{args.mode}"
    c.dataset.name = args.data
    c.dataset.path = args.path
    c.dataset.image_size = args.size
    # Fixed constants, not statistics of the (private) X-rays.
    c.dataset.mean = (0.5,)
    c.dataset.std = (0.25,)
    c.augment.crop_padding = max(1, args.size // 16)
    c.augment.flip = True
    c.model.name = "resnet18"
    c.model.kwargs.norm = "group"
    c.model.init_from = args.init
    c.batch_size = args.batch
    c.micro_batch_size = 32
    c.num_epochs = args.epochs
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = args.lr
    c.optimizer.weight_decay = 1e-3
    c.metrics.clinical = True
    c.metrics.ordinal = ordinal
    c.eval_every = 0
    c.log_every = 10
    c.checkpoint_every = 100
    if args.mode in ("original", "ldp"):
        c.privacy.mode = "none"
        c.privacy.sampling = "shuffle"
        if args.mode == "ldp":
            c.ldp.scale = args.beta
            c.ldp.seed = args.seed_ldp
    elif args.mode == "dpsgd":
        c.privacy.mode = "dpsgd"
        c.privacy.delta = 1e-5
        c.privacy.clip_norm = 1.0
        if args.sigma > 0:
            c.privacy.noise_multiplier = args.sigma
        elif args.eps > 0:
            c.privacy.target_epsilon = args.eps
        else:
            raise ValueError("mode=dpsgd needs sigma=S or eps=E")
    else:
        raise ValueError(f"mode={args.mode!r} is not original, ldp or dpsgd")
    if args.cpu:
        c.dataset.image_size = 28 if args.size == 224 else args.size
        c.augment.crop_padding = 2
        c.model.kwargs.width = 16
        c.model.kwargs.small_input = True
        c.batch_size = 128
        c.micro_batch_size = 64
        c.num_epochs = 5.0 if args.epochs == 50.0 else args.epochs
        c.eval_batch_size = 256
    return c


def get_config(arg=None):
    return medical_config(arg, name="pneumonia", data_name="kermany", ordinal=False)
