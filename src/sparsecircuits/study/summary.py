"""What a finished study shows: the frontier plot and a markdown summary, both made from
results.json alone (`sparsecircuits study --out DIR --summary` rewrites the summary, so the
numbers quoted in README come from a file a command regenerates)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend is chosen on import

from ..errors import UserError
from ..io import save_figure_atomic, write_text_atomic
from ..markdown import num as _num
from ..markdown import table as _table
from ..study_results import StudyResults
from .config import StudyConfig
from .legibility import legibility_measures
from .measures import analyse, in_frontier, split_frontier

SUMMARY_FILE = "summary.md"


def _control_cell(x: dict | None) -> str:
    if x is None:
        return "-"
    return f"{x['n_edges']} ({x['status']})" if x.get("n_edges") is not None else x["status"]


def _empty(row: dict) -> str:
    """The empty circuit's test loss; results written before the check have none."""
    if "empty_loss_calibrated" not in row:
        return "-"
    loss = _num(row["empty_loss_calibrated"])
    return f"{loss} (needs no node)" if row["trivial"] else loss


def summary_markdown(results: StudyResults) -> str:
    a, s, ms = results.answer, results.study, results.measures
    lines = [
        f"# Study `{s['preset']}`: summary",
        "",
        f"**Answer.** {a['sentence']}",
        "",
        f"- {a['density_trend']}",
        f"- {a['width_effect']}",
        *(f"- {d}" for d in a["details"]),
        *(f"- {a[k]}" for k in ("legibility", "legibility_outside") if a.get(k)),
        "",
        "## Models",
        "",
        *_table(
            ["model", "held-out loss", "eval s.e.", "nonzero block weights"],
            [
                [m["label"], m["heldout_loss"], m.get("heldout_loss_se"), m["matrix_nonzero"]]
                for m in results.models
            ],
        ),
        "",
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
                    r["model"],
                    r["task"],
                    r["target_loss"],
                    r["loss_calibrated"],
                    r["accuracy_calibrated"],
                    r["loss"],
                    r["accuracy"],
                    "yes" if r["reaches"] else "no",
                    # calibrated, test pairs; "needs no node" when it reaches the target
                    _empty(r),
                ]
                for r in results.eligibility
            ],
        ),
        "",
        "## Circuits and their controls",
        "",
        *_table(
            [
                "model",
                "task",
                "frontier",
                "status",
                "edges",
                "k_coef",
                "test loss",
                "raw test loss",
                "nonsense task",
                "random init",
                "random circuits reach",
            ],
            [
                [
                    c["model"],
                    c["task"],
                    "yes" if in_frontier(c) else "no",
                    c["status"],
                    c["n_edges"],
                    c.get("k_coef"),
                    (c.get("metrics") or {}).get("circuit", {}).get("loss_calibrated"),
                    (c.get("metrics") or {}).get("circuit", {}).get("loss"),
                    _control_cell((c.get("controls") or {}).get("nonsense")),
                    _control_cell((c.get("controls") or {}).get("random_init")),
                    ((c.get("controls") or {}).get("random_circuits") or {}).get("reach_target"),
                ]
                for c in results.circuits
            ],
        ),
        "",
        "## Axes",
        "",
    ]
    for name, title in (("density", "density (base width)"), ("width", "width (fixed nonzeros)")):
        lines += [
            f"{title}:",
            "",
            *_table(
                ["x", "held-out loss", "eval s.e.", "geomean edges", "circuits"],
                [
                    [p["x"], p["heldout_loss"], p["eval_se"], p["geomean_edges"], p["n_circuits"]]
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


def _interval_cell(iv: dict | None) -> str:
    if iv is None:
        return "n/a"
    if iv["low"] is None:
        return f"{iv['value']:.2f} (n={iv['n']})"
    return f"{iv['value']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}] (n={iv['n']})"


def legibility_markdown(leg: dict, circuits: list[dict], title: str = "Legibility") -> list[str]:
    """Dense vs sparse legibility (95% intervals over tasks and seeds), then per circuit."""
    if not leg["n_circuits"]:
        return [f"## {title}", "", "No validated circuit, so no node was explained.", ""]
    return [
        f"## {title}",
        "",
        f"A node is explained when one feature does it: {leg['criterion']}. "
        "Intervals: 95% bootstrap over tasks and seeds.",
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
                [c["model"], c["task"], lg.get("nodes"), lg.get("explained_nodes")]
                + [lg.get("node_fraction"), lg.get("effect_fraction")]
                if "error" not in lg
                else [c["model"], c["task"], lg["error"], "", "", ""]
                for c in circuits
                if (lg := c.get("legibility"))
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
    results = StudyResults.of_study(study_dir)
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


def plot_frontier(results: StudyResults, path: Path) -> None:
    fig = Figure(figsize=(6.5, 4.5), layout="tight")
    ax = fig.subplots()
    pts = [f for f in results.frontier if f["geomean_edges"] and f["heldout_loss"] is not None]
    curves = [
        ("dense", "dense, widths", "s-"),
        ("density", "sparse, densities", "o-"),
        ("l0", "sparse, widths at fixed nonzeros", "^--"),
    ]
    for role, label, style in curves:
        curve = sorted(
            (f for f in pts if role in f.get("roles", [])), key=lambda f: f["heldout_loss"]
        )
        if curve:
            ax.plot(
                [f["geomean_edges"] for f in curve],
                [f["heldout_loss"] for f in curve],
                style,
                label=label,
            )
            for f in curve:
                ax.annotate(
                    f"{f['d_model']}" + ("" if f["kind"] == "dense" else f"/{f['density']:.3g}"),
                    (f["geomean_edges"], f["heldout_loss"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (geometric-mean edges over validated frontier tasks)")
    ax.set_ylabel("held-out pretraining loss (nats/token)")
    ax.set_title("capability vs interpretability")
    if pts:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "no validated circuit on a frontier task", ha="center", transform=ax.transAxes
        )
    save_figure_atomic(fig, path, dpi=120)
