"""The training loop: sample -> accumulate -> update -> record -> log -> evaluate -> checkpoint.

`train_and_evaluate(config, workdir)` is the whole of `dpjax train`. It
validates the config and the data before compiling or writing anything,
resumes from the latest checkpoint in `workdir` when there is one, and ends
by writing `workdir/summary.json`.

Where each privacy decision is made (and nowhere else):
  * σ, q, B, the sensitivity, the noise scale, the batches and ε: the
    `DPExecutionPlan` (`dpjax.privacy.plan`), built once by `plan_from_config`;
  * clipping and the noise draw: `dpjax.privacy.clipping`, inside `train.step`;
  * the seed: `train.workdir` (OS entropy, broadcast, kept before step 1).

A step and its ledger record are one unit: SIGTERM and SIGINT only set a
flag, which the loop reads between steps, so no checkpoint can hold a step
its ledger lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from dpjax import config as config_lib
from dpjax import models, validate
from dpjax.data import registry, sources
from dpjax.errors import ConfigError, DpjaxError
from dpjax.privacy import plan as plan_lib
from dpjax.privacy.sampling import PrivacyLedger
from dpjax.randp import pretrain, priors
from dpjax.train import checkpoint as checkpoint_lib
from dpjax.train import devices, optim, writers
from dpjax.train import evaluate as evaluate_lib
from dpjax.train import imbalance as imbalance_lib
from dpjax.train import input as input_lib
from dpjax.train import model as model_lib
from dpjax.train import step as step_lib
from dpjax.train import summary as summary_lib
from dpjax.train import workdir as workdir_lib

log = logging.getLogger("dpjax")
# Several CPU devices in one process (tests, `launch/local.sh` with CPU_DEVICES): XLA's CPU
# runtime runs every device's program on one shared thread pool, and an update's all-reduce
# can then wait forever for a device whose accumulation is queued behind the threads that
# wait (seen as "only 7 of 8 arrived" at the rendezvous). Finishing the accumulation before
# the update starts avoids it; accelerators do not need it.
def _cpu_collectives_need_sync() -> bool:
    return jax.default_backend() == "cpu" and jax.local_device_count() > 1
is_head_param = model_lib.is_head_param


# --- the plan ----------------------------------------------------------------

def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """num_steps, or num_epochs · N / B rounded up when num_epochs > 0."""
    if config.num_epochs > 0:
        return max(1, math.ceil(config.num_epochs * num_train / config.batch_size))
    return config.num_steps


def plan_from_config(config: ml_collections.ConfigDict,
                     num_examples: int) -> plan_lib.DPExecutionPlan:
    """The run's `DPExecutionPlan`: phases from `phases`, σ from the `privacy` block."""
    p, head = config.privacy, config.phases.head_steps
    steps = total_steps(config, num_examples)
    if head > steps:
        raise ConfigError(f"phases.head_steps={head} must not exceed the {steps} steps of the "
                          "run (equal: a linear probe only).")
    lr = config.optimizer.learning_rate
    if head:
        shapes = [plan_lib.PhaseShape("phase2_linear_probe", head,
                                      config.phases.head_learning_rate, "head",
                                      config.phases.head_noise_multiplier)]
        if head < steps:
            shapes.append(plan_lib.PhaseShape("phase3_finetune", steps - head, lr))
    else:
        shapes = [plan_lib.PhaseShape("dpsgd", steps, lr)]
    return plan_lib.make_plan(
        shapes, num_examples=num_examples, expected_batch_size=config.batch_size,
        clip_norm=p.clip_norm, delta=p.delta, accountant=p.accountant,
        private=p.mode == "dpsgd", poisson=p.sampling == "poisson",
        target_epsilon=p.target_epsilon, noise_multiplier=p.noise_multiplier,
        pre_releases=imbalance_lib.pre_releases(config))


def account(config: ml_collections.ConfigDict, num_examples: int | None = None,
            data: sources.DataSplits | None = None) -> dict:
    """σ and ε of a config without training (what `dpjax account` prints)."""
    config_lib.validate(config)
    if num_examples is None and data is None:  # a known data set's published size
        num_examples = registry.published_train_size(config.dataset, config.privacy.unit)
    if num_examples is None:
        data = data if data is not None else sources.load(config.dataset)
        num_examples = len(data.train)
    config_lib.validate_for_data(config, num_examples)
    plan = plan_from_config(config, num_examples)
    result = {"num_train": num_examples, "batch_size": plan.expected_batch_size,
              "sampling_rate": plan.sampling_rate, "steps": plan.num_steps,
              "delta": plan.delta, "accountant": plan.accountant,
              "noise_multiplier": plan.noise_multiplier if plan.private else None,
              "calibrated": plan.calibrated, "sampling": config.privacy.sampling,
              "phases": [dataclasses.asdict(ph) for ph in plan.phases],
              "epsilon": plan.planned_epsilon()}
    if plan.private:
        other = dataclasses.replace(plan, accountant="rdp" if plan.accountant == "pld" else "pld")
        result[f"epsilon_{other.accountant}"] = other.planned_epsilon()
    return result


# --- what `dpjax audit` may change -------------------------------------------

@dataclasses.dataclass(frozen=True)
class AuditHooks:
    """What `dpjax audit` changes in a run. Not config fields on purpose: a config can
    never train with less noise, more sampling or no clipping than it claims."""

    canaries: step_lib.GradientCanaries | None = None
    noise_scale: float = 1.0          # control: σ actually used = noise_scale · σ claimed
    sampling_multiplier: int = 1      # control: the sampler runs at this multiple of q
    disable_clipping: bool = False    # control: C = inf in the sum
    observe: Any = None               # observe(step, released update) after each step


class Preempted(DpjaxError):
    """The run was stopped by SIGTERM or SIGINT after saving a checkpoint (exit 143)."""


def _test_hook(point: str, step: int) -> None:
    """No-op; tests replace it to act (e.g. send a signal) at a named point of a step."""


class _StopRequest:
    """Set by SIGTERM/SIGINT; read by the loop between steps."""

    def __init__(self):
        self.signal_name: str | None = None

    def set(self, signum: int, frame=None) -> None:
        self.signal_name = signal.Signals(signum).name

    def is_set(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def _deferred_stop():
    """SIGTERM/SIGINT set a flag instead of interrupting a step halfway."""
    requested = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.signal(s, requested.set) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- the run -------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data: sources.DataSplits | None = None, model: nn.Module | None = None,
                       init_params: Any = None, max_steps_this_run: int = 0,
                       audit: AuditHooks | None = None) -> dict:
    """Trains with DP-SGD (or non-privately) as configured; returns the summary.

    Args:
      config: a config built on `dpjax.config.base_config()`.
      workdir: where checkpoints, metrics and summary.json go; a run there is resumed.
      data: already loaded data (skips `config.dataset`).
      model: a Flax module to train instead of `config.model.name`.
      init_params: parameters to start from instead of a random init.
      max_steps_this_run: if > 0, checkpoint and return after this many steps
        (rerunning resumes); the result then has "finished": False.
      audit: privacy-audit hooks (`dpjax audit` only).

    Raises:
      DpjaxError (ConfigError, DataError): user mistakes, before anything is
        compiled or written; Preempted after a signal, with a checkpoint saved.
    """
    # Data, plan and model: everything is validated before anything is written.
    config_lib.validate(config)
    validate.non_negative_int("--max_steps_this_run", max_steps_this_run)
    workdir_lib.check_not_in_use(workdir)
    data = data if data is not None else sources.load(config.dataset)
    units = input_lib.privacy_units(config.privacy.unit, data)
    plan = plan_from_config(config, len(units) if units is not None else len(data.train))
    config_lib.validate_for_data(config, plan.num_examples, data.train.image_shape)
    audit = audit or AuditHooks()
    built = model_lib.build(config, data, units.shape[1] if units is not None else 0, model)
    if plan.private:
        models.check_dp_compatible(built.module, {"params": built.params, **built.extra},
                                   data.train.image_shape,
                                   step_lib.apply_kwargs(built.spec, True, jax.random.key(0)))

    # Workdir, seed and local DP (a step before training, on the private data).
    work = workdir_lib.Workdir(workdir).open()
    try:
        data_print = workdir_lib.data_fingerprint(data.train)
        work.check_same_run(config.to_dict(), data_print)
        checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=config.async_checkpoints)
        restored = checkpointer.restore_named() if checkpointer.all_steps() else None
        if restored and "noise_multipliers" in restored[1]:  # σ is decided once per run
            plan = plan.with_noise_multipliers(restored[1]["noise_multipliers"])
        seed, seed_source = work.resolve_seed(
            config.seed, (int(restored[1]["seed"]), restored[1]["seed_source"])
            if restored else None)
        data = imbalance_lib.attach_prior(config, data, units, seed)  # DP class prior, if any
        work.write_identity(config.to_dict(), data_print, workdir_lib.environment())
        data, ldp_info = _local_dp(config, data, work, units)
        built = model_lib.with_data(built, config, data)  # logit offsets of the class prior
        return _train(config, work, data, units, plan, seed, seed_source, restored,
                      checkpointer, built, init_params, max_steps_this_run, audit, ldp_info)
    finally:
        work.close()


def _train(config, work, data, units, plan, seed, seed_source, restored, checkpointer,
           built: model_lib.BuiltModel, init_params, max_steps_this_run, audit,
           ldp_info) -> dict:
    # Model and optimiser (one per phase: the trainable set and lr change).
    params, prior_info = built.params, None
    if init_params is not None:
        params = init_params
    elif config.model.init_from or config.pretrain.steps:
        # DP-RandP Phase I: a prior from random processes, before and apart from the data.
        prior = config.model.init_from or pretrain.pretrain(config, work.path,
                                                            seed=max(config.seed, 0))
        params, prior_info = priors.load_into(prior, params)
    micro = config.micro_batch_size or _auto_micro_batch_size(config, plan, built, params, data,
                                                              units)
    fast_method = _fast_method(config, plan, built, params, micro, data)
    phase_fns = lambda i: _phase_fns(config, plan, built, i, audit, fast_method)

    # Resume, or start.
    if restored is not None:
        named, meta, start_step = restored
        phase = plan.phase_index(max(start_step - 1, 0))
        tx, is_trainable, fns = phase_fns(phase)
        state = checkpoint_lib.from_named(named, step_lib.init_state(params, tx, is_trainable))
        ledger = PrivacyLedger.from_json(meta["ledger"])
        if not ledger.steps == int(meta["step"]) == int(state.step) == start_step:
            raise DpjaxError(f"Checkpoint {start_step} in {checkpointer.directory} disagrees "
                             "with its privacy ledger: use a new --workdir.")
        wall_before = float(meta["wall_time_s"])
        log.info("Resuming %s from step %d.", work.path, start_step)
    else:
        start_step, phase, wall_before, ledger = 0, 0, 0.0, plan.new_ledger()
        tx, is_trainable, fns = phase_fns(phase)
        state = step_lib.init_state(params, tx, is_trainable)
    state = devices.replicate(state)
    sampler_plan = plan if audit.sampling_multiplier == 1 else dataclasses.replace(
        plan, expected_batch_size=plan.expected_batch_size * audit.sampling_multiplier)
    train_input = input_lib.TrainInput(
        data.train, sampler_plan.sampler(seed, micro * jax.device_count()), units)
    clip_norm = math.inf if audit.disable_clipping else plan.clip_norm
    writer = writers.MetricWriter(work.path, enabled=workdir_lib.is_primary())
    progress = writers.Progress(config, start_step, plan.num_steps)
    t0 = time.time()

    def save(step: int) -> None:
        host = devices.to_host(state)
        if not all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(host.params)):
            raise DpjaxError(f"Parameters became non-finite by step {step}: the last good "
                             "checkpoint is kept; lower optimizer.learning_rate.")
        if not ledger.steps == int(host.step) == step:  # a step and its record are one unit
            raise RuntimeError(f"refusing to save step {step}: the ledger holds {ledger.steps}")
        _check_replicas_agree(host.params, step, ledger)
        checkpointer.save(step, host, {"step": step, "ledger": ledger.to_json(), "seed": seed,
                                       "seed_source": seed_source,
                                       "wall_time_s": wall_before + time.time() - t0,
                                       "noise_multipliers": [p.noise_multiplier
                                                             for p in plan.phases]})

    # Steps.
    window = {"steps": 0, "time": time.time()}
    sync_before_update = _cpu_collectives_need_sync()
    with _deferred_stop() as stop:
        for step in range(start_step, plan.num_steps):
            if plan.phase_index(step) != phase:  # new phase: same params and EMA, fresh optimiser
                phase = plan.phase_index(step)
                tx, is_trainable, fns = phase_fns(phase)
                host = devices.to_host(state)
                state = devices.replicate(step_lib.init_state(host.params, tx, is_trainable)
                                          ._replace(step=host.step, ema_params=host.ema_params))
                progress.note(f"step {step}: starting {plan.phases[phase].name}")
            batch, micro_batches = train_input.step(step, plan.num_steps)
            noise_key, augment_key = plan.step_keys(seed, step)
            acc, stats = fns.zeros(state.params)
            for images, labels, idx, mask in micro_batches:
                acc, stats = fns.accumulate(state.params, acc, stats, images, labels, idx, mask,
                                            augment_key, clip_norm)
            if sync_before_update:
                jax.block_until_ready(acc)  # see _cpu_collectives_need_sync
            state, stats, released = fns.update(
                state, acc, stats, noise_key, audit.noise_scale * plan.noise_stddev(step),
                float(plan.expected_batch_size))
            _test_hook("after_update", step)
            plan.record(ledger, step)
            _test_hook("after_record", step)
            done, window["steps"] = step + 1, window["steps"] + 1
            if audit.observe is not None:
                audit.observe(step, released)

            if done % config.log_every == 0 or done == plan.num_steps:
                metrics = _step_metrics(config, plan, ledger, stats, released, window)
                writer.write(done, metrics)
                progress.update(done, metrics)
            if config.eval_every and done % config.eval_every == 0 and done < plan.num_steps:
                result = _evaluate(config, built, state, data)
                writer.write(done, {f"test_{k}": v for k, v in result.items()})
                progress.note(f"step {done}: test accuracy {result['accuracy']}")
            _test_hook("after_step", step)
            stopping = _agree_to_stop(stop.is_set())  # a signal from here on: next step
            if stopping or (done % config.checkpoint_every == 0 and done < plan.num_steps) \
                    or (max_steps_this_run and done - start_step >= max_steps_this_run):
                save(done)
            if stopping:
                progress.close(), writer.close(), checkpointer.close(), train_input.close()
                raise Preempted(f"Stopped by {stop.signal_name or 'a signal to another host'}; "
                                f"checkpoint saved in {work.path}: rerun the same command to "
                                "resume.")
            if max_steps_this_run and done - start_step >= max_steps_this_run \
                    and done < plan.num_steps:
                progress.close(), writer.close(), checkpointer.close(), train_input.close()
                return {"finished": False, "step": done, "epsilon": plan.epsilon(ledger)}
    progress.close()
    train_input.close()
    final_step = int(devices.to_host(state.step))
    if not checkpointer.all_steps() or checkpointer.latest_step() != final_step:
        save(final_step)
    checkpointer.close()

    # Evaluation and summary.
    final = _evaluate(config, built, state, data, with_probs=True)
    host = devices.to_host(state)
    extra = dict(ldp_info or {}, **summary_lib.run_entries(data, final["probs"]))
    if config.metrics.clinical:
        extra.update(evaluate_lib.clinical_metrics(config, data, final["probs"], built.predict,
                                                   host.ema_params))
    if config.metrics.test_train_overlap:
        extra["test_train_overlap"] = _count_overlap(data)
    summary = summary_lib.build(
        config, plan, ledger, final=final, data_name=data.name, num_test=len(data.test),
        micro_batch_size=micro, num_devices=jax.device_count(),
        wall_time_s=wall_before + time.time() - t0, seed_source=seed_source,
        replica_fingerprints=_check_replicas_agree(host.params, final_step, ledger),
        prior_info=prior_info, extra=extra)
    writer.write(final_step, {"test_accuracy": final["accuracy"],
                              "test_accuracy_raw": final["accuracy_raw"],
                              "epsilon": summary["epsilon"]})
    writer.close()
    summary = workdir_lib.strict_json(summary)
    if workdir_lib.is_primary():
        workdir_lib.atomic_write_json(f"{work.path}/summary.json", summary)
    summary["test_probs"] = final["probs"]
    summary["test_labels"] = data.test.labels
    summary["final_params"] = host.params
    return summary


# --- pieces of the run -------------------------------------------------------------

def _local_dp(config, data, work, units):
    """Local DP (Singh et al. 2020, done properly): the training images perturbed once."""
    if config.ldp.scale <= 0:
        return data, None
    from dpjax.privacy import ldp

    if not isinstance(data.train, sources.ArrayDataset):
        raise ConfigError("ldp.scale > 0 needs the training set in memory: set "
                          "dataset.streaming=False.")
    images, info = ldp.apply_local_dp(data.train.images, float(config.ldp.scale),
                                      config.ldp.seed, work.path,
                                      grey_to_rgb=data.info.get(ldp.GREY_TO_RGB_KEY, "none"))
    log.info("Local DP: %s", info["ldp_note"])
    return dataclasses.replace(data, train=sources.ArrayDataset(images, data.train.labels)), info


def _phase_fns(config, plan, built, index: int, audit: AuditHooks, fast_method):
    ph = plan.phases[index]
    is_trainable = is_head_param if ph.trainable == "head" else None
    opt_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    opt_cfg.learning_rate = ph.learning_rate
    tx = optim.make_optimizer(opt_cfg, ph.steps)
    fns = step_lib.build_step_fns(built.module, built.spec, tx, private=plan.private,
                                  is_trainable=is_trainable, ema_decay=config.ema_decay,
                                  ema_warmup=config.ema_warmup, variables_extra=built.extra,
                                  canaries=audit.canaries, clipping_method=config.privacy.clipping,
                                  fast_method=fast_method)
    return tx, is_trainable, fns


def _fast_method(config, plan, built, params, micro: int, data):
    """Fast clipping's per-layer norm form; "measured" times both forms here, once."""
    if not (plan.private and config.privacy.clipping == "fast"):
        return "auto"
    if config.privacy.fast_method != "measured":
        return config.privacy.fast_method
    from dpjax.privacy import fast_clipping

    method = fast_clipping.measure_norm_methods(
        built.module, params, built.extra,
        (micro * config.augmult,) + tuple(data.train.image_shape), config.augmult)
    log.info("privacy.fast_method=measured: %s", method)
    return method


def _auto_micro_batch_size(config, plan, built, params, data, units) -> int:
    """micro_batch_size=0: the largest per-device micro-batch the step fits (`train.memory`)."""
    from dpjax.train import memory

    _, is_trainable, fns = _phase_fns(config, plan, built, 0, AuditHooks(), "auto")
    in_memory = isinstance(data.train, sources.ArrayDataset)
    return memory.auto_micro_batch_size(
        fns, params, is_trainable, tuple(data.train.image_shape), units,
        data.train.images.nbytes if in_memory else 0, config.batch_size)


def _step_metrics(config, plan, ledger, stats, released, window) -> dict:
    """ε so far and throughput (from the PUBLIC expected batch size); with train_metrics,
    metrics of the realised private batches (listed as not covered by ε)."""
    if not math.isfinite(float(devices.to_host(released.grad_norm))):
        raise DpjaxError(f"The update became non-finite by step {ledger.steps}: the last good "
                         "checkpoint is kept; lower optimizer.learning_rate.")
    now = time.time()
    metrics = {"epsilon": plan.epsilon(ledger),
               "examples_per_s": window["steps"] * plan.expected_batch_size
               / max(now - window["time"], 1e-9)}
    window.update(steps=0, time=now)
    if config.train_metrics:
        s = devices.to_host(stats)
        count = max(float(s.count), 1.0)
        metrics.update(train_loss=float(s.loss) / count, train_accuracy=float(s.correct) / count,
                       clipped_fraction=float(s.clipped) / count,
                       realised_batch_size=int(s.count), nonfinite_examples=int(s.nonfinite))
    return metrics


def _evaluate(config, built, state, data, with_probs: bool = False) -> dict:
    return evaluate_lib.evaluate_params(built.predict, state.params, state.ema_params, data.test,
                                        config.eval_batch_size, config.ema_decay > 0, with_probs)


def _count_overlap(data: sources.DataSplits) -> int | None:
    """Test images byte-identical to a training image (in-memory sets only)."""
    if not isinstance(data.train, sources.ArrayDataset) or not isinstance(
            data.test, sources.ArrayDataset):
        return None
    import hashlib

    digest = lambda x: hashlib.blake2b(x.tobytes(), digest_size=16).digest()
    train = {digest(x) for x in data.train.images}
    return sum(digest(x) in train for x in data.test.images)


def _agree_to_stop(local: bool) -> bool:
    """Whether any process was asked to stop: every host then saves the same step.

    A signal reaches one host of a cluster (a preempted node); the others must
    stop with it, at the same step, or they would wait in the next collective
    forever. One tiny all-gather per step, only on several processes.
    """
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([local], np.int32))
    return bool(np.any(flags))


def _check_replicas_agree(params, step: int, ledger: PrivacyLedger) -> list[str]:
    """Every process's fingerprint of (parameters, step, ledger); stops the run if they differ.

    Replicas that disagree carry no guarantee: their hosts sampled or noised differently.
    """
    mine = checkpoint_lib.fingerprint(params, step, ledger.to_json())
    if jax.process_count() == 1:
        return [mine]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(mine), np.uint8))
    prints = [bytes(np.asarray(row, np.uint8)).hex() for row in np.asarray(gathered)]
    if len(set(prints)) != 1:
        raise DpjaxError(f"The replicas disagree at step {step} (fingerprints {prints}): the "
                         "hosts sampled or added noise differently, so no guarantee holds; "
                         "check that every host runs the same command and dpjax version.")
    return prints
