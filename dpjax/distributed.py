"""Multi-host set-up through JAX's own multi-controller runtime (`jax.distributed`).

Every host runs the same command; JAX connects them. The coordinator address,
process count and index come from, in order: explicit arguments (the
`dpjax train --coordinator_address ... --num_processes ... --process_id ...`
flags), the environment (`DPJAX_COORDINATOR_ADDRESS`, `DPJAX_NUM_PROCESSES`,
`DPJAX_PROCESS_ID`), or JAX's cluster auto-detection (SLURM, TPU VMs, ...).

What keeps DP correct on a cluster: every host derives the Poisson batch
of step t from the same shared seed and takes its own rows of it; the
clipped sums are psum-ed over all devices of all hosts; the noise is drawn
from one key shared by every host, after the psum, so it is added once for
the global batch. The ε is that of the cluster's run as a whole.
"""

from __future__ import annotations

import os

import jax

from dpjax.errors import ConfigError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"Environment variable {name}={value!r} is not an integer.") from None


def detected_cluster() -> str | None:
    """The cluster environment JAX can configure itself from, if any."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
        return "tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Connects this process to the others; returns True when multi-host.

    Single-process runs (nothing given, nothing detected) are left alone.
    """
    coordinator_address = coordinator_address or os.environ.get("DPJAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else _env_int(
        "DPJAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("DPJAX_PROCESS_ID")
    explicit = coordinator_address is not None or num_processes not in (None, 1)
    if not explicit and detected_cluster() is None:
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ConfigError("Multi-host needs all of --coordinator_address, --num_processes and "
                          "--process_id (or DPJAX_COORDINATOR_ADDRESS, DPJAX_NUM_PROCESSES, "
                          "DPJAX_PROCESS_ID).")
    if explicit and not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}).")
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
        # CPU processes exchange collectives through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()
    return jax.process_count() > 1


def _has_accelerator() -> bool:
    import importlib.util

    # Without touching the backend (initialize must come before it starts).
    return any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


def is_primary() -> bool:
    """Only process 0 writes summaries, metrics and configs."""
    return jax.process_index() == 0
