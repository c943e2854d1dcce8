"""How well a node's activation predicts a feature: AUC, variance explained, the best
threshold, and a node's explanation from them."""

from __future__ import annotations

import numpy as np

from .config import ExplainConfig
from .features import Feature
from .lexer import Context

QUANTILES = (
    ("max", 1.0),
    ("top 0.1%", 0.999),
    ("top 1%", 0.99),
    ("top 10%", 0.9),
    ("median", 0.5),
    ("bottom 1%", 0.01),
    ("min", 0.0),
)


# ---------- scoring ----------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as the Mann-Whitney statistic needs)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    first = np.flatnonzero(new)
    last = np.r_[first[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((first + last + 1) / 2)[np.cumsum(new) - 1]
    return ranks


def feature_aucs(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """ROC AUC of the activation as a score for each feature column (NaN where a feature is
    always or never true)."""
    pos = feats.sum(0)
    neg = len(acts) - pos
    rank_sum = _average_ranks(acts) @ feats
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def variance_explained(acts: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Per feature, the share of the activation's variance that the feature's on/off split
    explains (the correlation ratio; a node that is a function of the feature scores 1)."""
    n, pos = len(acts), feats.sum(0)
    mean, total = acts.mean(), ((acts - acts.mean()) ** 2).sum()
    on = acts @ feats
    with np.errstate(invalid="ignore", divide="ignore"):
        between = on**2 / pos + (acts.sum() - on) ** 2 / (n - pos) - n * mean**2
        return between / total if total > 0 else np.full(feats.shape[1], np.nan)


def best_threshold(acts: np.ndarray, truth: np.ndarray, direction: int) -> dict:
    """Precision and recall of `direction * act >= threshold` at the threshold of best F1."""
    a = direction * acts
    order = np.argsort(-a, kind="stable")
    sa, st = a[order], truth[order].astype(bool)
    tp = np.cumsum(st)
    cuts = np.flatnonzero(np.r_[sa[1:] != sa[:-1], True])  # only between distinct values
    precision = tp[cuts] / (cuts + 1)
    recall = tp[cuts] / max(int(st.sum()), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    k = int(np.argmax(f1))
    return {
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "threshold": float(direction * sa[cuts[k]]),
    }


def rounded(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def explain_activations(
    acts: np.ndarray,
    feats: np.ndarray,
    features: list[Feature],
    contexts: list[Context],
    where: np.ndarray,
    settings: ExplainConfig,
) -> dict:
    """One node's explanation from its activation at every position (`where[p]` = (context,
    token) of position p)."""
    spread = float(np.abs(acts - np.median(acts)).max())
    # Float noise (a rotated channel's 1e-7 "zeros") must not rank: values within 1e-4 of
    # the node's spread are ties.
    acts = np.round(acts / (spread * 1e-4), 0) * (spread * 1e-4) if spread > 0 else acts
    aucs = feature_aucs(acts, feats)
    aucs[feats.sum(0) < settings.min_positives] = np.nan
    directed = np.round(np.fmax(aucs, 1 - aucs), 4)
    r2 = variance_explained(acts, feats)
    # best AUC first; among equal AUCs the feature that explains more of the variance
    ranked = [int(i) for i in np.lexsort((-np.nan_to_num(r2), -np.nan_to_num(directed, nan=-1.0)))]
    out: dict = {"feature": None, "auc": None, "positions": int(len(acts))}
    if spread > 1e-6 and ranked and np.isfinite(directed[ranked[0]]):
        b = ranked[0]
        direction = 1 if aucs[b] >= 0.5 else -1
        out.update(
            feature=features[b].name,
            description=features[b].description,
            auc=rounded(directed[b]),
            direction=direction,
            r2=rounded(r2[b]),
            positives=int(feats[:, b].sum()),
            **{k: rounded(v) for k, v in best_threshold(acts, feats[:, b], direction).items()},
            runners_up=[
                [features[i].name, rounded(directed[i]), 1 if aucs[i] >= 0.5 else -1]
                for i in ranked[1:4]
                if np.isfinite(directed[i])
            ],
        )
    out["examples"] = _quantile_examples(acts, contexts, where, settings)
    return out


def _quantile_examples(acts, contexts, where, settings: ExplainConfig) -> list[dict]:
    order = np.argsort(acts, kind="stable")
    examples = []
    for label, q in QUANTILES:
        p = int(order[min(int(round(q * (len(acts) - 1))), len(acts) - 1)])
        c, t = (int(v) for v in where[p])
        lo = max(0, t - settings.context_before)
        hi = min(len(contexts[c].ids), t + 1 + settings.context_after)
        examples.append(
            {
                "label": label,
                "value": rounded(float(acts[p])),
                "tokens": contexts[c].pieces[lo:hi],
                "at": t - lo,
            }
        )
    return examples
