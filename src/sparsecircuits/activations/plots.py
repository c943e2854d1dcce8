"""The report section and the plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no GUI backend is chosen on import

from ..io import save_figure_atomic
from ..report import write_section
from .config import FILES
from .intervals import EXPECTED_EFFECT, MIN_SEEDS
from .results import ActivationResults

# --- text and plots --------------------------------------------------------------------


def _fmt(c: dict) -> str:
    values = (c["diff"] if "diff" in c else c["mean"], c["low"], c["high"])
    if any(v is None for v in values):  # NaN in the results is null in JSON
        return "n/a"
    return "{:+.4f} [{:+.4f}, {:+.4f}]".format(*values)


def _seeds(g: dict) -> str:
    n = len(g["seeds"])
    return (
        f"{n} seeds"
        if n >= MIN_SEEDS
        else "one seed"
        if n == 1
        else f"{n} seeds, one seed's interval"
    )


def write_report_section(results: ActivationResults, out: Path, images: list) -> Path:
    """The section: the method, each group's findings, the three tables and the plots named
    by `images` ((key of FILES, caption) pairs, drawn beforehand)."""
    metric = results.config["metric"]
    paras = [_method_paragraph(metric)]
    for g in results.groups:
        paras += _group_paragraphs(g)
    paras.append(_ROBUSTNESS)
    tables = [
        _headline_table(results.groups, metric),
        _difficulty_table(results.groups, metric),
        _robustness_table(results.robustness, metric),
    ]
    imgs = [{"caption": cap, "file": FILES[k]} for k, cap in images]
    return write_section(out, "Activation sparsity", paras, tables, imgs)


# After the groups' findings: how to read the robustness table.
_ROBUSTNESS = (
    "Robustness (the claim that sparsification under unfamiliar input stabilises "
    "performance): held-out next-token loss on each condition minus on training code, per "
    "model, beside the activation effect on the same inputs; 'sparse - dense' (against the "
    "dense model of the same width, where there is one) < 0 means the weight-sparse model "
    "degrades less (normal-approximation interval). The JSON "
    "(activations.json) holds every metric, hook and position."
)


def _method_paragraph(metric: str) -> str:
    expected = EXPECTED_EFFECT.get(metric)
    return (
        "Do hidden states get sparser on unfamiliar or harder inputs (Jin et al. 2026)? "
        f"Metric: {metric} at the last real token (retokenised inputs are padded, and the pad "
        "is masked); effects are condition minus training-split code, and hardest minus "
        "easiest difficulty level with prompt length regressed out (on the context-length "
        "axis length is the difficulty). Intervals are 95%: across seeds for groups of >= "
        f"{MIN_SEEDS} seeds, else one seed's interval over its inputs (not a between-seed "
        "interval). Verdicts are computed, Holm-corrected over each group's headline "
        "comparisons"
        + (
            f"; a null whose half-width exceeds {expected} (the effect expected at small "
            "scale) reads 'not resolvable at this n'."
            if expected is not None
            else "."
        )
    )


def _group_paragraphs(g: dict) -> list[str]:
    """What survived Holm in one group, and when each condition became stably sparser
    over training (where its checkpoints were measured)."""
    found = [
        f"{t['comparison']} ({t['verdict']})"
        for t in g["tests"]
        if t["verdict"].startswith("found")
    ]
    paras = [
        f"{g['label']} ({_seeds(g)}, {g['headline']['hook']}): "
        + (f"found after Holm: {', '.join(found)}" if found else "nothing found after Holm")
        + "."
    ]
    tr = g.get("training")
    if tr:
        em = ", ".join(f"{c}: {_emergence(e)}" for c, e in tr["emergence"].items())
        paras.append(f"{g['label']} over training (steps {tr['steps']}, uncorrected): {em}.")
    return paras


def _emergence(e: dict) -> str:
    step = e["sparser_from_step"]
    return "never stably sparser" if step is None else f"from step {step}"


def _headline_table(groups: list[dict], metric: str) -> dict:
    return {
        "caption": f"{metric}: headline comparisons, Holm-corrected per model",
        "columns": [
            "model",
            "seeds",
            "comparison",
            "effect",
            "half-width",
            "p (Holm)",
            "verdict",
        ],
        "rows": [
            [
                g["label"],
                _seeds(g),
                t["comparison"],
                _fmt(t),
                "n/a" if t["half_width"] is None else f"{t['half_width']:.4f}",
                "n/a" if t["p_holm"] is None else f"{t['p_holm']:.3g}",
                t["verdict"],
            ]
            for g in groups
            for t in g["tests"]
        ],
    }


def _difficulty_table(groups: list[dict], metric: str) -> dict:
    rows = []
    for g in groups:
        h = g["headline"]["hook"]
        for axis, res in g["difficulty"].items():
            for lv in res["levels"]:
                rows.append(
                    [
                        g["label"],
                        axis,
                        lv["label"],
                        f"{lv['tokens']['mean']:.1f}",
                        f"{lv['accuracy']['mean']:.3f}",
                        f"{lv['metrics'][h][metric]['last']['mean']:.4f}",
                    ]
                )
    return {
        "caption": f"difficulty: prompt length, accuracy and {metric} at the last token",
        "columns": ["model", "axis", "level", "tokens", "accuracy", metric],
        "rows": rows,
    }


def _robustness_table(robustness: list[dict], metric: str) -> dict:
    return {
        "caption": "robustness: loss degradation vs training code (nats/token)",
        "columns": [
            "model",
            "condition",
            "loss degradation",
            "sparse - dense",
            f"{metric} effect",
        ],
        "rows": [
            [
                r["group"],
                r["condition"],
                _fmt(r["loss_degradation"]),
                _fmt(r["minus_dense"]) if "minus_dense" in r else "",
                _fmt(r["activation_effect"]),
            ]
            for r in robustness
        ],
    }


def _errorbar(ax, x, stats, **kw):
    # A metric with no value (all-zero activations: NaN, null in the JSON) is a gap.
    mean, low, high = (
        np.array([math.nan if s[k] is None else s[k] for s in stats], dtype=float)
        for k in ("mean", "low", "high")
    )
    ax.errorbar(
        x,
        mean,
        yerr=[mean - low, high - mean],
        marker="o",
        capsize=3,
        **kw,
    )


def _panels(groups, rows: int = 1):
    fig = Figure(figsize=(4.6 * len(groups), 3.6 * rows))
    axes = fig.subplots(rows, len(groups), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        ax.set_title(f"{g['label']} ({_seeds(g)})", fontsize=9)
    return fig, axes


def plot_by_layer(results: ActivationResults, path: Path, metric: str = "top10_energy") -> None:
    """One panel per model group (dense first): metric at the last token vs hook, a line per
    condition."""
    groups = results.groups
    fig, axes = _panels(groups)
    for ax, g in zip(axes[0], groups, strict=True):
        for cond, hooks in g["conditions"].items():
            _errorbar(ax, range(len(hooks)), [hooks[h][metric]["last"] for h in hooks], label=cond)
        ax.set_xticks(range(len(hooks)), [h.removeprefix("blocks.") for h in hooks], fontsize=6)
        ax.set_ylabel(f"{metric}, last token (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def plot_training(results: ActivationResults, path: Path, metric: str = "top10_energy") -> None:
    groups = [g for g in results.groups if g["training"]]
    fig, axes = _panels(groups)
    for ax, g in zip(axes[0], groups, strict=True):
        tr, h = g["training"], g["headline"]["hook"]
        for cond in tr["conditions"][0]:
            _errorbar(
                ax, tr["steps"], [s[cond][h][metric]["last"] for s in tr["conditions"]], label=cond
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{metric} at {h}, last token")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def plot_difficulty(results: ActivationResults, path: Path, metric: str = "top10_energy") -> None:
    """A row per difficulty axis, a column per group: metric (solid) and accuracy (dashed,
    right axis) by level."""
    groups = [g for g in results.groups if g["difficulty"]]
    axis_names = list(groups[0]["difficulty"])
    fig, axes = _panels(groups, rows=len(axis_names))
    for col, g in enumerate(groups):
        h = g["headline"]["hook"]
        for row, axis in enumerate(axis_names):
            ax, levels = axes[row][col], g["difficulty"].get(axis, {}).get("levels", [])
            x = range(len(levels))
            _errorbar(ax, x, [lv["metrics"][h][metric]["last"] for lv in levels], color="C0")
            acc = ax.twinx()
            _errorbar(acc, x, [lv["accuracy"] for lv in levels], color="C3", linestyle="--")
            acc.set_ylim(-0.05, 1.05)
            acc.set_ylabel("accuracy (dashed)", fontsize=7, color="C3")
            ax.set_xticks(x, [str(lv["level"]) for lv in levels])
            ax.set_xlabel(axis + (" (prefix tokens)" if axis == "context_length" else " level"))
            ax.set_ylabel(f"{metric}, last token", fontsize=7, color="C0")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
