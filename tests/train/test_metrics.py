"""Clinical metrics against scikit-learn, and bootstrap intervals."""

import copy
import doctest
import json
import pickle

import numpy as np
import pytest
from sklearn import metrics as skm

from dpjax.train import metrics


def _random_data(n, k, seed=0, signal=1.5):
    """Labels and softmax probabilities that are informative but imperfect."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("k", [2, 5])
def test_matches_sklearn(k):
    labels, probs = _random_data(300, k, seed=k)
    preds = probs.argmax(1)
    m = metrics.classification_metrics(labels, probs, k, ordinal=True)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    if k == 2:
        expected_auc = skm.roc_auc_score(labels, probs[:, 1])
    else:
        expected_auc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["auroc"] == pytest.approx(expected_auc)
    assert m["quadratic_weighted_kappa"] == pytest.approx(
        skm.cohen_kappa_score(labels, preds, weights="quadratic", labels=list(range(k))))
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, preds,
                                                         labels=list(range(k))).tolist()
    assert m["num_examples"] == 300
    assert "auroc_note" not in m


def test_auroc_with_ties_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    p1 = np.round(rng.uniform(size=200) * 0.5 + 0.3 * labels, 1)  # many ties
    probs = np.stack([1 - p1, p1], axis=1)
    m = metrics.classification_metrics(labels, probs, 2)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, p1))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class():
    labels, probs = _random_data(100, 5, seed=3)
    labels[labels == 4] = 3   # class 4 never occurs
    preds = probs.argmax(1)
    m = metrics.classification_metrics(labels, probs, 5, ordinal=True)
    assert m["auroc"] is None and "4" in m["auroc_note"]
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert m["quadratic_weighted_kappa"] == pytest.approx(
        skm.cohen_kappa_score(labels, preds, weights="quadratic", labels=list(range(5))))
    out = metrics.evaluate_predictions(labels, probs, 5, num_resamples=50)
    assert out["auroc_ci95"] == [None, None] and out["auroc_ci95_skipped"] == 50
    json.dumps(out)


def test_single_class_kappa_undefined():
    labels = np.zeros(10, int)
    probs = np.tile([0.9, 0.1], (10, 1))
    m = metrics.classification_metrics(labels, probs, 2, ordinal=True)
    assert m["accuracy"] == 1.0 and m["quadratic_weighted_kappa"] is None
    assert m["auroc"] is None


def test_bootstrap_contains_estimate_and_narrows():
    small = _random_data(100, 2, seed=4)
    large = _random_data(1600, 2, seed=4)
    ci_small = metrics.bootstrap_ci(*small, 2, num_resamples=300, seed=0)
    ci_large = metrics.bootstrap_ci(*large, 2, num_resamples=300, seed=0)
    point = metrics.classification_metrics(*small, 2)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        low, high = ci_small[name]
        assert low <= point[name] <= high, name
        assert (ci_large[name][1] - ci_large[name][0]) < 0.6 * (high - low), name
        assert ci_small[name].skipped == 0


def test_bootstrap_auroc_matches_sklearn_per_resample():
    labels, probs = _random_data(60, 3, seed=5)
    ours = metrics.bootstrap_ci(labels, probs, 3, metric_names=("auroc",), num_resamples=40,
                                seed=9)["auroc"]
    # Recompute the same resamples with scikit-learn (same generator, same draws).
    rng = np.random.default_rng(9)
    idx = rng.integers(0, 60, size=(40, 60))
    vals = [skm.roc_auc_score(labels[i], probs[i], multi_class="ovr")
            for i in idx if len(np.unique(labels[i])) == 3]
    assert ours.skipped == 40 - len(vals)
    np.testing.assert_allclose(ours, np.percentile(vals, [2.5, 97.5]))


def test_bootstrap_kappa_and_skips():
    labels, probs = _random_data(12, 5, seed=6)
    ci = metrics.bootstrap_ci(labels, probs, 5, num_resamples=200, ordinal=True)
    assert "quadratic_weighted_kappa" in ci
    assert ci["auroc"].skipped > 0  # tiny sample: some resamples miss a class
    assert ci["auroc"].num_resamples == 200
    # The counts survive copying and pickling (the interval is a tuple subclass).
    again = pickle.loads(pickle.dumps(ci["auroc"]))
    assert again == ci["auroc"] and again.skipped == ci["auroc"].skipped
    assert copy.deepcopy(ci["auroc"]).num_resamples == 200


def test_bootstrap_with_many_resamples_completes():
    # Its speed is a benchmark's business; here only that 1000 resamples work.
    labels, probs = _random_data(400, 5, seed=7)
    ci = metrics.bootstrap_ci(labels, probs, 5, num_resamples=1000, ordinal=True)
    assert ci["auroc"].num_resamples == 1000


def test_evaluate_predictions_json_friendly():
    labels, probs = _random_data(200, 2, seed=8)
    out = metrics.evaluate_predictions(labels, probs, 2, num_resamples=200)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        low, high = out[f"{name}_ci95"]
        assert isinstance(low, float) and low <= out[name] <= high
    assert out["bootstrap_resamples"] == 200
    assert json.loads(json.dumps(out))["confusion_matrix"] == out["confusion_matrix"]
    assert "quadratic_weighted_kappa_ci95" not in out
    assert "accuracy_ci95" not in metrics.evaluate_predictions(labels, probs, 2,
                                                               num_resamples=0)


def test_input_validation():
    labels, probs = _random_data(10, 3)
    with pytest.raises(ValueError, match="probs"):
        metrics.classification_metrics(labels, probs[:, :2], 3)
    with pytest.raises(ValueError, match="labels"):
        metrics.classification_metrics(labels + 3, probs, 3)
    with pytest.raises(ValueError, match="Unknown"):
        metrics.bootstrap_ci(labels, probs, 3, metric_names=("sensitivity",))
    # MedMNIST-style (N, 1) labels are accepted.
    assert metrics.classification_metrics(labels[:, None], probs, 3)["num_examples"] == 10


def test_docstring_examples():
    result = doctest.testmod(metrics, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
