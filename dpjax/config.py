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
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from dpjax import validate as validate_lib
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
        head_steps=0,               # 0 = one phase (plain DP-SGD); = num_steps: probe only
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
    c.async_checkpoints = False  # write checkpoints in the background (pays when checkpoints
                                 # are frequent and large, e.g. ImageNet every 20 steps)
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
        kind = "tuple" if isinstance(like, (tuple, list)) else type(like).__name__
        validate_lib.fail(name, text, f"to be a {kind} (like {like!r})")


def given_keys(arg: str | None) -> set[str]:
    """The keys `arg` sets explicitly ("cpu=True,batch=64" -> {"cpu", "batch"}).

    A variant switch such as `cpu=True` changes defaults only: a config keeps
    every value given explicitly beside it (see `configs/common.py`).
    """
    return {item.split("=", 1)[0].strip() for item in (arg or "").split(",") if "=" in item}


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies `a.b=value` overrides.

    A config inside a package (`configs/` has an `__init__.py`) is imported
    under its package's name with the package's parent on `sys.path`, so it
    can import the others (`from configs import common`); any other file is
    run with its own directory on `sys.path` (it may import its neighbours).

    Raises:
      ConfigError (one line naming the file): not a `.py` file, missing, fails
        to run (any exception), has no get_config, returns something other
        than a ConfigDict built on `base_config()`; an unknown field or a
        wrong type in `overrides`.
    """
    path, _, arg = spec.partition(":")
    if not path.endswith(".py"):
        raise ConfigError(f"Config file {path!r} is not a Python file: give configs/NAME.py "
                          "(a file defining get_config(arg)).")
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist (expected configs/NAME.py).")
    try:
        config = _run_config_file(os.path.abspath(path), arg or None)
    except ConfigError as e:
        if path in str(e) or os.path.basename(path) in str(e):
            raise
        raise ConfigError(f"Config file {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 — any fault of a config file is the user's to fix
        raise ConfigError(f"Config file {path} failed: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"Config file {path}: get_config returned {type(config).__name__}, "
                          "not an ml_collections.ConfigDict: build it on "
                          "dpjax.config.base_config() and return it.")
    missing = sorted(set(base_config().keys()) - set(config.keys()))
    if missing:
        raise ConfigError(f"Config file {path}: the config lacks {', '.join(missing[:5])}: "
                          "build it on dpjax.config.base_config().")
    for item in overrides:
        apply_override(config, item)
    return config


def _run_config_file(path: str, arg: str | None) -> Any:
    """`get_config(arg)` of the file at `path` (absolute), imported as described above."""
    directory = os.path.dirname(path)
    parts = [os.path.splitext(os.path.basename(path))[0]]
    root = directory
    while os.path.isfile(os.path.join(root, "__init__.py")):
        parts.insert(0, os.path.basename(root))
        root = os.path.dirname(root)
    if len(parts) > 1:  # inside a package: configs.quickstart, with configs' parent on the path
        name = ".".join(parts)
        _forget_other_package(parts[0], os.path.join(root, parts[0]))
    else:
        name = f"dpjax_user_config_{parts[0]}"
        root = directory
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        if len(parts) > 1:
            importlib.import_module(parts[0])  # the package itself, for relative imports
        module_spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(f"Config file {path} has no get_config(arg) function.")
        return module.get_config(arg)
    finally:
        if added and root in sys.path:
            sys.path.remove(root)


def _forget_other_package(package: str, location: str) -> None:
    """Drops an already imported `package` that lives elsewhere (another checkout's
    configs/), so that this config's imports find its own neighbours."""
    loaded = sys.modules.get(package)
    paths = [os.path.abspath(p) for p in getattr(loaded, "__path__", [])]
    if loaded is not None and os.path.abspath(location) not in paths:
        for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[key]


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
    "pretrain.channels": (1, 3),
    "optimizer.name": ("sgd", "momentum", "adam"),
    "optimizer.schedule": ("constant", "cosine", "warmup_cosine"),
    "imbalance.method": ("none", "logit_adjustment"),
    "imbalance.prior": ("dp", "public", "empirical"),
}
_POSITIVE_INTS = ("batch_size", "augmult", "num_steps", "eval_batch_size", "log_every",
                  "checkpoint_every", "metrics.bootstrap_resamples", "pretrain.batch_size",
                  "pretrain.group_size", "pretrain.resolution", "pretrain.hidden_dim",
                  "pretrain.projection_dim", "pretrain.checkpoint_every", "pretrain.log_every")
_NON_NEGATIVE_INTS = ("micro_batch_size", "eval_every", "dataset.image_size",
                      "dataset.split_seed", "dataset.num_workers", "augment.crop_padding",
                      "optimizer.warmup_steps", "phases.head_steps", "pretrain.steps")
_POSITIVE_FLOATS = ("optimizer.learning_rate", "pretrain.learning_rate",
                    "pretrain.temperature")
_NON_NEGATIVE_FLOATS = ("num_epochs", "optimizer.weight_decay", "pretrain.weight_decay",
                        "phases.head_noise_multiplier", "ldp.scale")
_BOOLS = ("augment.flip", "dataset.streaming", "metrics.clinical", "metrics.ordinal",
          "metrics.test_train_overlap", "ema_warmup", "train_metrics", "progress_bar",
          "async_checkpoints")
_STRINGS = ("name", "dataset.tfds_name", "dataset.data_dir", "dataset.path",
            "dataset.cache_dir", "dataset.train_split", "dataset.test_split",
            "model.name", "model.init_from")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict, choices: dict | None = None) -> None:
    """Checks every field's type and range; raises ConfigError on the first fault.

    Everything a run reads from the config is checked here, before anything
    is loaded, compiled or written, so that no mistake surfaces after
    training (a bootstrap count of 0, `pretrain.log_every=0`, a NaN σ). The
    rules themselves are `dpjax.validate`'s. What depends on the data
    (batch ≤ N, δ < 1/N, channels) is `validate_for_data`; the rules between
    σ, the target ε and the steps are the DP plan's (`dpjax.privacy.plan`).
    """
    from dpjax.data import random_processes, registry, sources  # noqa: F401 (registers sources)

    registry.check_name(config.dataset.name)
    for key, options in dict(_CHOICES, **(choices or {})).items():
        validate_lib.one_of(key, _get(config, key), options)
    for key in _STRINGS:
        if not isinstance(_get(config, key), str):
            validate_lib.fail(key, _get(config, key), "to be a string")
    for key in _BOOLS:
        validate_lib.boolean(key, _get(config, key))
    for key in _POSITIVE_INTS:
        validate_lib.positive_int(key, _get(config, key))
    for key in _NON_NEGATIVE_INTS:
        validate_lib.non_negative_int(key, _get(config, key))
    for key in _POSITIVE_FLOATS:
        validate_lib.positive_finite(key, _get(config, key))
    for key in _NON_NEGATIVE_FLOATS:
        validate_lib.non_negative_finite(key, _get(config, key))
    validate_lib.seed("seed", config.seed)
    validate_lib.seed("ldp.seed", config.ldp.seed)
    _validate_dataset(config.dataset)
    _validate_optimisation(config)
    _validate_pretrain(config.pretrain, random_processes.FAMILIES)
    _validate_imbalance(config)
    p = config.privacy
    if p.mode == "dpsgd":
        validate_lib.positive_finite("privacy.clip_norm", p.clip_norm)
        validate_lib.probability("privacy.delta", p.delta,
                                 fix="lower privacy.delta (it must be below 1/N)")
        validate_lib.non_negative_finite("privacy.target_epsilon", p.target_epsilon,
                                         fix="0 means: train at privacy.noise_multiplier")
        validate_lib.non_negative_finite("privacy.noise_multiplier", p.noise_multiplier,
                                         fix="0 means: calibrate σ to privacy.target_epsilon")


def validate_for_data(config: ml_collections.ConfigDict, num_train: int,
                      image_shape: Sequence[int] | None = None) -> None:
    """Checks that depend on the training set: its size N and (if given) image shape."""
    validate_lib.integer("batch_size", config.batch_size, 1, num_train,
                         fix=f"the training set has {num_train} examples: lower batch_size")
    p = config.privacy
    if p.mode == "dpsgd":
        validate_lib.in_range("privacy.delta", p.delta, 0.0, 1.0 / num_train,
                              low_open=True, high_open=True,
                              fix=f"δ must be below 1/N for N = {num_train} training examples "
                              "(a larger δ allows releasing whole examples): lower "
                              "privacy.delta")
    if image_shape is not None:
        channels = image_shape[-1]
        if len(config.dataset.mean) not in (1, channels):
            raise ConfigError(f"dataset.mean has {len(config.dataset.mean)} values but the "
                              f"images have {channels} channels: give 1 or {channels} values.")


def _validate_dataset(d: ml_collections.ConfigDict) -> None:
    validate_lib.probability("dataset.test_fraction", d.test_fraction)
    mean = validate_lib.numbers_tuple("dataset.mean", d.mean,
                                      fix="give public per-channel constants, e.g. (0.5,)")
    std = validate_lib.numbers_tuple("dataset.std", d.std, positive=True,
                                     fix="give public per-channel constants, e.g. (0.25,)")
    if len(mean) != len(std):
        raise ConfigError(f"dataset.mean has {len(mean)} values and dataset.std {len(std)}: "
                          "give both one value per channel (or one value for all).")
    if d.name in ("npz", "folder", "csv", "kermany") and not d.path:
        raise ConfigError(f"dataset.path is empty: set it to the {d.name} data "
                          "(--config.dataset.path=...).")
    if d.name == "tfds" and not d.tfds_name:
        raise ConfigError("dataset.tfds_name is empty: set it, e.g. --config.dataset.tfds_name="
                          "cifar10.")
    for key in ("train_split", "test_split"):
        if not d[key]:
            validate_lib.fail(f"dataset.{key}", d[key], "to name a split", "e.g. train, test")


def _validate_optimisation(config: ml_collections.ConfigDict) -> None:
    validate_lib.in_range("optimizer.momentum", config.optimizer.momentum, 0.0, 1.0,
                          high_open=True)
    validate_lib.in_range("ema_decay", config.ema_decay, 0.0, 1.0, high_open=True,
                          fix="0 switches EMA off; 0.999 is typical")
    head = config.phases.head_steps
    if head:
        if not config.num_epochs:
            validate_lib.integer("phases.head_steps", head, 0, config.num_steps,
                                 fix="the phases share num_steps (equal: a linear probe "
                                 "only): lower phases.head_steps or raise num_steps")
        validate_lib.positive_finite("phases.head_learning_rate",
                                     config.phases.head_learning_rate)


def _validate_pretrain(t: ml_collections.ConfigDict, families: Sequence[str]) -> None:
    if isinstance(t.families, str) or not isinstance(t.families, Sequence) or not t.families:
        validate_lib.fail("pretrain.families", t.families, "to be a non-empty tuple of "
                          f"families from {', '.join(families)}")
    for family in t.families:
        validate_lib.one_of("pretrain.families", family, families)
    # The random-process generators' smallest image (`random_processes._check_shape_args`).
    validate_lib.integer("pretrain.resolution", t.resolution, 4,
                         fix="the random-process generators make images of 4 px or more")
    validate_lib.in_range("pretrain.momentum", t.momentum, 0.0, 1.0, high_open=True)
    if isinstance(t.decay_at, str) or not isinstance(t.decay_at, Sequence):
        validate_lib.fail("pretrain.decay_at", t.decay_at,
                          "to be a tuple of fractions of pretrain.steps in (0, 1)")
    for fraction in t.decay_at:
        validate_lib.probability("pretrain.decay_at", fraction)


def _validate_imbalance(config: ml_collections.ConfigDict) -> None:
    """The `imbalance` block (the prior's size against the classes is checked with the data)."""
    m = config.imbalance
    if m.method == "none":
        return
    validate_lib.positive_finite("imbalance.prior_epsilon", m.prior_epsilon)
    validate_lib.positive_finite("imbalance.prior_floor", m.prior_floor)
    validate_lib.positive_finite("imbalance.tau", m.tau)
    if m.prior == "public":
        prior = tuple(m.public_prior)
        if len(prior) < 2 or not all(validate_lib.is_number(v) and math.isfinite(v) and v > 0
                                     for v in prior) or abs(sum(prior) - 1.0) > 1e-3:
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
