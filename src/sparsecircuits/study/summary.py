"""What a finished study shows: the frontier plot and a markdown summary, both made from
results.json alone (`sparsecircuits study --out DIR --summary` rewrites the summary, so the
numbers quoted in README come from a file a command regenerates)."""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend is chosen on import

from ..errors import UserError
from ..io import save_figure_atomic, write_text_atomic
from ..markdown import num as _num
from ..markdown import table as _table
from ..study_results import CircuitRow, EligibilityRow, FrontierRow, StudyResults
from .answer import analyse
from .config import StudyConfig
from .legibility import legibility_measures
from .matched import config_of, pareto
from .measures import CONTROLS, geomean, split_frontier
from .protocol import protocol_lines

SUMMARY_FILE = "summary.md"


def _control_cell(x: dict | None) -> str:
    """A control's best circuit: edges, status and test loss (or why there is none)."""
    if x is None:
        return "-"
    if x.get("n_edges") is None:
        return x["status"]
    loss = x.get("test_loss_calibrated")
    return f"{x['n_edges']} ({x['status']}" + (f", loss {_num(loss)})" if loss is not None else ")")


def _empty(row: EligibilityRow) -> str:
    """The empty circuit's test loss; results written before the check have none."""
    if row.empty_loss_calibrated is None:
        return "-"
    loss = _num(row.empty_loss_calibrated)
    return f"{loss} (needs no node)" if row.trivial else loss


def summary_markdown(results: StudyResults) -> str:
    a, s, ms = results.answer, results.study, results.measures
    cfg = StudyConfig.from_dict(s["config"], "results.json")
    lines = [
        f"# Study `{s['preset']}`: summary",
        "",
        f"**Answer.** {a['sentence']}",
        "",
        f"- at fixed held-out losses: {a['fixed_loss']}",
        f"- {a['density_trend']}",
        f"- {a['width_effect']}",
        *([f"- as models grow: {a['scale']}"] if a.get("scale") else []),
        *(f"- {d}" for d in a["details"]),
        *(f"- {a[k]}" for k in ("legibility", "legibility_outside") if a.get(k)),
        "",
        *protocol_lines(cfg),
        "",
        "## Verdicts (Holm over the study's family)",
        "",
        "The registered primary questions form one family, corrected by Holm; the other "
        "verdicts are descriptive (unadjusted). A verdict is `found` when its (Holm) p < 0.05.",
        "",
        *_table(
            ["measure", "family", "p", "Holm p", "verdict"],
            [
                [h["name"], h.get("family", "Holm"), h["p"], h["p_holm"], h["verdict"]]
                for h in ms.get("holm", [])
            ],
        ),
        "",
        *_models_table(results),
        *_eligibility_table(results),
        *_circuits_table(results),
        "## Axes",
        "",
    ]
    for name, title in (("density", "density (base width)"), ("width", "width (fixed nonzeros)")):
        lines += [
            f"{title}:",
            "",
            *_table(
                ["x", "held-out loss", "eval s.e.", "geomean nodes", "geomean edges", "circuits"],
                [
                    [p["x"], p["heldout_loss"], p["eval_se"], p.get("geomean_nodes")]
                    + [p["geomean_edges"], p["n_circuits"]]
                    for p in ms[name]["points"]
                ],
            ),
            "",
        ]
    frontier, outside = split_frontier(results.circuits)
    if "legibility" in ms:
        lines += legibility_markdown(ms["legibility"], frontier)
    if "legibility_outside" in ms:
        lines += legibility_markdown(
            ms["legibility_outside"],
            outside,
            "Legibility outside the frontier (not in the circuit-size comparison)",
        )
    ds = ms["dense_sparse"]
    lines += [
        f"Dense/sparse readings: {ds['n_interpolated']} interpolated, {ds['n_extrapolated']} extrapolated.",
        "",
    ]
    if results.timing:
        t = results.timing
        lines.append(
            f"Wall time of this run: training {t['train_seconds']} s, pruning {t['prune_seconds']} s."
        )
    return "\n".join(lines) + "\n"


def _models_table(results: StudyResults) -> list[str]:
    """Every model: held-out loss, its eval noise, nonzero block weights."""
    return [
        "## Models",
        "",
        *_table(
            ["model", "held-out loss", "eval s.e.", "nonzero block weights"],
            [
                [m.label, m.heldout_loss, m.heldout_loss_se, m.matrix_nonzero]
                for m in results.models
            ],
        ),
        "",
    ]


def _eligibility_table(results: StudyResults) -> list[str]:
    """Every full model on every task, against the target."""
    return [
        "## Full models on test pairs (calibrated on train pairs)",
        "",
        *_table(
            [
                "model",
                "task",
                "target",
                "loss",
                "accuracy",
                "raw loss",
                "raw accuracy",
                "reaches",
                "empty circuit loss",
            ],
            [
                [
                    r.model,
                    r.task,
                    r.target_loss,
                    r.loss_calibrated,
                    r.accuracy_calibrated,
                    r.loss,
                    r.accuracy,
                    "yes" if r.reaches else "no",
                    # calibrated, test pairs; "needs no node" when it reaches the target
                    _empty(r),
                ]
                for r in results.eligibility
            ],
        ),
        "",
    ]


def _circuits_table(results: StudyResults) -> list[str]:
    """Every circuit with its setting, losses and controls."""
    return [
        "## Circuits and their controls",
        "",
        *_table(
            [
                "model",
                "task",
                "frontier",
                "status",
                "nodes",
                "edges",
                "k_coef",
                "mask_lr",
                "test loss",
                "raw test loss",
                "nonsense task",
                "inverted rule",
                "random init",
                "random circuits reach",
            ],
            [
                [
                    c.model,
                    c.task,
                    "yes" if c.in_frontier else "no",
                    c.status,
                    c.n_nodes,
                    c.n_edges,
                    c.k_coef,
                    c.mask_lr,
                    (c.metrics or {}).get("circuit", {}).get("loss_calibrated"),
                    (c.metrics or {}).get("circuit", {}).get("loss"),
                    *(_control_cell((c.controls or {}).get(k)) for k in CONTROLS),
                    ((c.controls or {}).get("random_circuits") or {}).get("reach_target"),
                ]
                for c in results.circuits
            ],
        ),
        "",
    ]


def _interval_cell(iv: dict | None) -> str:
    if iv is None:
        return "n/a"
    if iv["low"] is None:
        return f"{iv['value']:.2f} (n={iv['n']})"
    return f"{iv['value']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}] (n={iv['n']})"


def legibility_markdown(
    leg: dict, circuits: list[CircuitRow], title: str = "Legibility"
) -> list[str]:
    """Dense vs sparse legibility (95% t-intervals across seeds), then per circuit."""
    if not leg["n_circuits"]:
        return [f"## {title}", "", "No validated circuit, so no node was explained.", ""]
    return [
        f"## {title}",
        "",
        f"A node is explained when one feature does it: {leg['criterion']}. "
        "Intervals: 95% t-intervals across pretraining seeds.",
        "",
        *_table(
            ["share explained", "dense", "sparse", "sparse - dense", "verdict"],
            [
                [what]
                + [_interval_cell(leg[field][k]) for k in ("dense", "sparse", "sparse_minus_dense")]
                + [leg[field]["verdict"]]
                for field, what in (
                    ("node_fraction", "nodes"),
                    ("effect_fraction", "ablation effect"),
                )
            ],
        ),
        "",
        *_table(
            ["model", "task", "nodes", "explained", "share of nodes", "share of effect"],
            [
                [c.model, c.task, lg.get("nodes"), lg.get("explained_nodes")]
                + [lg.get("node_fraction"), lg.get("effect_fraction")]
                if "error" not in lg
                else [c.model, c.task, lg["error"], "", "", ""]
                for c in circuits
                if (lg := c.legibility)
            ],
        ),
        "",
    ]


def reanalysed(results: StudyResults, source: str = "results.json") -> StudyResults:
    """The measures and answer recomputed by today's code from the stored rows (models,
    eligibility, circuits with their legibility), the run's wall time kept: a summary says
    what the current analysis makes of a finished study, without training or pruning."""
    cfg = StudyConfig.from_dict(results.study["config"], source)
    fresh = analyse(cfg, results.models, results.circuits, results.eligibility)
    fresh.timing = results.timing
    if "legibility" in results.measures:  # the legibility step ran on this study
        legibility_measures(fresh)
    return fresh


def write_summary(study_dir: str | Path, reanalyse: bool = False) -> Path:
    """Write DIR/summary.md from DIR/results.json; with `reanalyse`, the results are first
    recomputed by this version (`reanalysed`) and written back (`study --summary`). A study
    that has just run was analysed by this version already: no need to do it again."""
    study_dir = Path(study_dir)
    path = study_dir / "results.json"
    results = StudyResults.of_study(study_dir)  # its rows checked as they load
    try:
        if reanalyse:
            results = reanalysed(results, str(path))
        text = summary_markdown(results)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: not a complete study result (missing {e})") from None
    if reanalyse:
        results.save(path)
    out = study_dir / SUMMARY_FILE
    write_text_atomic(out, text)
    return out


def _by_config(frontier: list[FrontierRow], size: str) -> list[tuple[FrontierRow, float, float]]:
    """Frontier rows averaged over seeds per configuration, in `size` (edges or nodes): its
    first row, the mean held-out loss and the geometric mean of the seeds' sizes (rows with
    no validated circuit left out)."""
    groups: dict[str, list[tuple[FrontierRow, float, float]]] = {}
    for f in frontier:
        value = f.size(size)
        if value and f.heldout_loss is not None:
            groups.setdefault(config_of(f.id), []).append((f, f.heldout_loss, value))
    return [
        (rows[0][0], statistics.fmean(r[1] for r in rows), geomean([r[2] for r in rows]))
        for rows in groups.values()
    ]


def plot_frontier(results: StudyResults, path: Path) -> None:
    """Held-out loss against circuit size (edges, and nodes beside it), each point a
    configuration averaged over its seeds: the dense curve, the sparse density and width
    axes, the sparse Pareto curve over every sparse model, and the fixed losses the
    dense/sparse ratio is read at."""
    fig = Figure(figsize=(11, 4.5), layout="tight")
    axes = fig.subplots(1, 2)
    curves = [
        ("dense", "dense, widths", "s-"),
        ("density", "sparse, densities", "o-"),
        ("l0", "sparse, widths at fixed nonzeros", "^--"),
    ]
    losses = (results.measures.get("fixed_loss") or {}).get("losses") or []
    for ax, what in zip(axes, ("edges", "nodes"), strict=True):
        pts = _by_config(results.frontier, what)
        for role, label, style in curves:
            curve = sorted((p for p in pts if role in p[0].roles), key=lambda p: p[1])
            if curve:
                ax.plot([v for _, _, v in curve], [x for _, x, _ in curve], style, label=label)
                for f, loss, v in curve:
                    ax.annotate(
                        f"{f.d_model}" + ("" if f.kind == "dense" else f"/{f.density:.3g}"),
                        (v, loss),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(4, 4),
                    )
        front = pareto([(loss, v, f.id) for f, loss, v in pts if f.kind == "sparse"])
        if len(front) >= 2:
            ax.plot(
                [v for _, v, _ in front],
                [x for x, _, _ in front],
                ":",
                color="black",
                label="sparse Pareto curve (all sparse models)",
            )
        for i, loss in enumerate(losses):
            ax.axhline(
                loss, color="grey", lw=0.6, ls="--", label="fixed losses" if i == 0 else None
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"circuit size (geometric-mean {what} over validated frontier tasks)")
        ax.set_ylabel("held-out pretraining loss (nats/token), mean over seeds")
        ax.set_title(f"capability vs interpretability: {what}")
        if pts:
            ax.legend(fontsize=7)
        else:
            ax.text(
                0.5,
                0.5,
                "no validated circuit on a frontier task",
                ha="center",
                transform=ax.transAxes,
            )
    save_figure_atomic(fig, path, dpi=110)
