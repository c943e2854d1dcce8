"""The study: train a family of dense and weight-sparse models, prune each for each task,
and measure the capability-interpretability frontier (held-out loss vs circuit size).

The family, as in Gao et al. 2025: at a base width, a dense model and weight-sparse models
at several densities; and at one fixed number of nonzero weights, several widths (the
"grow total parameters at fixed L0" axis). Every finished model is cached under the token
cache root keyed by its config (a second study reuses it); every circuit is cached in the
study folder keyed by what it depends on, so a killed study resumes where it stopped.

    DIR/study.json                      the study's config (a different one is refused)
    DIR/circuits/<model>/<task>/        circuit.json + key.json
    DIR/results.json                    everything the report needs
    DIR/frontier.png                    held-out loss vs geometric-mean circuit edges
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import load
from .config import config_to_dict, resolve
from .corpus import cache_root
from .errors import UserError, read_json, save_figure_atomic, write_json_atomic
from .nodes import cached_node_means
from .prune import TargetUnreachable, calibrate, find_circuit
from .pruning import PruneConfig
from .tasks import TASKS, get_task, task_logit_diff
from .train import train

RESULTS_VERSION = 1
LOSS_TOL = 0.005  # nats/token


@dataclass
class StudyConfig:
    preset: str = "quick"
    base_preset: str = "quick"  # the training preset every model starts from
    train_overrides: dict = field(default_factory=dict)  # applied to every model
    base_width: int = 64
    densities: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])
    # Fixed number of nonzero weights per matrix: the base width at `fixed_l0_density`,
    # also trained at these wider widths with the density scaled to keep nonzeros equal.
    fixed_l0_density: float = 0.125
    wide_widths: list[int] = field(default_factory=lambda: [128])
    dense_widths: list[int] = field(default_factory=lambda: [64])
    tasks: list[str] = field(
        default_factory=lambda: ["single_double_quote", "lambda_func", "for_while"]
    )
    seeds: int = 1
    # A number, or "auto": per task, 1.1 x the worst full-model loss in the family (capped at
    # `auto_cap`; chance is 2 ln 2 = 1.39), so every model is pruned to the same target and
    # weak models still count. A floor of 0.01 keeps a task every model solves perfectly sane.
    target_loss: float | str = 0.15
    auto_cap: float = 1.0
    prune: dict = field(default_factory=dict)  # PruneConfig overrides


STUDY_PRESETS: dict[str, dict] = {
    # ~15 minutes on 2 cores: 5 small models, 3 tasks. Models this small learn only some
    # tasks in a few minutes: these three are the ones every model of the family can do.
    "quick": dict(
        base_preset="quick",
        # snapshots every 200 steps for the activations analysis over training (cheap)
        train_overrides=dict(
            n_ctx=64, steps=1200, lr=5e-3, eval_every=300, checkpoint_every=300, save_every=200
        ),
        base_width=64,
        densities=[0.5, 0.25, 0.125],
        fixed_l0_density=0.125,
        wide_widths=[128],
        dense_widths=[64],
        tasks=["single_double_quote", "lambda_func", "if_equals"],
        seeds=1,
        target_loss="auto",
        auto_cap=1.35,
        prune=dict(steps=150, n_train=64, n_test=64, effect_nodes=100),
    ),
    # The reference CPU run: a few hours, 2 seeds, 6 tasks.
    "small": dict(
        base_preset="small",
        train_overrides=dict(save_every=200),
        base_width=128,
        densities=[0.25, 0.125, 1 / 16, 1 / 32],
        fixed_l0_density=1 / 16,
        wide_widths=[256],
        dense_widths=[128, 256],
        tasks=[
            "single_double_quote",
            "bracket_counting",
            "set_or_string",
            "for_while",
            "lambda_func",
            "if_equals",
        ],
        seeds=2,
        target_loss="auto",
    ),
    # The paper's sweep shapes, for a GPU.
    "paper": dict(
        base_preset="paper",
        base_width=1024,
        densities=[1 / 16, 1 / 32, 1 / 64, 1 / 128],
        fixed_l0_density=1 / 64,
        wide_widths=[2048, 4096],
        dense_widths=[256, 512, 1024],
        tasks=list(TASKS),
        seeds=1,
        target_loss=0.15,
    ),
}


def study_config(
    preset: str, tasks: list[str] | None = None, seeds: int | None = None
) -> StudyConfig:
    if preset not in STUDY_PRESETS:
        raise UserError(
            f"unknown study preset {preset!r}; choose one of {', '.join(STUDY_PRESETS)}"
        )
    cfg = StudyConfig(preset=preset, **STUDY_PRESETS[preset])
    if tasks:
        unknown = [t for t in tasks if t not in TASKS and not t.endswith(".jsonl")]
        if unknown:
            raise UserError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS)}")
        cfg.tasks = list(tasks)
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        cfg.seeds = seeds
    return cfg


@dataclass
class ModelSpec:
    id: str
    label: str
    kind: str  # dense | sparse
    d_model: int
    density: float
    seed: int


def model_specs(cfg: StudyConfig) -> list[ModelSpec]:
    specs = []
    for seed in range(cfg.seeds):
        for w in cfg.dense_widths:
            specs.append(
                ModelSpec(
                    f"w{w}_dense_s{seed}", f"dense, d_model {w}, seed {seed}", "dense", w, 1.0, seed
                )
            )
        points = [(cfg.base_width, d) for d in cfg.densities]
        # Same nonzeros per (square) matrix: density scales with 1 / width^2.
        points += [(w, cfg.fixed_l0_density * (cfg.base_width / w) ** 2) for w in cfg.wide_widths]
        for w, d in points:
            specs.append(
                ModelSpec(
                    f"w{w}_d{d:.4g}_s{seed}",
                    f"sparse {d:.4g}, d_model {w}, seed {seed}",
                    "sparse",
                    w,
                    d,
                    seed,
                )
            )
    return specs


def _hash(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=10).hexdigest()


def _model_configs(cfg: StudyConfig, spec: ModelSpec):
    overrides = dict(
        cfg.train_overrides, d_model=spec.d_model, density=spec.density, seed=spec.seed
    )
    return resolve(cfg.base_preset, None, overrides)


def model_dir(cfg: StudyConfig, spec: ModelSpec) -> Path:
    m, t = _model_configs(cfg, spec)
    return cache_root() / "models" / _hash(config_to_dict(m, t))


# --- running ---------------------------------------------------------------------------


def _check_out(out: Path, cfg: StudyConfig, resume: bool, force: bool) -> None:
    path = out / "study.json"
    mine = dataclasses.asdict(cfg)
    if path.exists():
        saved = read_json(path)
        if saved != mine:
            if not force:
                hint = (
                    "--resume needs the same preset, tasks and seeds"
                    if resume
                    else "use another --out"
                )
                raise UserError(
                    f"{out}: holds a different study ({path}); {hint}, or pass --force to replace it"
                )
            for name in ("circuits", "results.json", "frontier.png", "report.html"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise UserError(
            f"{out}: exists and is not a study folder; choose another --out or pass --force"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, mine)


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Train, prune, analyse; returns the results (also written to DIR/results.json)."""
    out = Path(out)
    _check_out(out, cfg, resume, force)
    specs = model_specs(cfg)
    steps = {s.id: _model_configs(cfg, s)[1].steps for s in specs}
    prune_units = 200  # a circuit search weighs about as much as this many training steps
    total = sum(steps.values()) + prune_units * len(specs) * len(cfg.tasks)
    bar = tqdm(total=total, desc="study", unit="u", disable=not progress, dynamic_ncols=True)

    t0 = time.perf_counter()
    models = []
    for spec in specs:
        mdir = model_dir(cfg, spec)
        bar.set_postfix_str(f"train {spec.id}")
        start = bar.n
        if not (mdir / "done.json").exists():
            m, t = _model_configs(cfg, spec)
            train(
                m,
                t,
                mdir,
                resume=True,
                progress=False,
                on_step=lambda d, start=start: bar.update(start + d - bar.n),
            )
            write_json_atomic(mdir / "done.json", {"id": spec.id})
        bar.update(start + steps[spec.id] - bar.n)
        models.append(_model_row(spec, mdir))

    t1 = time.perf_counter()
    targets = _targets(cfg, specs, bar)
    circuits = []
    for spec in specs:
        for task in cfg.tasks:
            bar.set_postfix_str(f"prune {spec.id} {task}")
            circuits.append(_circuit(cfg, spec, task, targets[task], out))
            bar.update(prune_units)
    bar.close()
    results = analyse(cfg, models, circuits, targets)
    # this run's wall time: cached models and circuits cost (almost) nothing
    results["timing"] = {
        "train_seconds": round(t1 - t0, 1),
        "prune_seconds": round(time.perf_counter() - t1, 1),
    }
    write_json_atomic(out / "results.json", results)
    plot_frontier(results, out / "frontier.png")
    return results


def _model_row(spec: ModelSpec, mdir: Path) -> dict:
    model, _ = load(mdir)
    metrics = [json.loads(x) for x in (mdir / "metrics.jsonl").read_text().splitlines()]
    heldout = [r["heldout_loss"] for r in metrics if "heldout_loss" in r]
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    return dict(
        dataclasses.asdict(spec),
        n_layer=model.cfg.n_layer,
        dir=str(mdir),
        total_params=model.num_params(),
        nonzero_params=model.num_params(nonzero=True),
        matrix_nonzero=int(sum((p != 0).sum() for p in matrices)),
        heldout_loss=heldout[-1] if heldout else None,
    )


def _prune_config(cfg: StudyConfig, target: float, seed: int) -> PruneConfig:
    return PruneConfig(**{**cfg.prune, "target_loss": target, "seed": seed})


def _targets(cfg: StudyConfig, specs: list[ModelSpec], bar) -> dict[str, float | None]:
    """The target loss per task: fixed, or "auto" from the family's full-model losses."""
    if cfg.target_loss != "auto":
        return {t: float(cfg.target_loss) for t in cfg.tasks}
    pcfg = PruneConfig(**cfg.prune)
    worst = dict.fromkeys(cfg.tasks, 0.0)
    for spec in specs:
        model, tok = load(model_dir(cfg, spec))
        for task_name in cfg.tasks:
            task = get_task(task_name, pcfg.n_train, pcfg.n_test, 0)
            batch = task.encode(tok, "train", model.cfg.n_ctx)
            with torch.no_grad():
                diff = task_logit_diff(model(batch.tokens), batch)
            loss, _, _ = calibrate(diff, batch, pcfg.calib_steps)
            worst[task_name] = max(worst[task_name], loss)
    # A task that some model cannot do better than the cap is left out of the frontier.
    return {
        t: (round(max(1.1 * w, 0.01), 4) if 1.1 * w <= cfg.auto_cap else None)
        for t, w in worst.items()
    }


def _circuit(
    cfg: StudyConfig, spec: ModelSpec, task_name: str, target: float | None, out: Path
) -> dict:
    row = dict(
        model=spec.id,
        task=task_name,
        status="ok",
        message=None,
        n_nodes=None,
        n_edges=None,
        metrics=None,
        path=None,
        target_loss=target,
    )
    if target is None:
        row.update(
            status="unreachable",
            message=f"some model in the family is worse than task loss {cfg.auto_cap / 1.1:.3g} on this task",
        )
        return row
    # a user task file is filed under its name, not its path
    cdir = (
        out
        / "circuits"
        / spec.id
        / (Path(task_name).stem if task_name.endswith(".jsonl") else task_name)
    )
    mdir = model_dir(cfg, spec)
    pcfg = _prune_config(cfg, target, spec.seed)
    key = {
        "model": str(mdir),
        "weights": (mdir / "model.safetensors").stat().st_mtime_ns,
        "task": task_name,
        "prune": dataclasses.asdict(pcfg),
    }
    if (cdir / "key.json").exists() and read_json(cdir / "key.json") == key:
        return read_json(cdir / "row.json")
    model, tok = load(mdir)
    task = get_task(task_name, pcfg.n_train, pcfg.n_test, spec.seed)
    try:
        train_b = task.encode(tok, "train", model.cfg.n_ctx)
        test_b = task.encode(tok, "test", model.cfg.n_ctx)
        means = cached_node_means(mdir, model, tok, progress=False)
        c = find_circuit(
            model,
            train_b,
            test_b,
            means,
            pcfg,
            False,
            task_name,
            spec.id,
            token_text=lambda i: tok.decode([i]),
        )
        c.model_dir = str(mdir)
        c.save(cdir / "circuit.json")
        row.update(
            n_nodes=c.n_nodes,
            n_edges=c.n_edges,
            metrics=c.metrics,
            path=str((cdir / "circuit.json").relative_to(out)),
        )
    except TargetUnreachable as e:
        row.update(status="unreachable", message=str(e))
    except UserError as e:
        row.update(status="error", message=str(e))
    # The result is written before the key, so a key on disk always has its result.
    write_json_atomic(cdir / "row.json", row)
    write_json_atomic(cdir / "key.json", key)
    return row


# --- analysis --------------------------------------------------------------------------


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1)) for x in xs) / len(xs))


def _interp_log_edges(points: list[tuple[float, float]], loss: float) -> tuple[float, bool]:
    """log(edges) of a curve at `loss`, linear in (loss, log edges) between the two nearest
    points; returns (value, extrapolated?)."""
    pts = sorted(points)
    inside = pts[0][0] <= loss <= pts[-1][0]
    pair = min(
        ((pts[i], pts[i + 1]) for i in range(len(pts) - 1)),
        key=lambda ab: abs((ab[0][0] + ab[1][0]) / 2 - loss),
    )
    (l0, e0), (l1, e1) = pair
    if l1 == l0:
        return (e0 + e1) / 2, not inside
    return e0 + (e1 - e0) * (loss - l0) / (l1 - l0), not inside


def _spread(xs: list[float]) -> dict | None:
    if not xs:
        return None
    s = sorted(xs)
    return {
        "median": s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2,
        "low": s[0],
        "high": s[-1],
        "n": len(s),
    }


def analyse(cfg: StudyConfig, models: list[dict], circuits: list[dict], targets: dict) -> dict:
    ok = {(c["model"], c["task"]): c["n_edges"] for c in circuits if c["status"] == "ok"}
    # Only tasks every model solved enter the frontier, so geometric means compare.
    common = [t for t in cfg.tasks if all((m["id"], t) in ok for m in models)]
    frontier = []
    for m in models:
        ge = _geomean([ok[(m["id"], t)] for t in common]) if common else None
        frontier.append(
            {k: m[k] for k in ("id", "label", "kind", "d_model", "density", "seed", "heldout_loss")}
            | {"model": m["id"], "geomean_edges": ge, "n_tasks": len(common)}
        )
    details = []
    if not common:
        details.append(
            "no task was solved by every model at its target, so no frontier could be drawn"
        )

    # (a) dense vs sparse at matched loss, per task and seed, along the sparse curve at the dense width
    ratios, extrapolated = [], 0
    for d in (m for m in models if m["kind"] == "dense"):
        sparse = [
            m
            for m in models
            if m["kind"] == "sparse" and m["seed"] == d["seed"] and m["d_model"] == cfg.base_width
        ]
        for t in common:
            pts = [(s["heldout_loss"], math.log(max(ok[(s["id"], t)], 1))) for s in sparse]
            if len(pts) < 2 or d["heldout_loss"] is None:
                continue
            log_e, extra = _interp_log_edges(pts, d["heldout_loss"])
            ratios.append(max(ok[(d["id"], t)], 1) / math.exp(log_e))
            extrapolated += extra
    ratio = _spread(ratios)

    # (b) lowering the density at the base width
    base = sorted(
        (
            f
            for f in frontier
            if f["kind"] == "sparse" and f["d_model"] == cfg.base_width and f["seed"] == 0
        ),
        key=lambda f: -f["density"],
    )
    density_trend = "not measured"
    if len(base) >= 2 and common:
        losses = [f["heldout_loss"] for f in base]
        edges = [f["geomean_edges"] for f in base]
        loss_up = all(b >= a for a, b in zip(losses, losses[1:], strict=False))
        edges_down = all(b <= a for a, b in zip(edges, edges[1:], strict=False))
        density_trend = (
            f"density {' > '.join(format(f['density'], '.3g') for f in base)}: held-out loss "
            f"{' -> '.join(f'{x:.3f}' for x in losses)} ({'rises' if loss_up else 'does not rise monotonically'}), "
            f"geomean circuit edges {' -> '.join(f'{x:.0f}' for x in edges)} "
            f"({'shrink' if edges_down else 'do not shrink monotonically'})"
        )

    # (c) widening at a fixed number of nonzero weights
    fixed = [
        f
        for f in frontier
        if f["kind"] == "sparse"
        and f["seed"] == 0
        and (
            (f["d_model"] == cfg.base_width and math.isclose(f["density"], cfg.fixed_l0_density))
            or f["d_model"] in cfg.wide_widths
        )
    ]
    fixed.sort(key=lambda f: f["d_model"])
    width_effect = "not measured"
    if len(fixed) >= 2 and common:
        a, b = fixed[0], fixed[-1]
        # Held-out losses within LOSS_TOL are the same capability (eval noise is about that size).
        better_loss, smaller = (
            b["heldout_loss"] <= a["heldout_loss"] + LOSS_TOL,
            b["geomean_edges"] <= a["geomean_edges"],
        )
        verdict = (
            f"moves the frontier out (no higher loss, within {LOSS_TOL}, and no larger circuits)"
            if better_loss and smaller
            else "lowers loss but enlarges circuits"
            if better_loss
            else "shrinks circuits but raises loss"
            if smaller
            else "moves the frontier in"
        )
        width_effect = (
            f"at equal nonzeros, d_model {a['d_model']} -> {b['d_model']}: loss {a['heldout_loss']:.3f} -> "
            f"{b['heldout_loss']:.3f}, geomean edges {a['geomean_edges']:.0f} -> {b['geomean_edges']:.0f}: "
            f"widening {verdict}"
        )

    if ratio:
        sentence = (
            f"dense circuits are {ratio['median']:.1f}x the size of sparse circuits at matched held-out "
            f"loss (range {ratio['low']:.1f}-{ratio['high']:.1f}x over {ratio['n']} task/seed comparisons"
            + (
                f", {extrapolated} extrapolated beyond the sparse models' loss range"
                if extrapolated
                else ""
            )
            + "; the paper reports about 16x at its scale)"
        )
    else:
        sentence = "the dense/sparse circuit-size ratio could not be measured (no task solved by every model)"
    details += [
        f"tasks in the frontier: {', '.join(common) or 'none'}",
        "target loss per task: " + ", ".join(f"{t}: {v}" for t, v in targets.items()),
    ]
    return {
        "schema_version": RESULTS_VERSION,
        "study": {
            "preset": cfg.preset,
            "tasks": cfg.tasks,
            "seeds": list(range(cfg.seeds)),
            "target_loss": cfg.target_loss,
            "targets": targets,
            "config": dataclasses.asdict(cfg),
        },
        "models": models,
        "circuits": circuits,
        "frontier": frontier,
        "answer": {
            "sentence": sentence,
            "ratio": ratio,
            "ratios": ratios,
            "density_trend": density_trend,
            "width_effect": width_effect,
            "details": details,
        },
    }


def plot_frontier(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = [f for f in results["frontier"] if f["geomean_edges"] and f["heldout_loss"] is not None]
    for width in sorted({f["d_model"] for f in pts}):
        curve = sorted(
            (f for f in pts if f["d_model"] == width and f["kind"] == "sparse"),
            key=lambda f: -f["density"],
        )
        if curve:
            ax.plot(
                [f["geomean_edges"] for f in curve],
                [f["heldout_loss"] for f in curve],
                "o-",
                label=f"sparse, d_model {width}",
            )
            for f in curve:
                ax.annotate(
                    f"{f['density']:.3g}",
                    (f["geomean_edges"], f["heldout_loss"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    dense = [f for f in pts if f["kind"] == "dense"]
    if dense:
        ax.scatter(
            [f["geomean_edges"] for f in dense],
            [f["heldout_loss"] for f in dense],
            marker="s",
            s=60,
            c="black",
            label="dense",
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("circuit size (geometric-mean edges over tasks)")
    ax.set_ylabel("held-out pretraining loss (nats/token)")
    ax.set_title("capability vs interpretability")
    if pts:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no task solved by every model", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
