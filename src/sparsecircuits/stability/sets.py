"""Set measures over repeated circuits: Jaccard (pairwise mean and range), the core (kept
in every run), the union (kept in any) and how often each node was kept."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def pairwise_jaccard(sets: Sequence[set]) -> dict | None:
    """Mean, min and max Jaccard over every pair of sets (None below two sets)."""
    values = [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "pairs": len(values),
    }


def core(sets: Sequence[set]) -> set:
    """What every set holds (empty for no sets)."""
    return set.intersection(*map(set, sets)) if sets else set()


def union(sets: Sequence[set]) -> set:
    return set().union(*sets)


def frequency(sets: Sequence[set]) -> dict[str, float]:
    """Share of the sets that hold each element, most frequent first (ties by name)."""
    counts = Counter(x for s in sets for x in s)
    return {k: counts[k] / len(sets) for k in sorted(counts, key=lambda k: (-counts[k], str(k)))}


def most_kept(sets: Sequence[set], exclude: AbstractSet = frozenset()) -> str | None:
    """The element held by the most sets (ties: the first by name), not in `exclude`."""
    for name in frequency(sets):
        if name not in exclude:
            return name
    return None
