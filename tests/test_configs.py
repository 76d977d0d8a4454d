"""Every config file loads, validates, and accounts; the medical CPU variant runs."""

import glob
import os

import numpy as np
import pytest

from dpjax import config as config_lib
from dpjax.errors import ConfigError
from dpjax.train import loop
from tests.helpers import REPO

CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))
VARIANTS = {
    "cifar10_wrn16_4.py": ["eps=1", "eps=2", "eps=4", "eps=8", "runlocal=True"],
    "cifar100_wrn16_4.py": ["eps=8"],
    "dprandp_cifar10.py": ["eps=1", "eps=8,augmult=4", "runlocal=True"],
    "dprandp_cifar100.py": ["eps=2"],
    "dprandp_medmnist.py": ["path=x.npz", "path=x.npz,runlocal=True", "path=x.npz,cpu=True,eps=1",
                            "path=x.npz,la=False"],
    "dprandp_quickstart.py": ["eps=1"],
    "medical_pneumonia.py": ["path=x", "path=x,mode=ldp,beta=2", "path=x,mode=dpsgd,sigma=1",
                             "path=x,mode=dpsgd,eps=2,cpu=True",
                             "path=x,mode=dpsgd,eps=1,cpu=True,tau=3,prior_eps=0.2,clip=0.5",
                             "recipe=paper,path=x,mode=dpsgd,sigma=1",
                             "recipe=paper,path=x,cpu=True,mode=ldp,beta=4"],
    "medical_aptos.py": ["path=x,mode=dpsgd,sigma=4", "path=x,cpu=True,mode=dpsgd,eps=8",
                         "recipe=paper,path=x,mode=original"],
    "quickstart.py": ["eps=1", "eps=8,steps=400"],
    "imagenet_resnet50.py": ["path=x", "path=x,eps=4,steps=100", "path=x,runlocal=True"],
}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_validates(path):
    for arg in [None] + VARIANTS.get(os.path.basename(path), []):
        spec = path if arg is None else f"{path}:{arg}"
        if arg is None and os.path.basename(path).startswith(("medical", "dprandp_med",
                                                              "imagenet")):
            with pytest.raises(ConfigError):  # dataset.path is required
                config_lib.validate(config_lib.load_config(spec))
            continue
        config = config_lib.load_config(spec)
        config_lib.validate(config)


def test_recipe_values():
    c = config_lib.load_config(os.path.join(REPO, "configs", "cifar10_wrn16_4.py:eps=1"))
    assert (c.batch_size, c.num_steps, c.augmult, c.optimizer.learning_rate, c.ema_decay) == (
        4096, 875, 16, 2.0, 0.999)
    plan = loop.plan_from_config(c, 50_000)
    assert plan.noise_multiplier == pytest.approx(9.128, rel=5e-3)  # docs/methods.md, PLD
    r = config_lib.load_config(os.path.join(REPO, "configs", "dprandp_cifar10.py:eps=1"))
    assert (r.phases.head_steps, r.phases.head_learning_rate, r.optimizer.learning_rate) == (
        96, 15.0, 0.4)
    assert r.pretrain.steps == 200 * 105_000 // 256 and r.ema_warmup


def test_variants_keep_explicit_values():
    """`cpu=True` / `runlocal=True` change defaults only, never a value given beside them."""
    med = os.path.join(REPO, "configs", "medical_pneumonia.py")
    c = config_lib.load_config(f"{med}:cpu=True,batch=64,size=32,epochs=2,path=x")
    assert (c.batch_size, c.dataset.image_size, c.num_epochs) == (64, 32, 2.0)
    c = config_lib.load_config(f"{med}:recipe=paper,cpu=True,path=x")
    assert (c.batch_size, c.dataset.image_size, c.num_epochs) == (128, 28, 5.0)
    c = config_lib.load_config(f"{med}:cpu=True,path=x,mode=dpsgd,eps=1,batch=256,lr=4")
    assert (c.batch_size, c.optimizer.learning_rate, c.num_steps, c.num_epochs) == (
        256, 4.0, 200, 0.0)
    c10 = os.path.join(REPO, "configs", "cifar10_wrn16_4.py")
    c = config_lib.load_config(f"{c10}:runlocal=True,steps=3,augmult=4")
    assert (c.num_steps, c.augmult, c.batch_size) == (3, 4, 256)
    with pytest.raises(ConfigError, match="sigma=1 and eps=2 are both given"):
        config_lib.load_config(f"{med}:mode=dpsgd,sigma=1,eps=2,path=x")


def test_configs_import_each_other_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = config_lib.load_config(os.path.join(REPO, "configs", "dprandp_cifar100.py:eps=2"))
    assert c.dataset.tfds_name == "cifar100" and c.dataset.mean[0] == 0.5071
    # A user's config elsewhere may import its neighbours and dpjax's configs package.
    (tmp_path / "shared_bits.py").write_text("LR = 0.5\n")
    (tmp_path / "mine.py").write_text(
        "import shared_bits\nfrom configs import common\n\n\n"
        "def get_config(arg=None):\n"
        "    c = common.wrn_recipe(arg, 'cifar10', common.CIFAR10_MEAN, common.CIFAR10_STD)\n"
        "    c.optimizer.learning_rate = shared_bits.LR\n"
        "    return c\n")
    monkeypatch.syspath_prepend(REPO)
    c = config_lib.load_config(str(tmp_path / "mine.py") + ":eps=8")
    assert c.optimizer.learning_rate == 0.5 and c.num_steps == 2468


def test_medical_recipes(tmp_path):
    """The dp recipe (default): DP-SGD settings, logit adjustment with a DP prior composed into
    ε; the non-private columns their own; recipe=paper keeps the paper's settings."""
    med = os.path.join(REPO, "configs", "medical_pneumonia.py")
    c = config_lib.load_config(f"{med}:cpu=True,data=npz,path=x,mode=dpsgd,eps=1")
    assert (c.model.name, c.model.kwargs.depth, c.batch_size, c.num_steps) == ("wrn", 10, 512, 200)
    assert (c.optimizer.name, c.optimizer.learning_rate, c.privacy.clip_norm) == ("sgd", 2.0, 1.0)
    assert (c.ema_decay, c.ema_warmup, c.privacy.clipping) == (0.99, True, "fast")
    assert (c.imbalance.method, c.imbalance.prior, c.imbalance.prior_epsilon,
            c.imbalance.tau) == ("logit_adjustment", "dp", 0.1, 2.0)
    plan = loop.plan_from_config(c, 3882)
    assert [r[0] for r in plan.pre_releases] == ["class_counts"]
    assert 0.999 < plan.planned_epsilon() <= 1.0  # the counts' ε inside the target
    c = config_lib.load_config(f"{med}:cpu=True,data=npz,path=x,mode=original")
    assert (c.optimizer.name, c.batch_size, c.num_epochs) == ("momentum", 128, 15.0)
    assert (c.imbalance.prior, c.imbalance.tau, c.privacy.mode) == ("empirical", 1.0, "none")
    c = config_lib.load_config(f"{med}:recipe=paper,path=x,mode=dpsgd,sigma=2")
    assert (c.model.name, c.batch_size, c.num_epochs, c.optimizer.learning_rate) == (
        "resnet18", 128, 50.0, 0.01)
    assert c.imbalance.method == "none" and c.optimizer.weight_decay == 1e-3
    with pytest.raises(ConfigError, match="argument.* of recipe=dp"):
        config_lib.load_config(f"{med}:recipe=paper,path=x,tau=3")
    with pytest.raises(ConfigError, match="recipe='x'"):
        config_lib.load_config(f"{med}:recipe=x,path=x")
    with pytest.raises(ConfigError, match="valid keys: .*tau"):
        config_lib.load_config(f"{med}:path=x,bogus=1")


def test_medical_cpu_variant_runs_on_a_medmnist_file(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 160), ("val", 20), ("test", 40)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.random((n, 1)) < 0.8).astype(np.int64)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    spec = (f"{REPO}/configs/medical_pneumonia.py:cpu=True,data=npz,mode=dpsgd,sigma=1,"
            f"epochs=1,batch=80,path={tmp_path}/pneumoniamnist.npz")
    # Smaller images than the variant's 28 px, to keep the test suite fast.
    config = config_lib.load_config(spec, ["privacy.delta=1e-3", "progress_bar=False",
                                           "metrics.bootstrap_resamples=20",
                                           "dataset.image_size=16"])
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["steps"] == 2 and summary["model"] == "wrn"
    assert summary["test_auroc"] is not None and "test_balanced_accuracy" in summary
    assert summary["class_prior_source"] == "dp" and summary["class_prior_epsilon"] == 0.1
    assert summary["epsilon_training_alone"] < summary["epsilon"]
