"""The report section and the plots."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend is chosen on import

from ..errors import save_figure_atomic
from ..report import write_section
from .config import FILES

# --- text and plots --------------------------------------------------------------------


def _fmt(c: dict) -> str:
    return f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def write_activation_section(results: dict, out: Path, images: list) -> Path:
    metric = results["config"]["metric"]
    paras = [
        "Do hidden states get sparser on unfamiliar or harder inputs (Jin et al. 2026)? "
        f"Metric: {metric}; effects are condition minus training-split code at the last "
        "token, with 95% intervals (over inputs, or across seeds for groups of >= 3 seeds). "
        "An effect whose interval contains 0 is reported as not found.",
    ]
    rows = []
    for g in results["groups"]:
        h = g["headline"]["hook"]
        found = []
        for c, e in g["effects"].items():
            last, allp = e[h][metric]["last"], e[h][metric]["all_positions"]
            rows.append(
                [
                    g["label"],
                    len(g["seeds"]),
                    c,
                    _fmt(last),
                    last["verdict"],
                    _fmt(allp),
                    allp["verdict"],
                ]
            )
            if last["verdict"] != "not found":
                found.append(f"{c} ({last['verdict']})")
        paras.append(
            f"{g['label']} ({len(g['seeds'])} seed(s), {h}): "
            + (f"effects found for {', '.join(found)}" if found else "no effect found")
            + "."
        )
        tr = g.get("training")
        if tr:
            em = ", ".join(
                f"{c}: {'from step ' + str(e['sparser_from_step']) if e['sparser_from_step'] is not None else 'never stably sparser'}"
                for c, e in tr["emergence"].items()
            )
            paras.append(f"{g['label']} over training (steps {tr['steps']}): {em}.")
    diff_rows = []
    for g in results["groups"]:
        h = g["headline"]["hook"]
        for axis, res in g["difficulty"].items():
            for lv in res["levels"]:
                diff_rows.append(
                    [
                        g["label"],
                        axis,
                        lv["label"],
                        f"{lv['accuracy']['mean']:.3f}",
                        f"{lv['metrics'][h][metric]['last']['mean']:.4f}",
                    ]
                )
            e = res.get("hardest_minus_easiest")
            if e:
                d = e[h][metric]["last"]
                paras.append(
                    f"{g['label']}, {axis}: hardest - easiest {metric} {_fmt(d)} ({d['verdict']}); "
                    f"accuracy {_fmt(res['accuracy_hardest_minus_easiest'])}."
                )
    paras.append(
        "Many metric x layer x condition comparisons are made; treat a single 'found' among "
        "them with the usual caution. The JSON (activations.json) holds every metric, hook and "
        "position."
    )
    tables = [
        {
            "caption": f"{metric}: condition minus training code",
            "columns": [
                "model",
                "seeds",
                "condition",
                "last token",
                "verdict",
                "all positions",
                "verdict",
            ],
            "rows": rows,
        },
        {
            "caption": f"difficulty: accuracy and {metric} at the last token",
            "columns": ["model", "axis", "level", "accuracy", metric],
            "rows": diff_rows,
        },
    ]
    imgs = [{"caption": cap, "file": FILES[k]} for k, cap in images]
    return write_section(out, "Activation sparsity", paras, tables, imgs)


def _errorbar(ax, x, stats, **kw):
    ax.errorbar(
        x,
        [s["mean"] for s in stats],
        yerr=[[s["mean"] - s["low"] for s in stats], [s["high"] - s["mean"] for s in stats]],
        marker="o",
        capsize=3,
        **kw,
    )


def _panels(groups, rows: int = 1):
    fig = Figure(figsize=(4.6 * len(groups), 3.6 * rows))
    axes = fig.subplots(rows, len(groups), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        ax.set_title(f"{g['label']} ({len(g['seeds'])} seed(s))", fontsize=9)
    return fig, axes


def plot_by_layer(results: dict, path: Path, metric: str = "top10_energy") -> None:
    """One panel per model group (dense first): metric at the last token vs hook, a line per
    condition."""
    groups = results["groups"]
    fig, axes = _panels(groups)
    for ax, g in zip(axes[0], groups, strict=True):
        for cond, hooks in g["conditions"].items():
            _errorbar(ax, range(len(hooks)), [hooks[h][metric]["last"] for h in hooks], label=cond)
        ax.set_xticks(range(len(hooks)), [h.removeprefix("blocks.") for h in hooks], fontsize=6)
        ax.set_ylabel(f"{metric}, last token (95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)


def plot_training(results: dict, path: Path, metric: str = "top10_energy") -> None:
    groups = [g for g in results["groups"] if g["training"]]
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


def plot_difficulty(results: dict, path: Path, metric: str = "top10_energy") -> None:
    """A row per difficulty axis, a column per group: metric (solid) and accuracy (dashed,
    right axis) by level."""
    groups = [g for g in results["groups"] if g["difficulty"]]
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
