"""A run's working directory: lock, fingerprint, seed, resume, environment.

Layout of `WORKDIR` (what may be shown to others, and what may not):

    config.json         the resolved config (seeds redacted)             public
    environment.json    package versions, git commit, devices             public
    metrics.jsonl       ε so far, test metrics; training-set metrics only
                        when `train_metrics` (marked not_covered_by_epsilon)
    tensorboard/        the same metrics as event files
    summary.json        the final report                                  public
    checkpoints/        parameters, optimiser state, ledger AND the seed  PRIVATE
    private/            seed.json, the data fingerprint, local-DP data    PRIVATE

Anyone holding a checkpoint or `private/` and the data can remove the noise:
treat them like the private data. Only process 0 writes; every process
reads.

The seed is written to `private/seed.json` before the first step, so a run
that dies before its first checkpoint continues the same random stream when
rerun (its earlier test evaluations stay valid) instead of drawing a second,
independent run over the same data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
from typing import Any

import jax
import numpy as np

from dpjax.errors import ConfigError, DpjaxError
from dpjax.privacy import randomness

# Fields that do not change what is computed: a resumed run may change them.
RESUME_SAFE_FIELDS = ("progress_bar", "log_every", "eval_every", "checkpoint_every",
                      "eval_batch_size", "train_metrics", "micro_batch_size", "name",
                      "async_checkpoints")
# Config fields whose value is a secret when fixed: never written to config.json.
SECRET_FIELDS = (("seed",), ("ldp", "seed"))
_REDACTED = "fixed (not recorded: see private/seed.json)"
log = logging.getLogger("dpjax")


def is_primary() -> bool:
    return jax.process_index() == 0


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced: ±inf by "inf"/"-inf", NaN by None.

    JSON has no infinity or NaN; dpjax writes only strict JSON, so an infinite ε
    (σ = 0) reads as the string "inf" (`float("inf")` parses it back).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


def atomic_write_json(path: str, value: Any, private: bool = False) -> None:
    """Writes JSON to a temporary file and renames it: readers never see half a file.

    Strict JSON (`strict_json`): never NaN or Infinity in the file.
    """
    value = strict_json(value)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        if private:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def public_config(config_dict: dict) -> dict:
    """The config as written to config.json: fixed seeds replaced by a note."""
    out = json.loads(json.dumps(config_dict))
    for path in SECRET_FIELDS:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        if isinstance(node.get(path[-1]), int) and node[path[-1]] >= 0:
            node[path[-1]] = _REDACTED
    return out


def data_fingerprint(train) -> str:
    """A hash of the training split: its size, image shape, labels and (in memory) pixels.

    Kept in `private/` only: a hash of the private data lets whoever knows
    all but one example test guesses of the last one.
    """
    from dpjax.data import sources

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((len(train), tuple(train.image_shape))).encode())
    if isinstance(train, sources.ArrayDataset):
        h.update(np.ascontiguousarray(train.labels).tobytes())
        h.update(np.ascontiguousarray(train.images).data)
    else:  # streamed: its size and shape (reading every record would cost a pass)
        h.update(type(train).__name__.encode())
    return h.hexdigest()


class Workdir:
    """The directory of one run; `open()` checks it, locks it and reads what is there.

    Attributes:
      path: the directory.
      saved_config: the config.json of an earlier run here, or None.
    """

    def __init__(self, path: str):
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise DpjaxError(f"Expected --workdir={path!r} to name a directory: give a new "
                             "or an earlier run's directory, e.g. --workdir runs/mine.")
        self.path = os.path.abspath(path)
        self.private_dir = os.path.join(self.path, "private")
        self.saved_config: dict | None = None
        self._lock_file = None

    # --- opening -------------------------------------------------------------

    def open(self) -> Workdir:
        """Creates (or checks) the directory and takes its lock (process 0).

        Raises:
          DpjaxError: the path is a file, is not writable, holds a corrupt
            config.json, or another dpjax process holds the lock.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DpjaxError(f"--workdir {self.path} is a file, not a directory: choose a new "
                             "--workdir.")
        if os.path.isdir(self.path):  # read what is there before writing anything
            self.saved_config = self._read_config()
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise DpjaxError(f"--workdir {self.path} is not writable: choose a writable "
                                 "--workdir, or make it writable.")
        try:
            os.makedirs(self.private_dir, exist_ok=True)
            os.chmod(self.private_dir, 0o700)
        except OSError as e:
            raise DpjaxError(f"--workdir {self.path} cannot be created or written "
                             f"({e.strerror}): choose a writable --workdir.") from None
        if is_primary():
            self._lock()
        return self

    def _read_config(self) -> dict | None:
        """config.json of an earlier run here; refuses a corrupt one, or a missing one
        beside checkpoints (without it the run's settings are unknown)."""
        config_path = os.path.join(self.path, "config.json")
        if not os.path.exists(config_path):
            if self._has_checkpoint():
                raise DpjaxError(f"{config_path} is missing but {self.path}/checkpoints holds a "
                                 "run: restore config.json from a copy, or use a new --workdir.")
            return None
        try:
            with open(config_path) as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise DpjaxError(f"{config_path} is unreadable ({' '.join(str(e).split())}): "
                             "restore it from a copy, or use a new --workdir.") from None
        return saved

    def _has_checkpoint(self) -> bool:
        ckpt = os.path.join(self.path, "checkpoints")
        return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))

    def _lock(self) -> None:
        path = os.path.join(self.path, ".lock")
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise DpjaxError(f"{self.path} is in use by {holder}: wait for it to finish, or "
                             "use another --workdir.") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:  # its holder died without closing: the kernel released the lock
            log.info("%s: the lock left by %s (no longer running) is stale; taking it.",
                     self.path, previous)
        f.seek(0)
        f.truncate()
        f.write(f"dpjax process {os.getpid()} on {socket.gethostname()}")
        f.flush()
        self._lock_file = f  # a killed process's lock is released by the kernel

    def close(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.seek(0)
                self._lock_file.truncate()  # a clean exit leaves no holder's name
                self._lock_file.flush()
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # --- the run's identity ----------------------------------------------------

    def has_run(self) -> bool:
        """True when an earlier run left a config, a checkpoint or a summary here."""
        names = ("config.json", "summary.json", "metrics.jsonl")
        if any(os.path.exists(os.path.join(self.path, n)) for n in names):
            return True
        ckpt = os.path.join(self.path, "checkpoints")
        return os.path.isdir(ckpt) and any(not n.startswith(".") for n in os.listdir(ckpt))

    def check_same_run(self, config_dict: dict, data_print: str) -> None:
        """Refuses to continue a run here with a different config or training data."""
        if self.saved_config is not None:
            changed = config_diff(_fingerprint(self.saved_config),
                                  _fingerprint(public_config(config_dict)))
            if changed:
                raise ConfigError(
                    f"{self.path} holds a run with a different config ({', '.join(changed[:5])} "
                    "differ): use a new --workdir, or rerun with the saved config.json.")
        saved = self._read_private("data.json")
        if saved is not None and saved.get("fingerprint") != data_print:
            raise ConfigError(f"{self.path} holds a run on different training data (size or "
                              "content changed): use a new --workdir, or restore the data.")

    def write_identity(self, config_dict: dict, data_print: str, environment: dict) -> None:
        """config.json, environment.json and the private data fingerprint (process 0)."""
        if not is_primary():
            return
        atomic_write_json(os.path.join(self.path, "config.json"), public_config(config_dict))
        atomic_write_json(os.path.join(self.path, "environment.json"), environment)
        atomic_write_json(os.path.join(self.private_dir, "data.json"),
                          {"fingerprint": data_print}, private=True)

    # --- the seed ----------------------------------------------------------------

    def resolve_seed(self, configured: int, from_checkpoint: tuple[int, str] | None
                     ) -> tuple[int, str]:
        """The run's (seed, source), the same on every process, kept before step 1.

        A checkpoint's seed wins; else `private/seed.json` (a rerun of a run
        that died before its first checkpoint); else a new one: `configured`
        when >= 0 (debugging), OS entropy otherwise. Process 0 decides and
        broadcasts, and writes the file before any step runs.
        """
        randomness.check_seed("seed", configured)
        saved = self._read_private("seed.json")
        if from_checkpoint is not None:
            seed, source = from_checkpoint
        elif saved is not None:
            seed, source = int(saved["seed"]), saved["source"]
        elif configured >= 0:
            seed, source = int(configured), "config"
        else:
            seed, source = randomness.os_seed(), "os"
        if configured >= 0 and seed != configured:
            raise ConfigError(f"{self.path} holds a run with another seed: use a new "
                              "--workdir, or the seed it was started with.")
        seed = randomness.broadcast_from_process_zero(seed)
        source = "os" if randomness.broadcast_from_process_zero(source == "os") else "config"
        if is_primary() and (saved is None or int(saved["seed"]) != seed):
            atomic_write_json(os.path.join(self.private_dir, "seed.json"),
                              {"seed": seed, "source": source}, private=True)
        return seed, source

    def _read_private(self, name: str) -> dict | None:
        path = os.path.join(self.private_dir, name)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise DpjaxError(f"{path} is unreadable ({e}): use a new --workdir.") from None


def check_not_in_use(path: str) -> None:
    """Refuses at once a workdir whose lock another running process holds (writes nothing).

    `Workdir.open` takes the lock later, after the config and data are validated.
    """
    lock = os.path.join(os.path.abspath(path), ".lock")
    if not os.path.isfile(lock):
        return
    try:
        f = open(lock)
    except OSError:
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = f.read().strip() or "another process"
            raise DpjaxError(f"{os.path.abspath(path)} is in use by {holder}: wait for it to "
                             "finish, or use another --workdir.") from None
        fcntl.flock(f, fcntl.LOCK_UN)


def _fingerprint(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in RESUME_SAFE_FIELDS}


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb and not (isinstance(va, (list, tuple)) and list(va) == list(vb or [])):
            out.append(f"{prefix}{k}")
    return out


def environment() -> dict:
    """Package versions, git commit and devices (environment.json)."""
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
    return {"versions": versions, "git_commit": commit,
            "devices": [str(d) for d in jax.devices()], "process_count": jax.process_count()}
