"""What an explanation depends on besides the weights, and the bar a node must clear to
count as explained."""

from __future__ import annotations

from dataclasses import dataclass

LEGIBLE_AUC = 0.9
LEGIBLE_PR = 0.9  # precision and recall at the best-F1 threshold
CACHE_FILE = "explanations.json"
VERSION = 1  # of the scoring and the library: a change invalidates every cache


@dataclass
class ExplainConfig:
    """What an explanation depends on besides the weights (part of the cache key)."""

    batches: int = 16  # held-out windows: as for the node means
    batch_size: int = 16
    n_tokens: int = 40  # token-identity features for the most frequent tokens
    min_positives: int = 10  # a feature true fewer times than this is not scored
    context_before: int = 12  # tokens shown before the example token
    context_after: int = 3
    top_k: int = 8  # top input tokens / pushed logits
