"""Where the randomness that protects privacy comes from.

DP-SGD's guarantee rests on two random draws an adversary must not know: which
examples each step samples (Poisson sampling) and the Gaussian noise added to
each step's sum. Local DP rests on its Laplace draws. This module decides
where their seeds come from and how each use gets its own stream.

Seeds.
  * By default a run's seed is 63 bits of OS entropy (`secrets`), drawn ONCE
    on process 0 and broadcast to every process before any sampler or key
    exists. A per-process seed would let each host sample its own Poisson
    batch and add its own noise: an example could enter on two hosts (the
    sensitivity is no longer C), the replicas would diverge, and the reported
    ε would be wrong.
  * A fixed seed (`config.seed >= 0`, `ldp.seed >= 0`) is a debugging option.
    Two released runs that share a fixed seed share their batches and their
    noise draws: from two models trained with different σ an adversary
    recovers the noiseless clipped sum by solving two linear equations. Such
    runs are not independent releases; summaries say `seed_source: "config"`.

Streams. Every use draws from its own stream, derived from the seed and a
tag naming the use (`"sampling"`, `"noise"`, `"augment"`, `"canary"`,
`"ldp"`, ...) by a cryptographic hash. No use ever sees the raw seed, so two
uses cannot share random bits, even when an auditor picks the same integer
seed as the training run (the keys then still differ by tag).
"""

from __future__ import annotations

import hashlib
import secrets

import jax
import numpy as np

from dpjax.errors import ConfigError

SEED_BITS = 63

# The tags of the streams dpjax draws from. Adding a use means adding a tag.
TAGS = ("sampling", "noise", "augment", "canary", "canary_coins", "ldp", "pretrain",
        "split", "class_counts")


def os_seed() -> int:
    """63 bits of OS entropy (`secrets.randbits`)."""
    return secrets.randbits(SEED_BITS)


def check_seed(name: str, seed: int) -> None:
    """`seed` must be an int: -1 (OS entropy) or in [0, 2**63)."""
    ok = (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
          and -1 <= int(seed) < 2 ** SEED_BITS)
    if not ok:
        raise ConfigError(f"Expected {name}={seed!r} to be -1 (draw from OS entropy, the "
                          f"default) or a fixed integer in [0, 2**63) (debugging only).")


def broadcast_from_process_zero(value: int) -> int:
    """`value` as process 0 has it, on every process (identity on one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    words = np.array([(value >> 32) & 0xFFFFFFFF, value & 0xFFFFFFFF], np.uint32)
    words = np.asarray(multihost_utils.broadcast_one_to_all(words))
    return (int(words[0]) << 32) | int(words[1])


def shared_seed(configured: int) -> tuple[int, str]:
    """(seed, source): one seed for the whole cluster.

    Args:
      configured: -1 to draw from OS entropy (the default, source "os"), or a
        fixed seed >= 0 (a debugging option, source "config").

    Returns:
      The same (seed, source) on every process: an OS seed is drawn on
      process 0 and broadcast, so every host samples the same batches and
      adds the same noise.
    """
    check_seed("seed", configured)
    if int(configured) >= 0:
        return int(configured), "config"
    return broadcast_from_process_zero(os_seed()), "os"


def derive_seed(seed: int, tag: str) -> int:
    """A 128-bit integer for the stream `tag` of `seed` (BLAKE2b, domain-separated).

    Different tags give unrelated integers; nothing derived from one tag
    reveals another tag's stream.
    """
    if tag not in TAGS:
        raise ValueError(f"Unknown randomness tag {tag!r}; known: {TAGS}.")
    digest = hashlib.blake2b(f"dpjax/{tag}/{int(seed)}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def numpy_rng(seed: int, tag: str, *counters: int) -> np.random.Generator:
    """A NumPy generator for stream `tag` of `seed`, at position `counters` (e.g. a step)."""
    derived = derive_seed(seed, tag)
    words = [(derived >> (32 * i)) & 0xFFFFFFFF for i in range(4)]
    return np.random.default_rng(words + [int(c) for c in counters])


def jax_key(seed: int, tag: str) -> jax.Array:
    """A JAX PRNG key (threefry) for stream `tag` of `seed`, from 64 derived bits."""
    derived = derive_seed(seed, tag)
    words = np.array([derived & 0xFFFFFFFF, (derived >> 32) & 0xFFFFFFFF], np.uint32)
    return jax.random.wrap_key_data(words, impl="threefry2x32")
