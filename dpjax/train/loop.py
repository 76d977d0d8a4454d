"""The training loop: sample -> accumulate -> update -> log -> evaluate -> checkpoint.

`train_and_evaluate(config, workdir)` is the whole of `dpjax train`. It
validates the config and the data before compiling or writing anything,
resumes from the latest checkpoint in `workdir` when there is one, and ends
by writing `workdir/summary.json`.

Where each privacy decision is made:
  * batches: `privacy.sampling.PoissonSampler` (deterministic in (seed, step));
  * clipping and noise: `privacy.clipping`, called from `train.step`;
  * ε: `privacy.accounting`, fed by the `PrivacyLedger` the loop fills with
    one record per update it applied, saved in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpjax import config as config_lib
from dpjax import models
from dpjax.data import sources
from dpjax.data import streaming as streaming_lib
from dpjax.errors import ConfigError, DpjaxError
from dpjax.privacy import accounting
from dpjax.privacy.sampling import PoissonSampler, PrivacyLedger, ShuffleSampler
from dpjax.randp import pretrain, priors
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import optim, writers
from dpjax.train import step as step_lib

log = logging.getLogger("dpjax")

# Fields that do not change what is computed: a resumed run may change them.
_RESUME_SAFE_FIELDS = ("progress_bar", "log_every", "eval_every", "checkpoint_every",
                       "eval_batch_size", "train_metrics", "micro_batch_size", "name")


# --- privacy plan -----------------------------------------------------------

HEAD_PARAMS = ("final_norm/", "classifier/")


def is_head_param(path: str) -> bool:
    """The parameters a DP linear probe trains: the last norm's affine and the classifier."""
    return path.startswith(HEAD_PARAMS)


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """A stretch of private steps with one σ, learning rate and trainable set."""

    name: str
    steps: int
    noise_multiplier: float
    learning_rate: float
    trainable: str          # "all" | "head"


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """σ, q, steps and δ of a run, decided once before training."""

    private: bool
    phases: tuple[PhaseSpec, ...]
    sampling_rate: float
    delta: float
    accountant: str
    clip_norm: float
    calibrated: bool

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def noise_multiplier(self) -> float:
        """σ of the main (last) phase."""
        return self.phases[-1].noise_multiplier

    def phase_index(self, step: int) -> int:
        """Index of the phase that runs step `step` (0-based)."""
        end = 0
        for i, p in enumerate(self.phases):
            end += p.steps
            if step < end:
                return i
        return len(self.phases) - 1

    def planned_epsilon(self) -> float | None:
        if not self.private:
            return None
        return accounting.epsilon(
            [accounting.Phase(p.steps, p.noise_multiplier, self.sampling_rate, p.name)
             for p in self.phases], self.delta, self.accountant)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """num_steps, or num_epochs · N / B rounded up when num_epochs > 0."""
    if config.num_epochs > 0:
        return max(1, math.ceil(config.num_epochs * num_train / config.batch_size))
    return config.num_steps


def plan_privacy(config: ml_collections.ConfigDict, num_train: int) -> PrivacyPlan:
    """Decides the phases and their σ: configured, or calibrated to privacy.target_epsilon."""
    p = config.privacy
    q = config.batch_size / num_train
    head = config.phases.head_steps
    lr = config.optimizer.learning_rate
    num_steps = total_steps(config, num_train)
    if head >= num_steps:
        raise ConfigError(f"phases.head_steps={head} must be below the {num_steps} steps.")
    if head:
        shapes = [("phase2_linear_probe", head, config.phases.head_learning_rate, "head"),
                  ("phase3_finetune", num_steps - head, lr, "all")]
    else:
        shapes = [("dpsgd", num_steps, lr, "all")]

    def with_sigma(main: float, head_sigma: float) -> tuple[PhaseSpec, ...]:
        return tuple(PhaseSpec(n, k, head_sigma if t == "head" else main, l, t)
                     for n, k, l, t in shapes)

    if p.mode == "none":
        return PrivacyPlan(False, with_sigma(0.0, 0.0), q, p.delta, p.accountant, math.inf,
                           False)
    head_sigma = config.phases.head_noise_multiplier
    if p.noise_multiplier > 0:
        return PrivacyPlan(True, with_sigma(p.noise_multiplier, head_sigma or p.noise_multiplier),
                           q, p.delta, p.accountant, p.clip_norm, False)
    if head and head_sigma > 0:
        fixed = [accounting.Phase(head, head_sigma, q)]
        sigma = accounting.calibrate_noise_multiplier(
            p.target_epsilon, p.delta, q, num_steps - head, p.accountant, fixed)
        phases = with_sigma(sigma, head_sigma)
    else:
        sigma = accounting.calibrate_noise_multiplier(
            p.target_epsilon, p.delta, q, num_steps, p.accountant)
        phases = with_sigma(sigma, sigma)
    return PrivacyPlan(True, phases, q, p.delta, p.accountant, p.clip_norm, True)


def account(config: ml_collections.ConfigDict, data: sources.DataSplits | None = None) -> dict:
    """σ and ε of a config without training (what `dpjax account` prints)."""
    config_lib.validate(config)
    data = data if data is not None else sources.load(config.dataset)
    config_lib.validate_for_data(config, len(data.train))
    plan = plan_privacy(config, len(data.train))
    result = {"num_train": len(data.train), "batch_size": config.batch_size,
              "sampling_rate": plan.sampling_rate, "steps": plan.steps, "delta": plan.delta,
              "accountant": plan.accountant, "noise_multiplier": plan.noise_multiplier,
              "calibrated": plan.calibrated, "sampling": config.privacy.sampling}
    result["phases"] = [dataclasses.asdict(ph) for ph in plan.phases]
    if plan.private:
        phases = [accounting.Phase(ph.steps, ph.noise_multiplier, plan.sampling_rate)
                  for ph in plan.phases]
        result["epsilon"] = accounting.epsilon(phases, plan.delta, plan.accountant)
        other = "rdp" if plan.accountant == "pld" else "pld"
        result[f"epsilon_{other}"] = accounting.epsilon(phases, plan.delta, other)
    else:
        result["epsilon"] = None
    return result


# --- small helpers -----------------------------------------------------------

def image_shape(ds) -> tuple:
    """(H, W, C) of a split held in memory or streamed from files."""
    return tuple(ds.image_shape)


def images_of(ds, start: int, stop: int) -> np.ndarray:
    """Images start..stop of a split, from memory or decoded from files."""
    if not isinstance(ds, sources.ArrayDataset):
        return ds.fetch(range(start, min(stop, len(ds))))[0]
    return ds.images[start:stop]


def privacy_units(config: ml_collections.ConfigDict, data: sources.DataSplits):
    """For privacy.unit=patient: (P, K) image indices of each patient, −1 padded.

    The sampler then samples patients, and each patient's summed gradient is
    clipped once: ε is per patient. None for per-example privacy.
    """
    if config.privacy.unit == "example":
        return None
    ids = data.info.get("train_patient_ids")
    if ids is None:
        raise ConfigError(f"privacy.unit=patient needs patient ids, and {data.name} has none "
                          "(the Kermany chest X-ray loader provides them): use "
                          "privacy.unit=example, which protects single images only.")
    ids = np.asarray(ids, np.int64)
    if ids.shape != (len(data.train),):
        raise ConfigError(f"{data.name}: {ids.shape[0]} patient ids for {len(data.train)} "
                          "training images.")
    counts = np.bincount(ids)
    table = -np.ones((len(counts), int(counts.max())), np.int32)
    fill = np.zeros(len(counts), np.int64)
    for image, patient in enumerate(ids):
        table[patient, fill[patient]] = image
        fill[patient] += 1
    return table[counts > 0]


def build_model(config: ml_collections.ConfigDict, data: sources.DataSplits,
                unit_size: int = 0):
    """(model, initial variables, input spec) for a config and its data."""
    model = models.get_model(config.model.name, data.num_classes,
                             dtype=jnp.dtype(config.model.dtype), **config.model.kwargs)
    sample = np.zeros((1,) + image_shape(data.train), np.float32)
    # The "rbg" generator compiles the initialisers several times faster than the
    # default on CPU; initial values are public (no privacy role).
    variables = model.init(jax.random.key(0, impl="rbg"), sample)
    spec = step_lib.InputSpec(mean=tuple(config.dataset.mean), std=tuple(config.dataset.std),
                              crop_padding=config.augment.crop_padding, flip=config.augment.flip,
                              augmult=config.augmult, unit_size=unit_size)
    return model, variables, spec


def _draw_seed(config) -> tuple[int, str]:
    if config.seed >= 0:
        return int(config.seed), "config"
    return secrets.randbits(63), "os"


def _master_key(seed: int) -> jax.Array:
    """A PRNG key from all 64 bits of the seed (jax.random.key would truncate)."""
    words = np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(words, impl="threefry2x32")


def _replicate(tree):
    """Copies of every leaf on every local device, stacked on a leading axis (pmap layout)."""
    devices = jax.local_devices()
    return _to_devices(jax.tree_util.tree_map(
        lambda x: np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), tree))


def _auto_micro_batch_size(config, trainable_and_fns, params, data, units, num_devices: int,
                           streaming: bool) -> int:
    """micro_batch_size=0: the largest per-device micro-batch the step fits (`train.memory`)."""
    from dpjax.train import memory

    is_trainable, fns = trainable_and_fns
    trainable, _ = step_lib.split_params(params, is_trainable)
    acc = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), trainable)
    row = image_shape(data.train) if units is None else (units.shape[1],) + image_shape(
        data.train)
    label_row = () if units is None else (units.shape[1],)

    def measure(m: int) -> int:
        return memory.compiled_bytes(
            fns.accumulate_one_device, params, acc, step_lib.zero_stats(),
            jax.ShapeDtypeStruct((m,) + tuple(row), jnp.uint8),
            jax.ShapeDtypeStruct((m,) + label_row, jnp.int32),
            jax.ShapeDtypeStruct((m,), jnp.int32), jax.ShapeDtypeStruct((m,), jnp.bool_),
            jax.random.key(0), jnp.float32(1.0))

    param_bytes = sum(x.size * 4 for x in jax.tree_util.tree_leaves(params))
    data_bytes = 0 if streaming else data.train.images.nbytes
    # Beside the step stay the state (params, EMA, optimiser moments) and the data.
    budget = memory.MEMORY_FRACTION * memory.device_memory_bytes() - 4 * param_bytes - data_bytes
    cap = -(-config.batch_size // num_devices)
    m, info = memory.fit_micro_batch_size(measure, budget, cap)
    if jax.process_count() > 1:  # every host must use the same size
        from jax.experimental import multihost_utils

        m = int(multihost_utils.broadcast_one_to_all(np.int32(m)))
    log.info("micro_batch_size=0 (auto): %d per device (%.2f GiB of a %.2f GiB budget)", m,
             info["bytes"] / 2**30, info["budget"] / 2**30)
    return m


def _to_devices(tree):
    """Leaves with a leading local-device axis, one slice per local device (pmap layout)."""
    devices = jax.local_devices()
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), ("d",)),
                                          jax.sharding.PartitionSpec("d"))
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def _unreplicate(tree):
    """This host's first copy of a replicated (pmapped) pytree, as numpy."""
    def first(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_shards[0].data)[0]
        return np.asarray(x[0])

    return jax.tree_util.tree_map(first, tree)


def _fingerprint(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in _RESUME_SAFE_FIELDS}


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            out.append(f"{prefix}{k}")
    return out


def _environment() -> dict:
    import importlib.metadata as md
    import subprocess

    versions = {}
    for name in ("dpjax", "jax", "jaxlib", "flax", "optax", "dp-accounting", "orbax-checkpoint",
                 "numpy", "ml-collections"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"versions": versions, "git_commit": commit, "devices": [str(d) for d in jax.devices()],
            "process_count": jax.process_count()}


def count_overlap(train: np.ndarray, test: np.ndarray) -> int:
    """Number of test images that are byte-identical to a training image."""
    train_hashes = {hashlib.blake2b(x.tobytes(), digest_size=16).digest() for x in train}
    return sum(hashlib.blake2b(x.tobytes(), digest_size=16).digest() in train_hashes
               for x in test)


def evaluate_arrays(predict, params, images: np.ndarray, labels: np.ndarray,
                    batch_size: int) -> dict:
    """Accuracy and class probabilities of `params` on (images, labels)."""
    probs = []
    n = len(labels)
    for start in range(0, n, batch_size):
        chunk = images_of(images, start, start + batch_size) if not isinstance(images, np.ndarray) \
            else images[start:start + batch_size]
        pad = batch_size - len(chunk) if n > batch_size else 0
        if pad:  # keep one compiled shape
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        logits = np.asarray(predict(params, chunk))[: len(chunk) - pad]
        probs.append(np.asarray(jax.nn.softmax(logits.astype(np.float64), -1)))
    probs = np.concatenate(probs) if probs else np.zeros((0, 1))
    accuracy = float(np.mean(np.argmax(probs, -1) == labels)) if n else float("nan")
    return {"accuracy": accuracy, "probs": probs}


class _Preempted(Exception):
    """Raised inside the loop by the SIGTERM handler."""


class Preempted(DpjaxError):
    """The run was stopped by SIGTERM after saving a checkpoint (exit status 143)."""


@dataclasses.dataclass(frozen=True)
class AuditHooks:
    """What `dpjax audit` changes in a run (see dpjax/train/audit.py)."""

    canaries: step_lib.GradientCanaries | None = None
    disable_noise: bool = False       # negative control: the claimed ε no longer holds
    disable_clipping: bool = False    # negative control: the claimed ε no longer holds


# --- the run ----------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data: sources.DataSplits | None = None,
                       init_params: Any = None,
                       max_steps_this_run: int = 0,
                       audit: AuditHooks | None = None) -> dict:
    """Trains with DP-SGD (or non-privately) as configured; returns the summary.

    Args:
      config: a config built on `dpjax.config.base_config()`.
      workdir: where checkpoints, metrics and summary.json go; an existing
        checkpoint there is resumed.
      data: already loaded data (skips `config.dataset`), e.g. from a test.
      init_params: parameters to start from instead of a random init.
      max_steps_this_run: if > 0, checkpoint and return after this many steps
        (a time slice: rerunning resumes); the result then has "finished":
        False and no test metrics.
      audit: privacy-audit hooks (canaries, and the negative controls that
        switch noise or clipping off). Not part of the config on purpose: a
        config can never train without noise or clipping.

    Raises:
      DpjaxError (ConfigError, DataError): user mistakes, before anything is
        compiled or written.
    """
    # Input and validation: nothing is written before all of this passed.
    config_lib.validate(config)
    if data is None:
        data = sources.load(config.dataset)
    units = privacy_units(config, data)
    if config.privacy.clipping == "fast" and units is not None:
        raise ConfigError("privacy.clipping=fast does not support privacy.unit=patient yet: "
                          "use privacy.clipping=vmap.")
    num_train = len(units) if units is not None else len(data.train)
    config_lib.validate_for_data(config, num_train)
    streaming = not isinstance(data.train, sources.ArrayDataset)
    channels = image_shape(data.train)[-1]
    if len(config.dataset.mean) not in (1, channels):
        raise ConfigError(f"dataset.mean has {len(config.dataset.mean)} values but the images "
                          f"have {channels} channels.")
    plan = plan_privacy(config, num_train)
    ldp_info = None
    if config.ldp.scale > 0 and streaming:
        raise ConfigError("ldp.scale > 0 needs the training set in memory: set "
                          "dataset.streaming=False.")
    if config.ldp.scale > 0:
        # Local DP: the training split (only) is perturbed once, from a seed, and cached.
        from dpjax.privacy import ldp

        mechanism = ldp.LaplaceMechanism(scale=float(config.ldp.scale))
        ldp_info = ldp.ldp_report(mechanism, data.train.images.shape[1:])
        cache = config.ldp.cache_dir or os.path.join(workdir, "ldp_cache")
        perturbed = ldp.perturb_dataset_cached(data.train.images, mechanism, config.ldp.seed,
                                               cache)
        data = dataclasses.replace(data, train=sources.ArrayDataset(perturbed,
                                                                    data.train.labels))
        log.info("Local DP: %s", ldp_info["ldp_note"])
    num_devices = jax.device_count()

    # Model and optimiser (one per phase: the trainable set and lr change).
    model, variables, spec = build_model(
        config, data, unit_size=units.shape[1] if units is not None else 0)
    if plan.private:
        models.check_dp_compatible(model, variables, image_shape(data.train))
    extra = {k: v for k, v in variables.items() if k != "params"}
    params = variables["params"]
    prior_info = None
    if init_params is not None:
        params = init_params
    elif config.model.init_from or config.pretrain.steps:
        # DP-RandP Phase I: learn the prior from random processes first. It is
        # handed only the config (model and pretrain blocks), never the data.
        init_from = config.model.init_from or pretrain.pretrain(
            config, workdir, seed=max(config.seed, 0))
        params, prior_info = priors.load_into(init_from, params)
    predict = step_lib.make_predict(model, spec, extra)

    # Fast clipping's per-layer norm forms ("measured": timed below, once the
    # micro-batch size is known; until then the counted choice).
    fast_method = config.privacy.fast_method if config.privacy.fast_method != "measured" \
        else "auto"

    def phase_parts(index: int):
        ph = plan.phases[index]
        is_trainable = is_head_param if ph.trainable == "head" else None
        opt_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
        opt_cfg.learning_rate = ph.learning_rate
        tx = optim.make_optimizer(opt_cfg, ph.steps)
        fns = step_lib.build_step_fns(model, spec, tx, private=plan.private,
                                      is_trainable=is_trainable, ema_decay=config.ema_decay,
                                      ema_warmup=config.ema_warmup, variables_extra=extra,
                                      canaries=audit.canaries if audit else None,
                                      clipping_method=config.privacy.clipping,
                                      fast_method=fast_method)
        return tx, is_trainable, fns

    micro = config.micro_batch_size or _auto_micro_batch_size(
        config, phase_parts(0)[1:], params, data, units, num_devices, streaming)
    micro_global = micro * num_devices
    if plan.private and config.privacy.clipping == "fast" \
            and config.privacy.fast_method == "measured":
        from dpjax.privacy import fast_clipping

        fast_method = fast_clipping.measure_norm_methods(
            model, params, extra, (micro * config.augmult,) + image_shape(data.train),
            config.augmult)
        log.info("privacy.fast_method=measured: %s", fast_method)

    # Workdir and resume.
    config_dict = config.to_dict()
    os.makedirs(workdir, exist_ok=True)
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    latest = checkpointer.latest_step()
    if latest is not None:
        saved_config = json.load(open(os.path.join(workdir, "config.json")))
        changed = _config_diff(_fingerprint(saved_config), _fingerprint(config_dict))
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with a different config ({', '.join(changed[:5])} "
                "differ): use a new --workdir, or rerun with the saved config.json.")
        # A checkpoint at step s was written by the phase that ran step s - 1.
        phase = plan.phase_index(max(latest - 1, 0))
        tx, is_trainable, fns = phase_parts(phase)
        state, meta = checkpointer.restore(step_lib.init_state(params, tx, is_trainable))
        ledger = PrivacyLedger.from_json(meta["ledger"])
        seed, seed_source = int(meta["seed"]), meta["seed_source"]
        wall_time_before = float(meta["wall_time_s"])
        start_step = int(meta["step"])
        log.info("Resuming %s from step %d.", workdir, start_step)
    else:
        phase = 0
        tx, is_trainable, fns = phase_parts(phase)
        state = step_lib.init_state(params, tx, is_trainable)
        ledger = PrivacyLedger()
        seed, seed_source = _draw_seed(config)
        wall_time_before = 0.0
        start_step = 0
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(config_dict, f, indent=2)
            with open(os.path.join(workdir, "environment.json"), "w") as f:
                json.dump(_environment(), f, indent=2)
    overlap = None if streaming else count_overlap(data.train.images, data.test.images)
    if overlap:
        log.warning("%d test images are identical to training images: test accuracy is "
                    "optimistic.", overlap)

    sampler_cls = PoissonSampler if config.privacy.sampling == "poisson" else ShuffleSampler
    sampler = sampler_cls(num_train, config.batch_size, micro_global, seed % (2**63))
    master_key = _master_key(seed)
    writer = writers.MetricWriter(workdir, enabled=jax.process_index() == 0)

    # Device-resident data, replicated on every local device.
    local = jax.local_device_count()
    host_rows = slice(jax.process_index() * local * micro,
                      (jax.process_index() + 1) * local * micro)
    if streaming:
        # Each host decodes only its own rows of each micro-batch, one step ahead, and
        # copies them to its devices in the background (device-side prefetch).
        def host_batches(step: int):
            batch = sampler.batch(step)
            out = []
            for m in range(batch.num_micro_batches):
                idx, mask = batch.indices[m, host_rows], batch.mask[m, host_rows]
                images = np.zeros((len(idx),) + image_shape(data.train), np.uint8)
                labels = np.zeros((len(idx),), np.int32)
                images[mask], labels[mask] = data.train.fetch(idx[mask])
                out.append(_to_devices((images.reshape((local, -1) + images.shape[1:]),
                                        labels.reshape(local, -1))))
            return batch, out

        prefetcher = streaming_lib.Prefetcher(host_batches)
    else:
        train_images = _replicate(data.train.images)
        train_labels = _replicate(data.train.labels.astype(np.int32))
    if streaming:
        if units is not None:
            raise ConfigError("privacy.unit=patient needs dataset.streaming=False.")
    elif units is None:
        gather = jax.pmap(lambda x, y, i: (x[i], y[i]))
    else:  # a privacy unit's images; padded slots get label −1
        unit_table = _replicate(units)
        gather = jax.pmap(lambda x, y, i, t: (x[t[i]], jnp.where(t[i] >= 0, y[t[i]], -1)))
        gather = functools.partial(lambda g, t, x, y, i: g(x, y, i, t), gather, unit_table)
    state = _replicate(state)

    def epsilon_so_far() -> float | None:
        if not plan.private:
            return None
        return accounting.epsilon(ledger.phases, plan.delta, plan.accountant)

    last_saved = [latest]

    def save(step: int) -> None:
        if step == last_saved[0]:
            return
        host_state = _unreplicate(state)
        if not all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(host_state.params)):
            raise DpjaxError(f"Parameters became non-finite by step {step}: the last good "
                             f"checkpoint is kept; lower optimizer.learning_rate.")
        meta = {"step": step, "ledger": ledger.to_json(), "seed": seed,
                "seed_source": seed_source, "wall_time_s": wall_time_before + time.time() - t0}
        checkpointer.save(step, host_state, meta)
        last_saved[0] = step

    def on_sigterm(signum, frame):
        raise _Preempted()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) \
        if _is_main_thread() else None
    no_noise = bool(audit and audit.disable_noise)
    sum_clip_norm = math.inf if audit and audit.disable_clipping else plan.clip_norm
    initial_params = _unreplicate(state.params) if audit else None
    t0 = time.time()
    progress = _progress(config, start_step, plan.steps)
    window = {"examples": 0, "time": time.time()}
    try:
        for step in range(start_step, plan.steps):
            if plan.phase_index(step) != phase:
                # Phase switch: same parameters and EMA, a fresh optimiser for the new set.
                phase = plan.phase_index(step)
                tx, is_trainable, fns = phase_parts(phase)
                host = _unreplicate(state)
                fresh = step_lib.init_state(host.params, tx, is_trainable)
                state = _replicate(fresh._replace(step=host.step, ema_params=host.ema_params))
                progress.note(f"step {step}: starting {plan.phases[phase].name}")
            ph = plan.phases[phase]

            # Input: the sampler decides the batch from (seed, step) alone.
            if streaming:
                batch, fetched = prefetcher.get(step, step + 1 if step + 1 < plan.steps
                                                else None)
            else:
                batch = sampler.batch(step)
            step_key = jax.random.fold_in(master_key, step)
            augment_key = jax.random.fold_in(step_key, 1)
            acc = fns.zeros_like_trainable(state.params)
            stats = _replicate(step_lib.zero_stats())
            for m in range(batch.num_micro_batches):
                idx = batch.indices[m, host_rows].reshape(local, -1)
                mask = batch.mask[m, host_rows].reshape(local, -1)
                if streaming:
                    images, labels = fetched[m]
                else:
                    images, labels = gather(train_images, train_labels, idx)
                acc, stats = fns.accumulate(state.params, acc, stats, images, labels, idx, mask,
                                            augment_key, sum_clip_norm)
            # Update: noise once for the logical batch, then record what ran.
            noise_key = jax.random.fold_in(step_key, 0)
            state, stats, grad_norm = fns.update(
                state, acc, stats, noise_key, 0.0 if no_noise else ph.noise_multiplier,
                plan.clip_norm, float(config.batch_size))
            ledger.record(ph.noise_multiplier, plan.sampling_rate, ph.name)
            window["examples"] += batch.num_examples
            done = step + 1

            if done % config.log_every == 0 or done == plan.steps:
                s = _unreplicate(stats)
                if not math.isfinite(float(_unreplicate(grad_norm))):
                    raise DpjaxError(f"The update became non-finite at step {done}: the last "
                                     "good checkpoint is kept; lower optimizer.learning_rate.")
                now = time.time()
                metrics = {"epsilon": epsilon_so_far(),
                           "examples_per_s": window["examples"] / max(now - window["time"], 1e-9)}
                window = {"examples": 0, "time": now}
                if config.train_metrics:
                    count = max(float(s.count), 1.0)
                    metrics.update(train_loss=float(s.loss) / count,
                                   train_accuracy=float(s.correct) / count,
                                   clipped_fraction=float(s.clipped) / count,
                                   realised_batch_size=int(s.count))
                if s.nonfinite:
                    metrics["nonfinite_examples"] = int(s.nonfinite)
                writer.write(done, metrics)
                progress.update(done, metrics)
            if config.eval_every and done % config.eval_every == 0 and done < plan.steps:
                last_eval = _evaluate(predict, state, data, config)
                writer.write(done, {f"test_{k}": v for k, v in last_eval.items()})
                progress.note(f"step {done}: test accuracy {last_eval['accuracy']:.4f}")
            if done % config.checkpoint_every == 0 and done < plan.steps:
                save(done)
            if max_steps_this_run and done - start_step >= max_steps_this_run \
                    and done < plan.steps:
                save(done)
                progress.close()
                writer.close()
                checkpointer.close()
                return {"finished": False, "step": done, "epsilon": epsilon_so_far()}
    except _Preempted:
        save(int(_unreplicate(state.step)))
        progress.close()
        writer.close()
        raise Preempted(f"Stopped by SIGTERM; checkpoint saved in {workdir}: rerun the same "
                        "command to resume.") from None
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    progress.close()
    if streaming:
        prefetcher.close()
    final_step = int(_unreplicate(state.step))
    save(final_step)
    checkpointer.close()

    # Evaluation and summary.
    final = _evaluate(predict, state, data, config, with_probs=True)
    eps = epsilon_so_far()
    summary = {
        "finished": True,
        "test_accuracy": final["accuracy"],
        "test_accuracy_raw": final["accuracy_raw"],
        "epsilon": eps,
        "delta": plan.delta if plan.private else None,
        "accountant": plan.accountant if plan.private else None,
        "epsilon_covers": ("one run with these hyperparameters; tuning on the private data "
                           "costs privacy too") if plan.private else None,
        "noise_multiplier": plan.noise_multiplier if plan.private else None,
        "noise_multiplier_calibrated": plan.calibrated,
        "sampling_rate": plan.sampling_rate,
        "sampling": config.privacy.sampling,
        "epsilon_valid_for_sampling": config.privacy.sampling == "poisson",
        "steps": ledger.steps,
        "batch_size": config.batch_size,
        "micro_batch_size": micro,
        "clip_norm": plan.clip_norm if plan.private else None,
        "augmult": config.augmult,
        "neighbouring": "add_remove",
        "privacy_unit": config.privacy.unit,
        "num_privacy_units": num_train,
        "dataset": data.name,
        "num_train": num_train,
        "num_test": len(data.test),
        "test_train_overlap": overlap,
        "model": config.model.name,
        "ema": config.ema_decay > 0,
        "wall_time_s": wall_time_before + time.time() - t0,
        "seed_source": seed_source,
        "phases": ([prior_info] if prior_info else []) + [
            dict(dataclasses.asdict(p), epsilon=accounting.epsilon(
                ledger.phases[:i + 1], plan.delta, plan.accountant) if plan.private else None)
            for i, p in enumerate(ledger.phases)],
        "devices": num_devices,
    }
    if ldp_info:
        summary.update(ldp_info)
    if config.metrics.clinical:
        summary.update(_clinical_metrics(config, data, final["probs"], predict, state))
    if plan.private and config.privacy.sampling != "poisson":
        summary["warning"] = ("Batches were fixed-size shuffled, not Poisson-sampled: the "
                              "reported epsilon is the Poisson epsilon and does NOT apply.")
    writer.write(final_step, {"test_accuracy": final["accuracy"],
                              "test_accuracy_raw": final["accuracy_raw"], "epsilon": eps})
    writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    if audit:
        summary["audit_params"] = (initial_params, _unreplicate(state.params))
    summary["test_probs"] = final["probs"]
    summary["test_labels"] = data.test.labels
    return summary


def _evaluate(predict, state, data, config, with_probs: bool = False) -> dict:
    host = _unreplicate(state)
    ema = evaluate_arrays(predict, host.ema_params, _split_images(data.test), data.test.labels,
                          config.eval_batch_size)
    raw = ema if config.ema_decay == 0 else evaluate_arrays(
        predict, host.params, _split_images(data.test), data.test.labels, config.eval_batch_size)
    out = {"accuracy": ema["accuracy"], "accuracy_raw": raw["accuracy"]}
    if with_probs:
        out["probs"] = ema["probs"]
    return out


def _clinical_metrics(config, data, test_probs, predict, state) -> dict:
    """Test metrics with bootstrap CIs; train metrics marked as not covered by ε."""
    from dpjax.train import metrics

    out = {}
    test = metrics.evaluate_predictions(
        data.test.labels, test_probs, data.num_classes, ordinal=config.metrics.ordinal,
        num_resamples=config.metrics.bootstrap_resamples)
    out.update({f"test_{k}": v for k, v in test.items()})
    if "quadratic_weighted_kappa" in test:  # the short name design.md uses
        out["test_kappa"] = test["quadratic_weighted_kappa"]
    if config.train_metrics:
        host = _unreplicate(state)
        train = evaluate_arrays(predict, host.ema_params, _split_images(data.train),
                                data.train.labels,
                                config.eval_batch_size)
        train_m = metrics.classification_metrics(data.train.labels, train["probs"],
                                                 data.num_classes,
                                                 ordinal=config.metrics.ordinal)
        out.update({f"train_{k}": v for k, v in train_m.items()})
        out["train_metrics_note"] = ("train_* metrics are computed on the private training set "
                                     "and are NOT covered by epsilon.")
    return out


def _split_images(ds):
    """The array of a split in memory, or the streaming source itself."""
    return ds.images if isinstance(ds, sources.ArrayDataset) else ds


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _progress:
    """tqdm progress bar (step, loss, ε so far, examples/s), or plain log lines."""

    def __init__(self, config, start: int, total: int):
        self._bar = None
        if config.progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc=config.name, unit="step",
                             dynamic_ncols=True)
        self._pos = start

    def update(self, step: int, metrics: dict) -> None:
        shown = {}
        if metrics.get("train_loss") is not None:
            shown["loss"] = f"{metrics['train_loss']:.3f}"
        if metrics.get("epsilon") is not None:
            shown["eps"] = f"{metrics['epsilon']:.3f}"
        shown["ex/s"] = f"{metrics['examples_per_s']:.0f}"
        if self._bar is not None:
            self._bar.update(step - self._pos)
            self._bar.set_postfix(shown, refresh=False)
        else:
            log.info("step %d %s", step, " ".join(f"{k}={v}" for k, v in shown.items()))
        self._pos = step

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
