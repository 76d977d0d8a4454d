"""dpjax as a library: any Flax model, data from arrays, accounting without data."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from tests.helpers import make_splits


class MyCNN(nn.Module):
    """A user's model: not in dpjax's zoo, with a `train` argument and dropout."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(8, (3, 3))(x)))
        x = nn.Dropout(0.1, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(3)(x)


def _config(**privacy):
    config = dpjax.config.base_config()
    config.privacy.target_epsilon = 2.0
    config.privacy.delta = 1e-3
    config.batch_size, config.micro_batch_size, config.num_steps = 16, 16, 4
    config.progress_bar = False
    for k, v in privacy.items():
        config.privacy[k] = v
    return config


def _arrays():
    s = make_splits(num_train=64, num_test=16, size=8)
    return dpjax.data.from_arrays(train=(s.train.images[..., 0], s.train.labels.astype(np.int64)),
                                  test=(s.test.images, s.test.labels))


@pytest.mark.parametrize("clipping", ["vmap", "fast"])
def test_train_any_linen_module_on_arrays(tmp_path, clipping):
    summary = dpjax.train(_config(clipping=clipping), str(tmp_path), model=MyCNN(),
                          data=_arrays())
    assert summary["epsilon"] == pytest.approx(2.0, rel=0.01)
    assert summary["steps"] == 4 and 0 <= summary["test_accuracy"] <= 1
    assert (tmp_path / "summary.json").exists()


def test_train_an_nnx_module(tmp_path):
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))

    for clipping in ("vmap", "fast"):  # fast: the nnx layers get per-example gradients
        summary = dpjax.train(_config(clipping=clipping), str(tmp_path / clipping),
                              model=Net(nnx.Rngs(0)), data=_arrays())
        assert summary["steps"] == 4 and summary["epsilon"] == pytest.approx(2.0, rel=0.01)


def test_a_model_that_mixes_examples_is_refused_in_one_line(tmp_path):
    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    with pytest.raises(dpjax.DpjaxError) as error:
        dpjax.train(_config(), str(tmp_path / "w"), model=WithBatchNorm(), data=_arrays())
    assert "\n" not in str(error.value) and "batch" in str(error.value).lower()


def test_account_without_data():
    config = _config()
    config.batch_size, config.num_steps = 4096, 875
    config.privacy.target_epsilon, config.privacy.delta = 1.0, 1e-5
    result = dpjax.account(config, num_examples=50_000)
    assert result["noise_multiplier"] == pytest.approx(9.128, rel=5e-3)  # PLD reference value
    assert result["epsilon"] <= 1.0


def test_from_arrays_refuses_what_it_cannot_read():
    with pytest.raises(dpjax.DataError, match="uint8"):
        dpjax.data.from_arrays(train=(np.zeros((4, 8, 8), np.float32), np.zeros(4, int)),
                               test=(np.zeros((2, 8, 8), np.uint8), np.zeros(2, int)))
    with pytest.raises(dpjax.DataError, match="labels"):
        dpjax.data.from_arrays(train=(np.zeros((4, 8, 8), np.uint8), jnp.zeros((3,))),
                               test=(np.zeros((2, 8, 8), np.uint8), np.zeros(2, int)))


def test_a_config_file_through_the_library(tmp_path, monkeypatch):
    from tests.helpers import REPO

    monkeypatch.chdir(REPO)
    config = dpjax.config.load_config("configs/quickstart.py:steps=3,eps=2")
    config.model.name, config.progress_bar = "mlp", False
    summary = dpjax.train(config, str(tmp_path))
    assert summary["steps"] == 3 and summary["dataset"] == "digits"
    assert summary["epsilon"] == pytest.approx(2.0, rel=0.01)
