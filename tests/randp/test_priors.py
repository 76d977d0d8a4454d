"""Starting a private run from a prior directory or a user's pretrained .npz file."""

import numpy as np
import pytest

from dpjax.errors import DpjaxError
from dpjax.randp import priors


def _params():
    return {"conv0": {"kernel": np.ones((3, 3, 1, 4), np.float32)},
            "classifier": {"kernel": np.zeros((4, 2), np.float32),
                           "bias": np.zeros(2, np.float32)}}


def test_npz_checkpoint_file(tmp_path):
    path = tmp_path / "pretrained.npz"
    np.savez(path, **{"conv0/kernel": np.full((3, 3, 1, 4), 7.0, np.float32)})
    params, info = priors.load_into(str(path), _params())
    assert np.all(params["conv0"]["kernel"] == 7.0)
    assert np.all(params["classifier"]["kernel"] == 0.0)
    assert info["name"] == "pretrained_checkpoint" and info["tensors_loaded"] == 1


def test_shape_mismatch_and_unrelated_files_are_clear_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", **{"conv0/kernel": np.ones((5, 5, 1, 4), np.float32)})
    with pytest.raises(DpjaxError, match="shape"):
        priors.load_into(str(tmp_path / "bad.npz"), _params())
    np.savez(tmp_path / "other.npz", **{"something/else": np.ones(3)})
    with pytest.raises(DpjaxError, match="shares no parameter"):
        priors.load_into(str(tmp_path / "other.npz"), _params())
    with pytest.raises(DpjaxError, match="not a prior"):
        priors.load_into(str(tmp_path), _params())


def test_prior_directory_round_trip(tmp_path):
    priors.save_prior(str(tmp_path / "prior"), {"conv0": {"kernel": np.full((3, 3, 1, 4), 2.0)}},
                      {"model": "small_cnn"})
    params, info = priors.load_into(str(tmp_path / "prior"), _params())
    assert np.all(params["conv0"]["kernel"] == 2.0) and info["name"] == "phase1_prior"
