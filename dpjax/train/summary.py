"""summary.json: what a finished run reports, and what its numbers cover.

Every number here is either public (the config, the data set's size), a
post-processing of the privatized updates (the final parameters' test
metrics, ε), or listed under `not_covered_by_epsilon`.
"""

from __future__ import annotations

import ml_collections

from dpjax.privacy.plan import DPExecutionPlan
from dpjax.privacy.sampling import PrivacyLedger

EPSILON_COVERS = ("one run with these hyperparameters, add/remove-one neighbouring; tuning "
                  "hyperparameters on the private data costs privacy too and is not included")
FIXED_SEED_WARNING = (
    "This run used a fixed seed (a debugging option): anyone who learns the seed can remove "
    "the noise, and runs sharing a seed share their batches and noise, so two released runs "
    "(e.g. with different noise multipliers) reveal the noiseless gradient sums. Epsilon "
    "holds only if the seed stays secret and no other released run used it.")
SHUFFLE_WARNING = ("Batches were fixed-size shuffled, not Poisson-sampled: the reported epsilon "
                   "is the Poisson epsilon and does NOT apply.")


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
    if warnings:
        summary["warning"] = " ".join(warnings)
    not_covered = []
    for key, value in (extra or {}).items():
        summary[key] = value
        if key.startswith("train_") or key == "test_train_overlap":
            not_covered.append(key)
    if not_covered:
        summary["not_covered_by_epsilon"] = sorted(not_covered)
    return summary
