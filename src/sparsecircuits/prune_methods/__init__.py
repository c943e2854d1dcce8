"""Pruning methods, each in its own module behind one shape:
`(problem, config, progress) -> {hook: score per node}`; and how a mask set scores on a
split (evaluate.py), which judges every method's circuit alike."""

from .attribution import attribution_scores
from .base import Problem, PruneConfig, ScoreFn
from .evaluate import (
    Evaluator,
    calibrate,
    diff_metrics,
    empty_circuit_metrics,
    empty_metrics,
    full_model_metrics,
)
from .magnitude import magnitude_scores
from .masks import learned_mask_scores
from .random_scores import random_scores

METHODS: dict[str, ScoreFn] = {
    "masks": learned_mask_scores,
    "attribution": attribution_scores,
    "magnitude": magnitude_scores,
    "random": random_scores,
}

__all__ = [
    "METHODS",
    "Evaluator",
    "Problem",
    "PruneConfig",
    "ScoreFn",
    "calibrate",
    "diff_metrics",
    "empty_circuit_metrics",
    "empty_metrics",
    "full_model_metrics",
]
