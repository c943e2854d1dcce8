"""The pictures of README.md and the docs' home page, drawn from results, never by hand.

    python benchmarks/readme_figures.py                      # the frontier plot
    python benchmarks/readme_figures.py --viewer runs/demo   # + a circuit-viewer screenshot

frontier: the standard study's frontier (held-out loss against geometric-mean circuit
edges over the frontier tasks; every model a faint point, each curve through the means of
its configurations over seeds), as the study's frontier.png plots it, from the tables of
benchmarks/results/study_standard.md, the summary the docs quote (its results.json is not
committed; the summary prints held-out loss to three significant figures, which is what
the points use). Writes docs/images/frontier.png.

--viewer DIR: a screenshot of the circuit viewer of the study in DIR (its report.html, as
`sparsecircuits study` or `make demo` wrote it), taken in Debian's chromium through
playwright, with --circuit MODEL/TASK selected and its node of largest ablation effect
hovered. Writes docs/images/viewer.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CHROMIUM = Path("/usr/bin/chromium")


def table(markdown: str, heading: str) -> list[dict]:
    """The rows of the markdown table under `heading` (a line ending with it), as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("#") and ln.endswith(heading))
    block = []
    for ln in lines[start + 1 :]:
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            break
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in block]
    head, body = rows[0], rows[2:]  # rows[1] is the |---| rule
    return [dict(zip(head, r, strict=True)) for r in body]


LABEL = re.compile(r"(dense|sparse ([\d.e-]+)), d_model (\d+), seed (\d+)")


def models_from_summary(summary: str) -> list[dict]:
    """The family of a summary.md, read from its Models table (the preset that made it may
    have changed since): each model's kind, width, density, seed and held-out loss, and the
    curves it belongs to, as the study assigns them. Dense models form the dense curve; the
    sparse models at the width with the most densities the density curve; the sparse models
    that share one count of nonzero block weights across the most widths the fixed-nonzeros
    (l0) curve."""
    models = []
    for r in table(summary, "#### Models"):
        m = LABEL.fullmatch(r["model"])
        if not m:
            raise SystemExit(f"unexpected model label {r['model']!r}")
        dense = m.group(1) == "dense"
        width, seed = int(m.group(3)), int(m.group(4))
        density = 1.0 if dense else float(m.group(2))
        models.append(
            {
                "id": f"w{width}_dense_s{seed}" if dense else f"w{width}_d{m.group(2)}_s{seed}",
                "label": r["model"],
                "kind": "dense" if dense else "sparse",
                "d_model": width,
                "density": density,
                "seed": seed,
                "heldout_loss": float(r["held-out loss"]),
                "nonzero": int(r["nonzero block weights"]),
                "roles": ["dense"] if dense else [],
            }
        )
    sparse = [m for m in models if m["kind"] == "sparse"]

    def spread(key, of):
        groups: dict = {}
        for m in sparse:
            groups.setdefault(m[key], set()).add(m[of])
        return max(groups, key=lambda k: len(groups[k]))

    base, l0 = spread("d_model", "density"), spread("nonzero", "d_model")
    for m in sparse:
        m["roles"] += ["density"] * (m["d_model"] == base) + ["l0"] * (m["nonzero"] == l0)
    return models


def frontier_from_summary(summary: str) -> list[dict]:
    """One row per model: its held-out loss and the geometric mean of its validated
    circuits' edges over the frontier tasks (as the study's frontier rows are made), rebuilt
    from a summary.md's Models and circuits tables."""
    circuits = table(summary, "#### Circuits and their controls")
    rows = []
    for m in models_from_summary(summary):
        edges = [
            int(c["edges"])
            for c in circuits
            if c["model"] == m["id"] and c["frontier"] == "yes" and c["status"] == "ok"
        ]
        logs = [math.log(e) for e in edges]
        rows.append(m | {"geomean_edges": math.exp(sum(logs) / len(logs)) if logs else None})
    return rows


CURVES = [
    ("dense", "dense, widths", "s-", "tab:blue"),
    ("density", "sparse, densities", "o-", "tab:orange"),
    ("l0", "sparse, widths at fixed nonzeros", "^--", "tab:green"),
]


def draw_frontier(source: Path, out: Path) -> Path:
    """The frontier: every model a faint point, each curve through its seeds' means."""
    from matplotlib.figure import Figure

    rows = [r for r in frontier_from_summary(source.read_text()) if r["geomean_edges"]]
    if not rows:
        raise SystemExit(f"{source}: no validated frontier circuit to plot")
    fig = Figure(figsize=(6.5, 4.2), layout="tight")
    ax = fig.subplots()
    for role, label, style, colour in CURVES:
        members = [r for r in rows if role in r["roles"]]
        ax.plot(
            [r["geomean_edges"] for r in members],
            [r["heldout_loss"] for r in members],
            style[0],
            color=colour,
            alpha=0.25,
            markersize=4,
        )
        by_config: dict = {}
        for r in members:
            by_config.setdefault((r["d_model"], r["density"]), []).append(r)
        means = []
        for (width, density), group in by_config.items():
            x = math.exp(sum(math.log(r["geomean_edges"]) for r in group) / len(group))
            y = sum(r["heldout_loss"] for r in group) / len(group)
            means.append((y, x, width, density))
        means.sort()
        ax.plot([m[1] for m in means], [m[0] for m in means], style, color=colour, label=label)
        for _, x, width, density in means:
            tag = f"{width}" + ("" if density == 1.0 else f"/{density:.3g}")
            ax.annotate(tag, (x, _), fontsize=7, textcoords="offset points", xytext=(4, 4))
    seeds = len({r["seed"] for r in rows})
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (geometric-mean edges over validated frontier tasks)")
    ax.set_ylabel("held-out pretraining loss (nats/token)")
    ax.set_title(f"standard study: capability vs circuit size ({seeds} seeds; lines: means)")
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})
    return out


def screenshot_viewer(study: Path, circuit: str, out: Path) -> Path:
    from playwright.sync_api import sync_playwright

    report = (study / "report.html").resolve()
    if not report.exists():
        raise SystemExit(f"{report}: missing (run `sparsecircuits view {study}` or the study)")
    html = report.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    data = json.loads(m.group(1))
    model, task = circuit.split("/")
    index, row = next(
        (i, c) for i, c in enumerate(data["circuits"]) if (c["model"], c["task"]) == (model, task)
    )
    nodes = json.loads((study / row["path"]).read_text()).get("node_effects", {})
    top = max(nodes, key=lambda n: nodes[n] if math.isfinite(nodes[n]) else -1) if nodes else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(report.as_uri())
        page.select_option("#circuit-select", str(index))
        if top:
            page.click(f'circle.node[data-node="{top}"]')  # a click keeps it in the panel
        page.locator("#viewer").screenshot(path=str(out))
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", default=str(ROOT / "benchmarks/results/study_standard.md"))
    ap.add_argument("--viewer", metavar="STUDY_DIR", help="also screenshot this study's viewer")
    ap.add_argument("--circuit", default="w64_d0.125_s0/while_return_true", help="MODEL/TASK")
    args = ap.parse_args()
    print(f"wrote {draw_frontier(Path(args.summary), IMAGES / 'frontier.png')}")
    if args.viewer:
        path = screenshot_viewer(Path(args.viewer), args.circuit, IMAGES / "viewer.png")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
