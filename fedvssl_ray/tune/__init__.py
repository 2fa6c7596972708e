"""Ray Tune sweeps of federated pretraining: the trainable, its resources, tables and plots."""

from .results import collect_results, format_table, write_outputs
from .trainable import (
    EVAL_KEYS,
    fit_to_cluster,
    param_space,
    pretrain_trainable,
    round_metrics,
    trial_config,
    trial_name,
    trial_resources,
    with_trial_resources,
)

__all__ = [
    "EVAL_KEYS",
    "collect_results",
    "fit_to_cluster",
    "format_table",
    "param_space",
    "pretrain_trainable",
    "round_metrics",
    "trial_config",
    "trial_name",
    "trial_resources",
    "with_trial_resources",
    "write_outputs",
]
