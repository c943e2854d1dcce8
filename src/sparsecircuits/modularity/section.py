"""The ablation-matrix plot and the report section."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend is chosen on import

from ..io import save_figure_atomic
from ..report import write_section
from ..tasks.compound import FACTORS
from .results import ModularityResults
from .summary import fmt_ci, mean_or_none


def plot_ablation_matrix(results: ModularityResults, path: Path) -> None:
    """Accuracy drop on each subroutine (columns) when each structure is removed (rows),
    one panel per task x structure, rows grouped by model and regime."""
    runs = results.runs
    tasks = sorted({r["task"] for r in runs})
    panels = [
        (t, s, mode)
        for t in tasks
        for s, mode in (
            ("weights", "ablation_zero"),
            ("weights", "ablation_mean"),
            ("nodes", "ablation_mean"),
        )
    ]
    groups = sorted({(r["kind"], r["regime"]) for r in runs})
    fig = Figure(
        figsize=(2.2 * len(panels) + 2.5, 0.45 * 2 * len(groups) + 1.6),
        layout="constrained",  # room for the long row labels and the colour bar
    )
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (task, structure, mode) in zip(axes[0], panels, strict=True):
        labels, matrix = [], []
        for kind, regime in groups:
            rs = [r for r in runs if (r["task"], r["kind"], r["regime"]) == (task, kind, regime)]
            for factor in FACTORS:
                row = []
                for target in FACTORS:
                    drops = []
                    for run in rs:
                        for m in run[structure][factor]:
                            if m["status"] == "ok":
                                acc = m[mode]["own" if target == factor else "other"]
                                drops.append(run["sub_accuracy"][target] - acc)
                    row.append(statistics.fmean(drops) if drops else float("nan"))
                matrix.append(row)
                labels.append(f"{kind} {regime}: {factor.upper()}")
        im = ax.imshow(matrix, cmap="Reds", vmin=0, vmax=0.5, aspect="auto")
        ax.set_xticks(range(2), [f"on {f.upper()}" for f in FACTORS])
        ax.set_yticks(
            range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels), fontsize=7
        )
        ax.set_title(f"{task}\n{structure}, {mode.replace('ablation_', '')} ablation", fontsize=8)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                # an empty cell: no usable structure (e.g. the untrained control cannot
                # reach the node circuits' target loss)
                label = f"{v:.2f}" if math.isfinite(v) else "none"
                color = "white" if math.isfinite(v) and v > 0.3 else "black"
                ax.text(j, i, label, ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy drop")
    save_figure_atomic(fig, path)


# The question and how to read the numbers: the same for every run.
_METHOD = [
    "Do models grow a separate subnetwork per subroutine of a compound task, and how does "
    "that compare with the structure weight sparsity forces? Subnetwork metric: accuracy "
    "of the structure alone on its own subroutine minus on the other (> 0 = it does only "
    "its own job). Ablation metric: accuracy of the full model without it, own minus other "
    "(< 0 = removing it broke only its own job). Intervals are 95% t-intervals over "
    "independent models: pretraining seeds in the pretrained regime, init seeds in scratch "
    "and random; an effect whose interval includes 0 is reported as not found, and a "
    "config with one pretraining seed gets no interval. Fine-tuning runs of one checkpoint "
    "share its pretraining: their spread is the separate 'fine-tune sd' column.",
    "The random regime (untrained, accuracy at chance) shows what mask search carves out "
    "of noise: its subnetwork metric is a floor for the others. Its ablation metric is ~0 "
    "by construction (there is no accuracy to lose), so it is not a control the ablation "
    "test could fail. The shuffled regime is the control that can: the pretrained "
    "model, with masks searched on A and B training pairs dealt out at random; its "
    "structures should show no selectivity on the true test pairs.",
]


def write_report_section(results: ModularityResults, out: Path) -> None:
    """The section: the method, the findings and caveats, the four tables, the matrix plot
    (written beside it by `plot_ablation_matrix`)."""
    write_section(
        out,
        "Forced vs emergent modularity",
        _paragraphs(results),
        [
            _consistency_table(results.consistency),
            _forced_vs_emergent_table(results.forced_vs_emergent),
            _lepori_table(results.summary),
            _fer_table(results.runs),
        ],
        [{"caption": "Accuracy drop when a structure is removed", "file": "ablation_matrix.png"}],
    )


def _paragraphs(results: ModularityResults) -> list[str]:
    paragraphs = _METHOD + results.findings
    collapsed = sum(r["collapsed"] for r in results.summary)
    if collapsed:
        paragraphs.append(
            f"{collapsed} mask search(es) collapsed to an empty or full mask; they are left out "
            "of the means (see modularity.json)."
        )
    unmatched = {r["task"] for r in results.forced_vs_emergent if not r["matched_accuracy"]}
    if unmatched:
        paragraphs.append(
            "Compound accuracy differs by more than 0.05 between the kinds of model on "
            f"{', '.join(sorted(unmatched))}: compare their structures with care."
        )
    paragraphs.append(_fer_validation_paragraph(results.fer_validation))
    return paragraphs


def _fer_validation_paragraph(v: dict) -> str:
    """Whether each FER measure tells a planted circuit from its rotated copy."""
    return (
        "FER measures on ground truth (a planted 7-node circuit vs the same function in rotated "
        f"bases, outputs equal to {v['output_max_diff']:.0e}): circuit nodes "
        f"{v['clean']['circuit_nodes']} vs {v['rotated']['circuit_nodes']}, perturbation median "
        f"{v['clean']['perturbation_median']:.3f} vs {v['rotated']['perturbation_median']:.3f}, "
        f"sweep roughness {v['clean']['sweep_roughness']:.2f} vs "
        f"{v['rotated']['sweep_roughness']:.2f}; separated by: "
        + ", ".join(k for k, ok in v["separates"].items() if ok)
        + "; not separated by: "
        + (", ".join(k for k, ok in v["separates"].items() if not ok) or "none")
        + "."
    )


def _consistency_table(consistency: list[dict]) -> dict:
    return {
        "caption": "Consistency across tasks, models and subroutines: mean and sd of the "
        "per-unit effects, fraction with the modular sign, units whose interval excludes 0",
        "columns": [
            "regime",
            "structure",
            "units",
            "subnetwork mean",
            "sd",
            "agree",
            "found",
            "ablation mean",
            "sd",
            "agree",
            "found",
        ],
        "rows": [
            [r["regime"], r["structure"], r["units"]]
            + [
                r[m][k]
                for m in ("subnetwork", "ablation_mean")
                for k in ("mean", "sd", "agree", "found")
            ]
            for r in consistency
        ],
    }


def _forced_vs_emergent_table(fve: list[dict]) -> dict:
    return {
        "caption": "Forced (weight-sparse) vs emergent (dense), pretrained then fine-tuned "
        "on the compound task; means over subroutines and base models",
        "columns": [
            "task",
            "model",
            "structure",
            "compound acc",
            "size",
            "kept frac",
            "subnetwork",
            "ablation (mean)",
            "A/B overlap",
            "stability",
        ],
        "rows": [
            [
                r["task"],
                r["kind"],
                r["structure"],
                r["compound_accuracy"],
                r["size"],
                r["kept_frac"],
                r["subnetwork_metric"],
                r["ablation_metric"],
                r["overlap_ab"],
                r["stability"],
            ]
            for r in fve
        ],
    }


def _lepori_table(summary: list[dict]) -> dict:
    return {
        "caption": "Lepori tests per regime (random = untrained control), with intervals",
        "columns": [
            "task",
            "model",
            "regime",
            "structure",
            "subroutine",
            "usable",
            "subnetwork",
            "ablation (zero)",
            "ablation (mean)",
            "units",
            "spread (sd)",
            "fine-tune sd",
        ],
        "rows": [
            [
                r["task"],
                r["kind"],
                r["regime"],
                r["structure"],
                r["factor"].upper(),
                f"{r['usable']} ({r['collapsed']} collapsed, {r['unreachable']} unreachable)",
                fmt_ci(r["subnetwork"]),
                fmt_ci(r.get("ablation_zero")),
                fmt_ci(r["ablation_mean"]),
                f"{r['units']} {r['unit']}(s)",
                _fmt_sd(r["spread"]["subnetwork"]),
                _fmt_sd(r.get("finetune_sd", {}).get("subnetwork")),
            ]
            for r in summary
        ],
    }


def _fer_table(runs: list[dict]) -> dict:
    return {
        "caption": "Same behaviour, different internals: per model (mean over base models) "
        "perturbation sensitivity (median behaviour change when 2% of the nonzero weights "
        "get noise at the RMS of the nonzero weights; 'all entries': the earlier variant, "
        "any 2% of entries, zeros revived, RMS counting the zeros) and the sweep of its "
        "most important weight (roughness: 0 = straight line)",
        "columns": [
            "task",
            "model",
            "regime",
            "compound acc",
            "circuit nodes",
            "perturbation median",
            "all entries",
            "sweep roughness",
            "sweep control",
        ],
        "rows": _fer_rows(runs),
    }


def _fmt_sd(sd: float | None) -> str:
    return "n/a" if sd is None else f"{sd:.2f}"


def _fer_rows(runs: list[dict]) -> list[list]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["kind"], r["regime"]), []).append(r)

    return [
        [
            task,
            kind,
            regime,
            mean_or_none([r["compound_accuracy"] for r in rs]),
            mean_or_none(
                [
                    m["nodes"]
                    for r in rs
                    for f in FACTORS
                    for m in r["nodes"][f]
                    if m["status"] == "ok"
                ]
            ),
            mean_or_none([r["fer"]["perturbation"]["median"] for r in rs]),
            mean_or_none([r["fer"]["perturbation_all_entries"]["median"] for r in rs]),
            mean_or_none([r["fer"]["sweep"]["roughness"] for r in rs]),
            mean_or_none([r["fer"]["sweep"]["control"] for r in rs]),
        ]
        for (task, kind, regime), rs in sorted(groups.items())
    ]
