"""Data sources by name: `dataset.name` picks a loader registered here.

A loader takes the config's `dataset` block and returns `DataSplits`:

    @registry.register("my_scans")
    def load_my_scans(c: ml_collections.ConfigDict) -> DataSplits:
        ...  # reads c.path, c.image_size, ...

The built-in sources (digits, tfds, npz, folder, kermany, csv) register
themselves when `dpjax.data.sources` is imported; `sources.load` is the entry
point. A loader receives every field of the `dataset` block of
`dpjax.config.base_config()`, with the values given overriding the defaults,
so it can only read fields a config can set: a field missing from the base
config is an AttributeError in the loader's own tests, not a silent default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from dpjax.data.protocol import DataSplits
from dpjax.errors import ConfigError

Loader = Callable[[ml_collections.ConfigDict], DataSplits]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: makes `loader` the source for `dataset.name=name`."""

    def decorate(loader: Loader) -> Loader:
        old = _LOADERS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (loader.__module__,
                                                                       loader.__qualname__):
            raise ValueError(f"dataset.name={name!r} is already registered by "
                             f"{old.__module__}.{old.__qualname__}.")
        _LOADERS[name] = loader
        return loader

    return decorate


def names() -> tuple[str, ...]:
    """The registered source names, sorted."""
    return tuple(sorted(_LOADERS))


def check_name(name: Any) -> None:
    """ConfigError (one line, listing the registered names) unless `name` is registered."""
    if name not in _LOADERS:
        raise ConfigError(f"Expected dataset.name in {names()}, got {name!r}.")


def loader(name: str) -> Loader:
    check_name(name)
    return _LOADERS[name]


def fields(dataset_config: Mapping[str, Any] | ml_collections.ConfigDict | None
           ) -> ml_collections.FrozenConfigDict:
    """The `dataset` block with every field of the base config, given values first.

    Raises:
      ConfigError: a field that is not in the base config's `dataset` block.
    """
    from dpjax import config as config_lib

    defaults = config_lib.base_config().dataset.to_dict()
    given = dict(dataset_config.items()) if dataset_config is not None else {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"dataset.{unknown[0]} is not a dataset field (the fields are "
                          f"{', '.join(sorted(defaults))}).")
    return ml_collections.FrozenConfigDict({**defaults, **given})


# The training split's size of public TFDS sets as published in the TFDS catalogue, so
# that `dpjax account` needs no data for them (N is public: it is q's denominator).
PUBLISHED_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 1_281_167,
                         "mnist": 60_000}


def published_train_size(dataset_config: Mapping[str, Any] | ml_collections.ConfigDict,
                         unit: str = "example") -> int | None:
    """N of `dataset_config`'s training split when it is a known TFDS set's whole "train"
    split counted in examples (`PUBLISHED_TRAIN_SIZES`); None otherwise (load the data)."""
    d = fields(dataset_config)
    if d.name != "tfds" or unit != "example" or d.train_split != "train":
        return None
    return PUBLISHED_TRAIN_SIZES.get(d.tfds_name.split(":")[0])
