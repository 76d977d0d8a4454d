"""Configs: the base every experiment file starts from, loading and validation.

An experiment is a Python file in `configs/` with `get_config(arg)` returning
an `ml_collections.ConfigDict` built from `base_config()`. The base is locked,
so a misspelt field in a config file or on the command line is an error, not
a silently ignored setting. Variants go in the argument as comma-separated
`key=value` pairs (`configs/cifar10_wrn16_4.py:eps=1`, parsed by `parse_arg`,
which rejects unknown keys); any field can be overridden with
`--config.a.b=value`.

`validate` checks every field before anything is compiled or written, and
raises `ConfigError` with one line naming the field and the fix.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from dpjax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
    """All fields a training config may set, with their defaults."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"

    # Data. Normalisation constants are public: never computed from private data.
    c.dataset = ml_collections.ConfigDict(dict(
        name="digits",          # a registered source (dpjax.data.registry): digits | tfds |
                                # npz | folder | csv | kermany
        tfds_name="",           # for name=tfds: e.g. cifar10
        data_dir="",            # TFDS data_dir
        path="",                # npz file, image folder or .zip
        image_size=0,           # 0 = keep the stored size; else resize to this
        test_fraction=0.2,      # split when the source has no test split
        split_seed=0,
        on_bad_image="error",   # error | skip (skipped files are counted)
        use_val="ignore",       # npz, folder, kermany: a validation split is left out
                                # ("ignore") or added to training ("train": then private)
        cache_dir="",           # where decoded arrays are cached ("" = no cache)
        streaming=False,        # folder or TFDS array_record data too large for memory:
                                # decode each batch's rows on demand
        train_split="train",    # TFDS split (or streamed folder) to train on
        test_split="test",      # evaluation split / folder (ImageNet: "validation" / "val")
        num_workers=0,          # decoding threads per host (0 = one per core, at most 8)
        mean=(0.5,),            # per-channel normalisation, public constants
        std=(0.5,),
    ))
    c.augment = ml_collections.ConfigDict(dict(
        crop_padding=0,         # random crop with reflect padding (pixels)
        flip=False,             # random horizontal flip
    ))

    c.model = ml_collections.ConfigDict(dict(
        name="small_cnn",
        kwargs=ml_collections.ConfigDict(),  # extra model fields (width, norm, ...)
        dtype="float32",                     # computation dtype: float32 | bfloat16
        init_from="",                        # checkpoint dir or prior to start from
    ))

    # Privacy: everything that decides ε in one block.
    c.privacy = ml_collections.ConfigDict(dict(
        mode="dpsgd",              # dpsgd | none (non-private, e.g. local-DP data)
        target_epsilon=0.0,        # σ is calibrated to reach this ε after all steps, or
        noise_multiplier=0.0,      # σ is given and ε computed: set exactly one of the two
        delta=1e-5,                # must be < 1 / (training set size)
        clip_norm=1.0,
        sampling="poisson",        # poisson | shuffle (shuffle: ε does NOT apply)
        accountant="pld",          # pld | rdp
        clipping="vmap",           # vmap (per-example grads) | fast (ghost/book-keeping)
        fast_method="auto",        # fast clipping's norm form per layer: auto (fewest
                                   # operations) | measured (timed here) | direct | ghost
        unit="example",            # example | patient (data with patient ids, e.g. Kermany)
    ))

    # Private training in phases (DP-RandP, Tang et al. 2023): the first
    # `head_steps` steps train only the last norm's affine and the classifier
    # (a DP linear probe on a prior), then everything trains. One accounted run.
    c.phases = ml_collections.ConfigDict(dict(
        head_steps=0,               # 0 = one phase (plain DP-SGD)
        head_learning_rate=15.0,
        head_noise_multiplier=0.0,  # 0 = the same σ as the rest of the run
    ))

    # Phase I of DP-RandP: a prior learned from random-process images, no
    # private data (runs before private training when steps > 0 and
    # model.init_from is empty).
    c.pretrain = ml_collections.ConfigDict(dict(
        steps=0,
        batch_size=256,
        families=("stylegan_oriented",),
        resolution=32,              # of the generated images (= private images' size)
        channels=3,                 # 1 makes grey images for grey private data
        group_size=32,              # StyleGAN images sharing one random network
        loss="align_uniform",       # align_uniform (the paper) | infonce
        temperature=0.2,            # for infonce
        learning_rate=0.12,
        momentum=0.9,
        weight_decay=1e-4,
        decay_at=(0.775, 0.85, 0.925),  # lr x0.1 at these fractions (155/170/185 of 200)
        hidden_dim=4096,            # projection head widths
        projection_dim=128,
        checkpoint_every=500,
        log_every=50,
    ))

    # Local DP (Singh et al. 2020, done properly): before training, every
    # stored value of every training image gets independent Laplace noise of
    # scale β on [0, 1] (ε = 1/β per value, C/β per pixel, d/β per image; grey
    # images repeated into RGB are perturbed once, before the repetition).
    # Labels are NOT perturbed: local DP does not protect them. 0 = off. The
    # perturbed set is made once per run and kept in WORKDIR/private/ (private,
    # like the checkpoints), so a resumed run reuses it.
    c.ldp = ml_collections.ConfigDict(dict(
        scale=0.0,
        seed=-1,                 # -1: the noise comes from OS entropy (the default, and the
                                 # only private choice); >= 0: a fixed seed, a DEBUGGING
                                 # option only: whoever knows it subtracts the noise exactly
    ))

    # Test metrics beyond accuracy (AUROC, balanced accuracy, macro-F1, kappa,
    # confusion matrix, bootstrap 95 % intervals) for clinical data sets.
    c.metrics = ml_collections.ConfigDict(dict(
        clinical=False,
        ordinal=False,           # quadratic weighted kappa (graded labels)
        bootstrap_resamples=1000,
        test_train_overlap=False,  # count test images identical to training images (a
                                   # membership oracle: NOT covered by ε)
    ))

    # Class imbalance: logit adjustment (Menon et al. 2021) trains on logits + τ·log π,
    # so the argmax of the plain logits is the prior-corrected (balanced) decision. The
    # prior π is public (`public_prior`), or estimated from the private labels with
    # Laplace-noised class counts at ε = `prior_epsilon` (`dpjax.privacy.class_prior`),
    # a release composed into the run's ε (σ calibration leaves room for it), or, for
    # non-private runs only, the exact training counts ("empirical").
    c.imbalance = ml_collections.ConfigDict(dict(
        method="none",          # none | logit_adjustment
        prior="dp",             # dp | public | empirical (privacy.mode=none only)
        prior_epsilon=0.1,      # ε of the noisy class counts (prior=dp)
        public_prior=(),        # class probabilities from public knowledge (prior=public)
        prior_floor=1.0,        # noisy counts are clipped below at this count
        tau=1.0,                # offsets τ·log π
    ))

    c.batch_size = 256          # expected logical batch B (Poisson: q = B / N)
    c.micro_batch_size = 256    # rows per device per micro-batch (memory knob; 0 = the
                                # largest that fits, from the compiled step's memory)
    c.augmult = 1               # K augmented views per example, one clipped gradient
    c.num_steps = 100           # private steps (noisy updates)...
    c.num_epochs = 0.0          # ...or, if > 0, this many passes: steps = epochs · N / B
    c.optimizer = ml_collections.ConfigDict(dict(
        name="sgd",             # sgd | momentum | adam
        learning_rate=1.0,
        momentum=0.9,           # for name=momentum
        weight_decay=0.0,
        schedule="constant",    # constant | cosine | warmup_cosine
        warmup_steps=0,
    ))
    c.ema_decay = 0.0           # 0 disables EMA of parameters
    c.ema_warmup = False        # decay min(ema_decay, (1 + t) / (10 + t))

    c.eval_every = 0            # steps between evaluations (0 = only at the end)
    c.eval_batch_size = 1024
    c.log_every = 10
    c.checkpoint_every = 100
    c.train_metrics = True      # loss/accuracy on private data (NOT covered by ε)
    c.seed = -1                 # -1: OS entropy, drawn once and shared by all hosts (the
                                # default); >= 0: a fixed seed, a DEBUGGING option: whoever
                                # knows it can remove the noise, and runs sharing it are not
                                # independent releases
    c.progress_bar = True
    c.lock()
    c.model.kwargs.unlock()  # model-specific fields (width, norm, ...) are free-form
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"eps=1,runlocal=True"` against `defaults`, rejecting unknown keys.

    Values are cast to the type of the default (`bool` accepts True/False/1/0).
    """
    result = ml_collections.ConfigDict(defaults)
    if not arg:
        return result
    for item in arg.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"Config argument {item!r} is not key=value; "
                              f"valid keys: {', '.join(sorted(defaults))}.")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in defaults:
            raise ConfigError(f"Unknown config argument {key!r}; valid keys: "
                              f"{', '.join(sorted(defaults))}.")
        result[key] = _cast(value, defaults[key], key)
    return result


def _cast(text: str, like: Any, name: str) -> Any:
    try:
        if isinstance(like, bool):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, (tuple, list)):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if like is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    except (ValueError, SyntaxError):
        raise ConfigError(f"{name}={text!r} is not a valid {type(like).__name__}.") from None


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies `a.b=value` overrides.

    Raises:
      ConfigError: missing file, no get_config, unknown field, wrong type.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist (expected configs/NAME.py).")
    module_spec = importlib.util.spec_from_file_location("dpjax_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as e:  # a broken config file is the user's to fix
        raise ConfigError(f"Config file {path} failed to load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path} has no get_config(arg) function.")
    try:
        config = module.get_config(arg or None)
    except ConfigError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"Config file {path}: {e}") from e
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `a.b=value` override, with the type of the existing field."""
    if "=" not in item:
        raise ConfigError(f"Override {item!r} must be --config.FIELD=VALUE.")
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"Unknown config field {'.'.join(parents[:i + 1])!r}.")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"Unknown config field {key!r}.")
    if leaf not in node:
        if node.is_locked:
            raise ConfigError(f"Unknown config field {key!r}; valid fields here: "
                              f"{', '.join(sorted(node.keys()))}.")
        node[leaf] = _cast(value, None, key)
        return
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"Config field {key!r} is a group; set one of its fields.")
    node[leaf] = _cast(value, old, key)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()


_CHOICES = {
    "dataset.on_bad_image": ("error", "skip"),
    "dataset.use_val": ("ignore", "train"),
    "model.dtype": ("float32", "bfloat16"),
    "privacy.mode": ("dpsgd", "none"),
    "privacy.sampling": ("poisson", "shuffle"),
    "privacy.accountant": ("pld", "rdp"),
    "privacy.clipping": ("vmap", "fast"),
    "privacy.fast_method": ("auto", "measured", "direct", "ghost"),
    "privacy.unit": ("example", "patient"),
    "pretrain.loss": ("align_uniform", "infonce"),
    "optimizer.name": ("sgd", "momentum", "adam"),
    "optimizer.schedule": ("constant", "cosine", "warmup_cosine"),
    "imbalance.method": ("none", "logit_adjustment"),
    "imbalance.prior": ("dp", "public", "empirical"),
}
_POSITIVE_INTS = ("batch_size", "augmult", "num_steps",
                  "eval_batch_size", "log_every", "checkpoint_every")
_NON_NEGATIVE_INTS = ("micro_batch_size", "eval_every", "dataset.image_size",
                      "augment.crop_padding", "optimizer.warmup_steps", "phases.head_steps",
                      "pretrain.steps")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict, choices: dict | None = None) -> None:
    """Checks every field's type and range; raises ConfigError on the first fault.

    Checks that need the data (batch ≤ N, δ < 1/N) are in `validate_for_data`.
    """
    from dpjax.data import registry, sources  # noqa: F401  (sources registers the built-ins)

    registry.check_name(config.dataset.name)
    allowed = dict(_CHOICES, **(choices or {}))
    for key, options in allowed.items():
        value = _get(config, key)
        if value not in options:
            raise ConfigError(f"Expected {key} in {options}, got {value!r}.")
    for key in _POSITIVE_INTS:
        value = _get(config, key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"Expected {key}={value!r} to be a positive integer.")
    for key in _NON_NEGATIVE_INTS:
        value = _get(config, key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ConfigError(f"Expected {key}={value!r} to be an integer >= 0.")
    p = config.privacy
    _positive_float("optimizer.learning_rate", config.optimizer.learning_rate)
    if config.phases.head_steps:
        if not config.num_epochs and config.phases.head_steps >= config.num_steps:
            raise ConfigError(f"phases.head_steps={config.phases.head_steps} must be below "
                              f"num_steps={config.num_steps} (the phases share the steps).")
        _positive_float("phases.head_learning_rate", config.phases.head_learning_rate)
        if config.phases.head_noise_multiplier < 0:
            raise ConfigError("Expected phases.head_noise_multiplier >= 0.")
    if not 0 <= config.ema_decay < 1:
        raise ConfigError(f"Expected ema_decay={config.ema_decay!r} in [0, 1).")
    if not 0 < config.dataset.test_fraction < 1:
        raise ConfigError(
            f"Expected dataset.test_fraction={config.dataset.test_fraction!r} in (0, 1).")
    if len(config.dataset.mean) != len(config.dataset.std) or any(
            s <= 0 for s in config.dataset.std):
        raise ConfigError("dataset.mean and dataset.std must have the same length and std > 0.")
    if config.ldp.scale < 0:
        raise ConfigError(f"Expected ldp.scale={config.ldp.scale} >= 0 (0 = no local DP).")
    ldp_seed = config.ldp.seed
    if not (isinstance(ldp_seed, int) and not isinstance(ldp_seed, bool)
            and -1 <= ldp_seed < 2 ** 63):
        raise ConfigError(f"Expected ldp.seed={ldp_seed!r} to be -1 (OS entropy, the default) "
                          "or a fixed integer in [0, 2**63) (debugging only: anyone who knows "
                          "it can subtract the noise).")
    _validate_imbalance(config)
    if config.dataset.name in ("npz", "folder", "csv", "kermany") and not config.dataset.path:
        raise ConfigError(f"dataset.path is empty: set it to the {config.dataset.name} data "
                          "(--config.dataset.path=...).")
    if config.dataset.name == "tfds" and not config.dataset.tfds_name:
        raise ConfigError("dataset.tfds_name is empty: set it, e.g. --config.dataset.tfds_name="
                          "cifar10.")
    if p.mode == "dpsgd":
        _positive_float("privacy.clip_norm", p.clip_norm)
        if not (isinstance(p.delta, float) and 0 < p.delta < 1):
            raise ConfigError(f"Expected privacy.delta={p.delta!r} in (0, 1).")
        if p.noise_multiplier < 0:
            raise ConfigError(f"Expected privacy.noise_multiplier={p.noise_multiplier} >= 0.")
        if p.noise_multiplier == 0:
            _positive_float("privacy.target_epsilon", p.target_epsilon,
                            hint=" (or set privacy.noise_multiplier > 0)")


def validate_for_data(config: ml_collections.ConfigDict, num_train: int,
                      image_shape: Sequence[int] | None = None) -> None:
    """Checks that depend on the training set: its size N and (if given) image shape."""
    if config.num_epochs < 0:
        raise ConfigError(f"Expected num_epochs={config.num_epochs} >= 0.")
    if config.batch_size > num_train:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the training set "
                          f"({num_train} examples): lower batch_size.")
    p = config.privacy
    if p.mode == "dpsgd" and p.delta >= 1.0 / num_train:
        raise ConfigError(
            f"privacy.delta={p.delta:g} is not below 1/N = {1.0 / num_train:.3g} for N = "
            f"{num_train} training examples: a δ that large allows releasing whole examples; "
            "lower privacy.delta.")
    if image_shape is not None:
        channels = image_shape[-1]
        if len(config.dataset.mean) not in (1, channels):
            raise ConfigError(f"dataset.mean has {len(config.dataset.mean)} values but the "
                              f"images have {channels} channels: give 1 or {channels} values.")


def _validate_imbalance(config: ml_collections.ConfigDict) -> None:
    """The `imbalance` block (the prior's size against the classes is checked with the data)."""
    m = config.imbalance
    if m.method == "none":
        return
    _positive_float("imbalance.prior_epsilon", m.prior_epsilon)
    _positive_float("imbalance.prior_floor", m.prior_floor)
    _positive_float("imbalance.tau", m.tau)
    if m.prior == "public":
        prior = tuple(m.public_prior)
        if len(prior) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and math.isfinite(v) and v > 0 for v in prior) \
                or abs(sum(prior) - 1.0) > 1e-3:
            raise ConfigError(f"imbalance.public_prior={prior!r} must list one probability > 0 "
                              "per class, summing to 1 (e.g. (0.26, 0.74)), from public "
                              "knowledge, never from the private labels.")
    elif tuple(m.public_prior):
        raise ConfigError(f"imbalance.public_prior is set but imbalance.prior={m.prior!r}: set "
                          "imbalance.prior=public, or clear public_prior.")
    if m.prior == "empirical" and config.privacy.mode != "none":
        raise ConfigError("imbalance.prior=empirical uses the exact class counts of the private "
                          "labels, which DP-SGD's ε does not cover: use imbalance.prior=dp "
                          "(noisy counts, accounted) or public.")


def _positive_float(name: str, value, hint: str = "") -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ConfigError(f"Expected {name}={value!r} to be a finite number > 0{hint}.")
