"""What share of a Phase I step is image generation? (DP-RandP issue, item 7.)

Times, on the current device, (a) generating one batch of random-process
images, (b) one whole Phase I training step (generation + two views +
forward/backward + update) for a backbone, and prints (a) / (b).

    python benchmarks/phase1_generation_share.py --model wrn16_4 --resolution 32 --batch 256
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from dpjax.config import base_config
from dpjax.randp import pretrain


def _time(fn, repeats):
    jax.block_until_ready(fn(0))  # compile and warm up
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(i + 1))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="wrn16_4")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--families", default="stylegan_oriented")
    p.add_argument("--hidden_dim", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    c = base_config()
    c.model.name = a.model
    c.pretrain.resolution = a.resolution
    c.pretrain.batch_size = a.batch
    c.pretrain.families = tuple(a.families.split(","))
    c.pretrain.hidden_dim = a.hidden_dim
    c.pretrain.steps = 10_000
    model, tx = pretrain.build(c)
    params = model.init(jax.random.key(0), jnp.zeros((2, a.resolution, a.resolution, 3)))["params"]
    opt_state = tx.init(params)
    step = pretrain.make_train_step(model, tx, c)
    gen = jax.jit(lambda k: pretrain.generate_batch(k, c.pretrain))
    key = jax.random.key(1)
    t_gen = _time(lambda i: gen(jax.random.fold_in(key, i)), a.repeats)
    t_step = _time(lambda i: step(params, opt_state, jax.random.fold_in(key, i))[2], a.repeats)
    print(f"device={jax.devices()[0].device_kind} model={a.model} res={a.resolution} "
          f"batch={a.batch} families={a.families}")
    print(f"generation {t_gen * 1e3:.1f} ms ({a.batch / t_gen:.0f} img/s); whole Phase I step "
          f"{t_step * 1e3:.1f} ms ({a.batch / t_step:.0f} img/s); generation share "
          f"{100 * t_gen / t_step:.1f} %")


if __name__ == "__main__":
    main()
