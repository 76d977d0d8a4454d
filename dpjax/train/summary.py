"""summary.json: what a finished run reports, and what its numbers cover.

Every number here is either public (the config, the data set's size), a
post-processing of the privatized updates (the final parameters' test
metrics, ε), a private release composed into ε (the DP class prior of logit
adjustment, `pre_releases`), or listed under `not_covered_by_epsilon`.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from dpjax.data import sources
from dpjax.privacy import accounting
from dpjax.privacy.plan import DPExecutionPlan
from dpjax.privacy.sampling import PrivacyLedger
from dpjax.train import imbalance, metrics

EPSILON_COVERS = ("one run with these hyperparameters, add/remove-one neighbouring; tuning "
                  "hyperparameters on the private data costs privacy too and is not included")
FIXED_SEED_WARNING = (
    "This run used a fixed seed (a debugging option): anyone who learns the seed can remove "
    "the noise, and runs sharing a seed share their batches and noise, so two released runs "
    "(e.g. with different noise multipliers) reveal the noiseless gradient sums. Epsilon "
    "holds only if the seed stays secret and no other released run used it.")
SHUFFLE_WARNING = ("Batches were fixed-size shuffled, not Poisson-sampled: the reported epsilon "
                   "is the Poisson epsilon and does NOT apply.")
# A model that gives one class to at least this fraction of the test images is flagged.
ONE_CLASS_FRACTION = 0.98
ONE_CLASS_WARNING = (
    "The model predicts class {cls!r} for {pct:.1f} % of the test images: it is (almost) a "
    "one-class predictor, whose accuracy is the share of that class in the test set "
    "(balanced accuracy {bacc}); it has not learned to tell the classes apart at this "
    "decision rule (AUROC {auroc} ranks them without one).")


def run_entries(data: sources.DataSplits, test_probs: np.ndarray) -> dict:
    """Summary entries every run gets beside accuracy, from the final test probabilities.

    Test balanced accuracy, AUROC (binary, or one-vs-rest macro) and macro-F1, the
    confusion matrix and the fraction of test images given each class (for the
    one-class warning), plus the class-imbalance entries (`train.imbalance`: the
    prior, its source and ε). Test metrics are post-processing of the released model.
    """
    entries = imbalance.summary_entries(data)
    labels = np.asarray(data.test.labels).reshape(-1)
    probs = np.asarray(test_probs)
    if labels.size == 0 or data.num_classes < 2 or probs.shape != (labels.size,
                                                                     data.num_classes):
        return entries
    m = metrics.classification_metrics(labels, probs, data.num_classes)
    fractions = np.bincount(probs.argmax(axis=1), minlength=data.num_classes) / labels.size
    entries.update(test_balanced_accuracy=m["balanced_accuracy"], test_auroc=m["auroc"],
                   test_macro_f1=m["macro_f1"], test_confusion_matrix=m["confusion_matrix"],
                   test_predicted_class_fractions=[float(f) for f in fractions])
    return entries


def one_class_warning(entries: dict, class_names=None) -> str | None:
    """The warning for a model that predicts one class for (almost) every test image."""
    fractions = entries.get("test_predicted_class_fractions")
    if not fractions or max(fractions) < ONE_CLASS_FRACTION:
        return None
    top = int(np.argmax(fractions))
    cls = class_names[top] if class_names and top < len(class_names) else top
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    return ONE_CLASS_WARNING.format(cls=cls, pct=100 * fractions[top],
                                    bacc=fmt(entries.get("test_balanced_accuracy")),
                                    auroc=fmt(entries.get("test_auroc")))


def build(config: ml_collections.ConfigDict, plan: DPExecutionPlan, ledger: PrivacyLedger, *,
          final: dict, data_name: str, num_test: int, micro_batch_size: int, num_devices: int,
          wall_time_s: float, seed_source: str, replica_fingerprints: list[str],
          prior_info: dict | None = None, extra: dict | None = None) -> dict:
    """The summary dict of a finished run (strict-JSON values only)."""
    private = plan.private
    phases = plan.phase_report(ledger)
    if prior_info:
        phases.insert(0, {"name": prior_info.get("name", "phase1_prior"), "steps": 0,
                          "noise_multiplier": None, "sampling_rate": None, "epsilon": 0.0})
    summary = {
        "finished": True,
        "test_accuracy": final["accuracy"],
        "test_accuracy_raw": final["accuracy_raw"],
        "epsilon": plan.epsilon(ledger),
        "delta": plan.delta if private else None,
        "accountant": plan.accountant if private else None,
        "epsilon_covers": EPSILON_COVERS if private else None,
        "noise_multiplier": plan.noise_multiplier if private else None,
        "noise_multiplier_calibrated": plan.calibrated,
        "sampling_rate": plan.sampling_rate,
        "sampling": "poisson" if plan.poisson else "shuffle",
        "epsilon_valid_for_sampling": plan.poisson,
        "steps": ledger.steps,
        "batch_size": plan.expected_batch_size,
        "micro_batch_size": micro_batch_size,
        "clip_norm": plan.clip_norm if private else None,
        "augmult": config.augmult,
        "neighbouring": "add_remove",
        "privacy_unit": config.privacy.unit,
        "num_privacy_units": plan.num_examples,
        "dataset": data_name,
        "num_train": plan.num_examples,
        "num_test": num_test,
        "model": config.model.name,
        "ema": config.ema_decay > 0,
        "wall_time_s": wall_time_s,
        "seed_source": seed_source,
        "independent_release": seed_source == "os",
        "phases": phases,
        "devices": num_devices,
        "replica_fingerprints": replica_fingerprints,
    }
    if prior_info:
        summary["prior"] = prior_info
    warnings = []
    if private and seed_source != "os":
        warnings.append(FIXED_SEED_WARNING)
    if private and not plan.poisson:
        warnings.append(SHUFFLE_WARNING)
    one_class = one_class_warning(extra or {})
    if (extra or {}).get("test_predicted_class_fractions"):
        summary["one_class_predictor"] = one_class is not None
    if one_class:
        warnings.append(one_class)
    if private and plan.pre_releases:
        # ε above composes these releases (e.g. the DP class counts) with the training.
        summary["pre_releases"] = [{"name": name, "epsilon": eps}
                                   for name, _, eps in plan.pre_releases]
        summary["epsilon_training_alone"] = accounting.epsilon(ledger.phases, plan.delta,
                                                               plan.accountant)
    if warnings:
        summary["warning"] = " ".join(warnings)
    not_covered = []
    for key, value in (extra or {}).items():
        summary[key] = value
        if key.startswith("train_") or key == "test_train_overlap":
            not_covered.append(key)
    if summary.get("class_prior_source") == "empirical":
        not_covered.append("class_prior")
    if not_covered:
        summary["not_covered_by_epsilon"] = sorted(not_covered)
    return summary
