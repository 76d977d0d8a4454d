"""Patient-level privacy: sample patients, clip each patient's summed gradient."""

import dataclasses
import json
import os

import jax
import numpy as np
import optax
import pytest

from dpjax import models
from dpjax.errors import ConfigError
from dpjax.train import loop
from dpjax.train import step as step_lib
from tests.helpers import make_splits
from tests.train.test_loop import tiny_config

LR, C, B = 0.5, 0.05, 8.0


def _patient_update(fns, state, images, labels, key=0):
    """One step over units: images (U, K, H, W, C), labels (U, K) with −1 padding."""
    state = jax.tree_util.tree_map(jax.numpy.array, state)  # a copy: the update donates it
    acc, stats = fns.zeros(state.params)
    u = len(labels)
    acc, stats = fns.accumulate(state.params, acc, stats, images, labels,
                                np.arange(u, dtype=np.int32), np.ones((u,), bool),
                                jax.random.key(key), C)
    new, _, _ = fns.update(state, acc, stats, jax.random.key(1), 0.0, B)
    return jax.tree_util.tree_map(np.asarray, new.params)


def test_removing_a_patient_moves_the_update_by_at_most_lr_c_over_b():
    model = models.get_model("mlp", 3, width=16)
    spec = step_lib.InputSpec(mean=(0.5,), std=(0.5,), unit_size=4)
    fns = step_lib.build_step_fns(model, spec, optax.sgd(LR), private=True)
    params = model.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    state = step_lib.init_state(params, optax.sgd(LR))
    data = make_splits(num_train=24, seed=3).train
    images = data.images.reshape(6, 4, 8, 8, 1)
    labels = data.labels.reshape(6, 4).copy()
    labels[0, 2:] = -1    # patient 0 has 2 images, patient 1 has 3
    labels[1, 3] = -1
    full = _patient_update(fns, state, images, labels)
    for p in range(6):
        keep = np.arange(6) != p
        less = _patient_update(fns, state, images[keep], labels[keep])
        dist = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(
            jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(less))))
        assert dist <= LR * C / B * (1 + 1e-5)
    # Each patient counts once, however many images: clipping binds per patient.
    assert dist > 0.5 * LR * C / B


def test_loop_with_patient_units(tmp_path):
    data = make_splits(num_train=60, seed=1)
    ids = np.repeat(np.arange(20), 3)[np.random.default_rng(0).permutation(60)]
    data = dataclasses.replace(data, info={"train_patient_ids": ids})
    config = tiny_config(**{"privacy.unit": "patient", "batch_size": 5})
    summary = loop.train_and_evaluate(config, str(tmp_path), data=data)
    saved = json.load(open(tmp_path / "summary.json"))
    assert saved["privacy_unit"] == "patient" and saved["num_privacy_units"] == 20
    assert saved["sampling_rate"] == pytest.approx(5 / 20)
    assert summary["epsilon"] <= 2.0


def test_patient_units_need_patient_ids(tmp_path):
    with pytest.raises(ConfigError, match="patient ids"):
        loop.train_and_evaluate(tiny_config(**{"privacy.unit": "patient"}), str(tmp_path),
                                data=make_splits())


def test_kermany_folder_with_patient_privacy(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    names = {"NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "IM-0002-0001.jpeg",
                        "NORMAL2-IM-0003-0001.jpeg"],
             "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg",
                           "person2_bacteria_3.jpeg", "person3_virus_4.jpeg"]}
    for split in ("train", "test"):
        for cls, files in names.items():
            os.makedirs(tmp_path / "chest_xray" / split / cls)
            for f in files:
                size = int(rng.integers(20, 30))
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
                    tmp_path / "chest_xray" / split / cls / f)
    config = tiny_config(**{"privacy.unit": "patient", "batch_size": 3,
                            "dataset.name": "kermany", "dataset.path": str(tmp_path / "chest_xray"),
                            "dataset.image_size": 16})
    config.privacy.delta = 1e-2
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["privacy_unit"] == "patient" and summary["num_privacy_units"] == 6
