"""The report section of a stability analysis (section.json, shown by the study report)."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..report import write_section
from ..study_results import ModelRow
from .compare import MEASURES
from .records import RunSet, Stability, StabilityResults


def _j(j: dict | None) -> str:
    return "n/a" if not j else f"{j['mean']:.2f} ({j['min']:.2f}-{j['max']:.2f})"


def _loss(m: dict | None) -> str:
    if not m:
        return "n/a"
    ok = "" if m["within_target"] else ", above target"
    return f"{m['loss_calibrated']:.3f} ({m['nodes']} nodes{ok})"


def _set_row(label: str, st: Stability, rs: RunSet | None) -> list:
    if rs is None:
        return [label, st.task, "-", "0", "n/a", "n/a", "-", "-", "n/a", "n/a"]
    size = f"{statistics.fmean(rs.sizes):.0f}" if rs.sizes else "-"
    return [
        label,
        st.task,
        rs.varies.replace("_", " "),
        f"{rs.n_ok}/{len(rs.runs)}",
        size,
        _j(rs.node_jaccard),
        _j(rs.edge_jaccard),
        f"{len(rs.core)} / {len(rs.union)}",
        _loss(rs.core_metrics),
        _loss(rs.union_metrics),
    ]


def _label(st: Stability, models: dict[str | None, ModelRow]) -> str:
    m = models.get(st.model_id)
    return m.label if m else (st.model_id or Path(st.model).name)


def write_report_section(
    results: StabilityResults, out: Path, models: list[ModelRow] | None = None
) -> None:
    """The section: the method, the verdict and the cost, what could not be measured, the
    repeat-run and backup tables, and dense vs sparse where there is a comparison.
    `models` (a study's) gives the rows their labels."""
    by_id: dict[str | None, ModelRow] = {m.id: m for m in models or []}
    stab = results.stabilities()
    tables = [_repeat_runs_table(stab, by_id), _backup_table(stab, by_id)]
    if results.comparison:
        tables.append(_comparison_table(results.comparison))
    write_section(
        out,
        "Circuit stability: seeds, prompts, backup circuits",
        _paragraphs(results, stab, by_id),
        tables,
    )


def _paragraphs(
    results: StabilityResults, stab: list[Stability], by_id: dict[str | None, ModelRow]
) -> list[str]:
    runs = results.setup.get("config", {}).get("runs")
    paragraphs = [
        "Is the circuit the circuit? Each (model, task) is searched again "
        f"{runs} times on the same prompt pairs with other search seeds (mask noise, "
        f"pair order), and {runs} times at one search seed with other train pairs "
        "(the selection and test pairs fixed), at the one setting (k_coef, mask_lr) its circuit "
        "was found at; and once per surface rephrasing of the prompts (names renamed, other "
        "surrounding code), beside the original. Per set: pairwise Jaccard of the node and edge sets of the circuits "
        "that validated (mean, min-max), the core (nodes in every circuit) and the union (in "
        "any), and the calibrated test loss of the core alone and the union alone. Backup "
        "rounds (after Hao & Goldstein): the node most often kept is forbidden (held "
        "mean-ablated) and the search repeated until no search reaches the target; the "
        "irreducible core is what every validated circuit of every round kept.",
        results.verdict,
        f"{sum(map(_searches, stab))} searches in {sum(s.seconds for s in stab):.0f} s of "
        f"search time ({len(stab)} circuits; this call {results.seconds:.0f} s).",
    ]
    problems = [f"{_label(s, by_id)}, {s.task}: {s.message}" for s in stab if s.status != "ok"]
    if problems:
        paragraphs.append("Not measured: " + "; ".join(problems) + ".")
    return paragraphs


def _searches(s: Stability) -> int:
    """Searches run for one circuit: the rephrasing set's first run is the original prompts,
    which the search-seed set already ran."""
    return (
        len(s.search.runs if s.search else [])
        + len(s.pairs.runs if s.pairs else [])
        + max(0, len(s.rephrasing.runs) - 1 if s.rephrasing else 0)
        + sum(len(r.runs.runs) for r in (s.backup.rounds if s.backup else []))
    )


def _repeat_runs_table(stab: list[Stability], by_id: dict[str | None, ModelRow]) -> dict:
    return {
        "caption": "Repeat runs: the same search with one source of randomness varied",
        "columns": [
            "model",
            "task",
            "varies",
            "validated",
            "nodes",
            "node Jaccard",
            "edge Jaccard",
            "core / union",
            "core alone (loss)",
            "union alone (loss)",
        ],
        "rows": [
            _set_row(_label(s, by_id), s, rs)
            for s in stab
            for rs in (s.search, s.pairs, s.rephrasing)
            if rs
        ],
        # for the circuit viewer (report.js): nodes sized by how often the search-seed
        # runs kept them, the core ringed
        "node_frequency": {
            f"{s.model_id}|{s.task}": {
                "runs": s.search.n_ok,
                "frequency": s.search.frequency,
                "core": s.search.core,
            }
            for s in stab
            if s.model_id and s.search and s.search.n_ok
        },
    }


def _backup_table(stab: list[Stability], by_id: dict[str | None, ModelRow]) -> dict:
    return {
        "caption": "Backup circuits: forbid the most-kept node, search again",
        "columns": [
            "model",
            "task",
            "rounds",
            "stopped",
            "forbidden (in order)",
            "circuits (distinct)",
            "irreducible core",
            "core alone (loss)",
        ],
        "rows": [
            [
                _label(s, by_id),
                s.task,
                len(s.backup.rounds),
                s.backup.stopped,
                ", ".join(s.backup.forbidden),
                f"{s.backup.circuits} ({s.backup.distinct})",
                len(s.backup.core),
                _loss(s.backup.core_metrics),
            ]
            for s in stab
            if s.backup
        ],
    }


def _comparison_table(cmp: dict) -> dict:
    """Dense vs sparse per measure: at each matched loss, then unmatched."""
    rows = []
    for name, m in cmp["measures"].items():
        for p in (m["matched"] or {}).get("points", []):
            rows.append([MEASURES[name], f"loss {p['loss']:.3f}", *_est(p["estimate"])])
        rows.append([MEASURES[name], "unmatched", *_est(m["unmatched"])])
    return {
        "caption": "Sparse - dense (higher: sparse more stable), per pretraining seed "
        "at fixed held-out losses inside both curves, 95% t-interval across seeds",
        "columns": ["measure", "at", "sparse - dense", "95% interval", "seeds"],
        "rows": rows,
    }


def _est(est: dict | None) -> list:
    if not est:
        return ["n/a", "n/a", 0]
    ci = "none (one seed)" if est["low"] is None else f"[{est['low']:+.3f}, {est['high']:+.3f}]"
    return [f"{est['value']:+.3f}", ci, est["n"]]
