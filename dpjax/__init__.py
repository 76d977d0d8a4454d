"""dpjax: differentially private image classification in JAX.

    import dpjax
    config = dpjax.config.base_config()
    config.privacy.target_epsilon, config.batch_size, config.num_steps = 2.0, 256, 300
    data = dpjax.data.from_arrays(train=(images, labels), test=(test_images, test_labels))
    summary = dpjax.train(config, "runs/mine", model=my_flax_module, data=data)
    print(summary["test_accuracy"], summary["epsilon"])

`dpjax.account(config, num_examples)` gives σ and ε without data or training.
"""

from __future__ import annotations

from typing import Any

from dpjax import config, data, train  # noqa: F401  (dpjax.train(...) calls the trainer)
from dpjax.errors import ConfigError, DataError, DpjaxError  # noqa: F401

__version__ = "0.1.0"


def account(config: Any, num_examples: int | None = None) -> dict:  # noqa: F811
    """σ, q, steps and ε of `config` for a training set of `num_examples` (no data needed)."""
    from dpjax.train import loop

    return loop.account(config, num_examples=num_examples)
