"""Pruning methods, each in its own module behind one shape:
`(problem, config, progress) -> {hook: score per node}`."""

from .attribution import attribution_scores
from .base import Problem, PruneConfig, ScoreFn
from .magnitude import magnitude_scores
from .masks import learned_mask_scores
from .random_scores import random_scores

METHODS: dict[str, ScoreFn] = {
    "masks": learned_mask_scores,
    "attribution": attribution_scores,
    "magnitude": magnitude_scores,
    "random": random_scores,
}

__all__ = ["METHODS", "Problem", "PruneConfig", "ScoreFn"]
