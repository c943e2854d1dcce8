"""Forced vs emergent modularity: do models grow a separate subnetwork per subroutine of a
compound task (Lepori et al. 2023), and how do those compare with the circuits that weight
sparsity forces?

For every base model (a pretrained checkpoint, dense or weight-sparse), every compound task
and every base seed, three models are built:

    pretrained   the checkpoint, fine-tuned on the compound task (the seed orders the data)
    scratch      the same architecture from a random init (the seed), trained on the task
    random       the same random init, untrained: the control, where any "subnetwork" is
                 what mask search can carve out of noise

A weight-sparse base keeps its sparsity: fine-tuning never revives a zero weight, and the
scratch/random inits are projected to the same density. Then, for each subroutine X in
{A, B} and each mask seed, two kinds of structure are found on X's dataset:

    weights  continuous sparsification over the weights of the chosen layers (weightmask.py)
    nodes    the node-mask circuit search of the circuits issue (prune.find_circuit), with
             node means over the task's prompts

and measured the same way on the test pairs (accuracy: correct candidate's logit higher):

    subnetwork metric  acc(structure alone on X) - acc(structure alone on the other subroutine)
                       (> 0: it does its own job only)
    ablation metric    acc(full model minus the structure on X) - acc(... on the other)
                       (< 0: removing it broke only its own job); zero and mean ablation
    size, A/B overlap (Jaccard of the A and B structures), stability (Jaccard across mask seeds)

Effects are averaged over mask seeds within a base model, then summarised over base seeds
with a 95% t-interval (the base model is the unit, as in the paper's clustered regression).
A mask that keeps nothing or everything is reported as collapsed and left out of the means.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from itertools import combinations, product
from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import load, load_config
from .errors import UserError, read_json, save_figure_atomic, write_json_atomic
from .fer import fer_measures, validate_on_planted
from .model import SparseGPT
from .nodes import ablation_hooks, compute_node_means, node_sites, parse_node
from .prune import TargetUnreachable, find_circuit
from .pruning import PruneConfig
from .sparsity import WeightSparsifier
from .stats import t_interval
from .tasks import TaskBatch, prompt_windows, task_accuracy
from .tasks.compound import (
    FACTORS,
    CompoundBatch,
    CompoundTask,
    compound_accuracy,
    compound_loss,
    get_compound_task,
    load_compound_task,
)
from .tokenizer import load_tokenizer
from .weightmask import (
    MaskConfig,
    continuous_sparsification,
    input_means,
    jaccard,
    kept_weights,
    masked_accuracy,
    masked_layers,
)

REGIMES = ("pretrained", "scratch", "random")
RESULTS_FILE = "modularity.json"
JOB_FIELDS = ("tasks", "task_files", "regimes", "base_seeds")  # what a run folder may grow by


@dataclass
class ModularityConfig:
    tasks: list[str] = field(default_factory=lambda: ["quote_bracket", "nested_close"])
    # user compound tasks: [compound.jsonl, a.jsonl, b.jsonl] each (tasks/compound.py)
    task_files: list[list[str]] = field(default_factory=list)
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    base_seeds: int = 3
    mask_seeds: int = 2
    n_train: int = 96  # cells of four prompts
    n_test: int = 48
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    scratch_lr: float = 3e-3  # a random init needs larger steps than a pretrained one
    batch_size: int = 32
    masks: MaskConfig = field(default_factory=MaskConfig)
    node_target: float = 0.3  # task loss the node circuit must reach (pair loss, calibrated)
    node_steps: int = 300
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.masks, dict):
            self.masks = MaskConfig(**self.masks)
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad:
            raise UserError(f"unknown regime(s) {bad}; choose from {', '.join(REGIMES)}")
        if any(len(files) != 3 for files in self.task_files):
            raise UserError("each user compound task is three files: compound, A and B (.jsonl)")
        if not self.tasks and not self.task_files:
            raise UserError("modularity needs at least one compound task")
        for name in ("base_seeds", "mask_seeds", "n_train", "n_test"):
            if getattr(self, name) < 1:
                raise UserError(f"modularity config: {name} must be >= 1")


# ---------- building the base models ----------


def _kind(model_cfg, train_cfg) -> tuple[str, float]:
    density = train_cfg.density if train_cfg is not None else 1.0
    kind = "dense" if density >= 1.0 else "sparse"
    frac = "" if density >= 1.0 else f" 1/{round(1 / density)}"
    return f"{kind}{frac} w{model_cfg.d_model}", density


def _support(model: SparseGPT) -> dict[str, torch.Tensor]:
    return {n: p != 0 for n, p in model.named_parameters() if p.dim() == 2 and (p == 0).any()}


def train_on_compound(
    model: SparseGPT, batch: CompoundBatch, steps: int, lr: float, batch_size: int, seed: int
) -> float:
    """Train on the compound task's prompts (next-token loss of the answer); weights that are
    zero stay zero, so a weight-sparse model keeps its sparsity. Returns the last loss."""
    support = _support(model)
    params = dict(model.named_parameters())
    model.requires_grad_(True).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        sub = batch.subset(torch.randperm(len(batch), generator=g)[:batch_size])
        loss = compound_loss(model(sub.tokens), sub)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, keep in support.items():
                params[n].mul_(keep)
    model.requires_grad_(False).eval()
    return float(loss.detach())


def base_model(
    model_dir: Path, train_cfg, regime: str, seed: int, batch: CompoundBatch, cfg: ModularityConfig
) -> SparseGPT:
    """The model of one regime (see the module docstring), ready for mask search;
    `train_cfg` is the checkpoint's (its density is kept)."""
    model, _ = load(model_dir)
    if regime == "pretrained":
        train_on_compound(model, batch, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, seed)
        return model
    torch.manual_seed(seed)
    fresh = SparseGPT(model.cfg)
    if train_cfg is not None and train_cfg.density < 1.0:
        WeightSparsifier(fresh, train_cfg).apply(train_cfg.steps)  # the base's final density
    fresh.eval().requires_grad_(False)
    if regime == "scratch":
        train_on_compound(fresh, batch, cfg.finetune_steps, cfg.scratch_lr, cfg.batch_size, seed)
    return fresh


# ---------- one base model: weight subnetworks and node circuits per subroutine ----------


def _accuracy_profile(acc: dict[str, float], factor: str) -> dict:
    other = FACTORS[1 - FACTORS.index(factor)]
    return {"own": acc[factor], "other": acc[other], "metric": acc[factor] - acc[other]}


def _lepori(accuracy, keep, removed, subs, factor: str, modes: tuple[str, ...]) -> dict:
    """Subnetwork metric (the structure alone, rest removed in the first mode) and ablation
    metric per mode (the structure removed), each on the test pairs of both subroutines.
    `accuracy(masks, batch, mode)` runs the model under masks."""
    test = {f: subs[f]["test"] for f in FACTORS}

    def profile(masks, mode):
        return _accuracy_profile({f: accuracy(masks, test[f], mode) for f in FACTORS}, factor)

    return {"subnetwork": profile(keep, modes[0])} | {
        f"ablation_{mode}": profile(removed, mode) for mode in modes
    }


def weight_structures(
    model, names, subs: dict[str, dict[str, TaskBatch]], means, cfg: ModularityConfig
):
    """Per subroutine: one mask per mask seed, with its size and Lepori metrics."""
    modules = dict(model.named_modules())
    total = sum(int((modules[n].weight != 0).sum()) for n in names)

    def accuracy(masks, batch, mode):
        return masked_accuracy(model, masks, batch, mode, means)

    out, kept = {}, {}
    for factor in FACTORS:
        runs, kept[factor] = [], []
        for ms in range(cfg.mask_seeds):
            mask = continuous_sparsification(
                model, names, subs[factor]["train"], cfg.masks, seed=cfg.seed + 1000 * ms
            )
            k = kept_weights(model, mask)
            n_kept = sum(int(v.sum()) for v in k.values())
            status = "empty" if n_kept == 0 else "full" if n_kept >= total else "ok"
            removed = {n: 1 - m for n, m in mask.items()}
            runs.append(
                {
                    "mask_seed": ms,
                    "status": status,
                    "kept": n_kept,
                    "kept_frac": n_kept / total,
                    **_lepori(accuracy, mask, removed, subs, factor, ("zero", "mean")),
                }
            )
            kept[factor].append(k)
        out[factor] = runs
    return out, kept, total


def _node_masks(model, circuit) -> dict[str, torch.Tensor]:
    masks = {s.hook: torch.zeros(s.width) for s in node_sites(model.cfg)}
    for node in circuit.nodes:
        hook, i = parse_node(node.name)
        masks[hook][i] = 1.0
    return masks


def node_structures(model, subs, node_means, cfg: ModularityConfig):
    """Per subroutine: the node circuit per mask seed (or why there is none), with metrics."""
    sites = node_sites(model.cfg)

    @torch.no_grad()
    def accuracy(masks, batch, mode):  # nodes are always mean-ablated
        hooks = ablation_hooks(sites, node_means, masks)
        return task_accuracy(model.run_with_hooks(batch.tokens, fwd_hooks=hooks), batch)

    out, kept = {}, {}
    for factor in FACTORS:
        runs, kept[factor] = [], []
        for ms in range(cfg.mask_seeds):
            pcfg = PruneConfig(
                target_loss=cfg.node_target,
                steps=cfg.node_steps,
                seed=cfg.seed + 1000 * ms,
                random_draws=0,
                effect_nodes=0,
                example_pairs=0,
            )
            try:
                circuit = find_circuit(
                    model,
                    subs[factor]["train"],
                    subs[factor]["test"],
                    node_means,
                    pcfg,
                    False,
                    factor,
                )
            except TargetUnreachable as e:
                runs.append({"mask_seed": ms, "status": "unreachable", "full_loss": e.full_loss})
                continue
            masks = _node_masks(model, circuit)
            removed = {h: 1 - m for h, m in masks.items()}
            n = len(circuit.nodes)
            runs.append(
                {
                    "mask_seed": ms,
                    "status": "empty" if n == 0 else "full" if n >= circuit.n_nodes_total else "ok",
                    "nodes": n,
                    "edges": len(circuit.edges),
                    "kept_frac": n / circuit.n_nodes_total,
                    **_lepori(accuracy, masks, removed, subs, factor, ("mean",)),
                }
            )
            kept[factor].append({h: m > 0 for h, m in masks.items()})
        out[factor] = runs
    return out, kept


def _mean_jaccard(pairs) -> float | None:
    """Mean Jaccard over (mask, mask) pairs, skipping pairs of two empty masks."""
    values = [v for x, y in pairs if (v := jaccard(x, y)) is not None]
    return statistics.fmean(values) if values else None


def analyse_base(model, batches: dict, cfg: ModularityConfig, names: list[str]) -> dict:
    """All structures and metrics of one base model. `batches`: "train"/"test" compound
    batches and "sub" = {factor: {split: TaskBatch}}. Ablation means (of nodes and of layer
    inputs) are over the compound task's training prompts, the same for every regime."""
    compound_test, subs = batches["test"], batches["sub"]
    windows = prompt_windows(batches["train"])
    weights, wkept, total = weight_structures(
        model, names, subs, input_means(model, names, windows), cfg
    )
    node_means = compute_node_means(model, windows, node_sites(model.cfg), progress=False)
    nodes, nkept = node_structures(model, subs, node_means, cfg)
    return {
        "compound_accuracy": compound_accuracy(model(compound_test.tokens), compound_test),
        "sub_accuracy": {
            f: task_accuracy(model(subs[f]["test"].tokens), subs[f]["test"]) for f in FACTORS
        },
        "weights_total": total,
        "weights": weights,
        "nodes": nodes,
        "stability": {
            "weights": {f: _mean_jaccard(combinations(wkept[f], 2)) for f in FACTORS},
            "nodes": {f: _mean_jaccard(combinations(nkept[f], 2)) for f in FACTORS},
        },
        "overlap_ab": {
            "weights": _mean_jaccard(product(wkept["a"], wkept["b"])),
            "nodes": _mean_jaccard(product(nkept["a"], nkept["b"])),
        },
    }


# ---------- the whole experiment ----------


def study_models(study_dir: str | Path) -> list[str]:
    """The study's dense and sparsest models at its smallest width (first seed): the
    emergent and the forced case at the same shape."""
    path = Path(study_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{study_dir}: no results.json (run sparsecircuits study first)")
    models = read_json(path).get("models") or []
    seed = min((m["seed"] for m in models), default=0)
    width = min((m["d_model"] for m in models), default=0)
    base = [m for m in models if m["seed"] == seed and m["d_model"] == width]
    dense = [m for m in base if m["density"] >= 1.0]
    sparse = sorted((m for m in base if m["density"] < 1.0), key=lambda m: m["density"])
    if not dense or not sparse:
        raise UserError(f"{path}: needs a dense and a sparse model of the same width")
    # study folders may be moved: a relative model dir is relative to the study
    return [str(Path(study_dir) / m["dir"]) for m in (dense[0], sparse[0])]


def interval(xs: list[float]) -> dict | None:
    """Mean with a 95% t-interval over independent units (base models); `found` says whether
    the interval excludes zero (an effect smaller than its interval is not found)."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return None
    if len(xs) < 2:
        return {"mean": xs[0], "low": None, "high": None, "n": 1, "found": None}
    mean, low, high = t_interval(xs)
    return {"mean": mean, "low": low, "high": high, "n": len(xs), "found": low > 0 or high < 0}


def _per_base(run: dict, structure: str, factor: str, metric: str) -> float | None:
    """One base model's value: the mean over its usable (not collapsed) mask seeds."""
    vals = []
    for r in run[structure][factor]:
        if r["status"] != "ok":
            continue
        vals.append(r[metric]["metric"] if isinstance(r.get(metric), dict) else r.get(metric))
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def _sd(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


METRICS = {
    "weights": ("subnetwork", "ablation_zero", "ablation_mean", "kept_frac", "kept"),
    "nodes": ("subnetwork", "ablation_mean", "kept_frac", "nodes", "edges"),
}


def summarise(runs: list[dict]) -> list[dict]:
    """Per task x model x regime x structure x subroutine: each metric over base seeds."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["task"], run["model"], run["kind"], run["regime"]), []).append(run)
    rows = []
    for (task, model, kind, regime), rs in groups.items():
        for structure, metrics in METRICS.items():
            for factor in FACTORS:
                statuses = [r["status"] for run in rs for r in run[structure][factor]]
                row = {
                    "task": task,
                    "model": model,
                    "kind": kind,
                    "regime": regime,
                    "structure": structure,
                    "factor": factor,
                    "base_models": len(rs),
                    "collapsed": sum(s in ("empty", "full") for s in statuses),
                    "unreachable": sum(s == "unreachable" for s in statuses),
                    "usable": sum(s == "ok" for s in statuses),
                }
                per_base = {
                    m: [_per_base(run, structure, factor, m) for run in rs] for m in metrics
                }
                for m in metrics:
                    row[m] = interval(per_base[m])
                row["stability"] = interval([run["stability"][structure][factor] for run in rs])
                row["overlap_ab"] = interval([run["overlap_ab"][structure] for run in rs])
                row["spread"] = {m: _sd(per_base[m]) for m in ("subnetwork", "ablation_mean")}
                rows.append(row)
    return rows


def consistency(summary: list[dict]) -> list[dict]:
    """Per regime x structure: how consistent the effects are across tasks, models (shapes,
    kinds) and subroutines. Each unit is one (task, model, subroutine) mean over base seeds;
    `agree` is the fraction with the modular sign (subnetwork > 0, ablation < 0)."""
    rows = []
    for regime in sorted({r["regime"] for r in summary}):
        for structure in METRICS:
            units = [r for r in summary if (r["regime"], r["structure"]) == (regime, structure)]
            row = {"regime": regime, "structure": structure, "units": len(units)}
            for metric, sign in (("subnetwork", 1), ("ablation_mean", -1)):
                xs = [u[metric]["mean"] for u in units if u.get(metric)]
                row[metric] = {
                    "mean": statistics.fmean(xs) if xs else None,
                    "sd": statistics.stdev(xs) if len(xs) > 1 else None,
                    "agree": sum(sign * x > 0 for x in xs) / len(xs) if xs else None,
                    "found": sum(bool(u[metric]["found"]) for u in units if u.get(metric)),
                }
            rows.append(row)
    return rows


def forced_vs_emergent(runs: list[dict], summary: list[dict], tol: float = 0.05) -> list[dict]:
    """Dense (emergent) and weight-sparse (forced) models side by side, per task, for the
    pretrained regime: accuracy, structure size, selectivity, A/B overlap, stability.
    `matched` says whether the compound accuracies agree within `tol`."""
    rows = []
    for task in sorted({r["task"] for r in runs}):
        accs = {}
        for run in runs:
            if run["task"] == task and run["regime"] == "pretrained":
                accs.setdefault(run["kind"], []).append(run["compound_accuracy"])
        means = {k: statistics.fmean(v) for k, v in accs.items()}
        matched = bool(means) and max(means.values()) - min(means.values()) <= tol
        for kind, acc in sorted(means.items()):
            for structure in METRICS:
                s = {
                    r["factor"]: r
                    for r in summary
                    if (r["task"], r["kind"], r["regime"], r["structure"])
                    == (task, kind, "pretrained", structure)
                }
                if not s:
                    continue

                def avg(metric, s=s):
                    vals = [s[f][metric]["mean"] for f in FACTORS if s[f].get(metric)]
                    return statistics.fmean(vals) if vals else None

                rows.append(
                    {
                        "task": task,
                        "kind": kind,
                        "structure": structure,
                        "compound_accuracy": acc,
                        "matched_accuracy": matched,
                        "size": avg("kept" if structure == "weights" else "nodes"),
                        "kept_frac": avg("kept_frac"),
                        "subnetwork_metric": avg("subnetwork"),
                        "ablation_metric": avg("ablation_mean"),
                        "overlap_ab": s["a"]["overlap_ab"]["mean"]
                        if s["a"]["overlap_ab"]
                        else None,
                        "stability": avg("stability"),
                    }
                )
    return rows


def findings(summary: list[dict]) -> list[str]:
    """One sentence per task x structure x regime: the subroutine metrics of every model kind,
    with intervals over base models, both subroutines pooled by their mean."""
    lines = []
    keys = sorted({(r["task"], r["structure"], r["regime"]) for r in summary})
    for task, structure, regime in keys:
        rows = [
            r
            for r in summary
            if (r["task"], r["structure"], r["regime"]) == (task, structure, regime)
        ]
        parts = []
        for kind in sorted({r["kind"] for r in rows}):
            per = [r for r in rows if r["kind"] == kind]
            if not any(r["subnetwork"] for r in per):
                parts.append(f"{kind}: no usable structure")
                continue
            parts.append(
                f"{kind}: "
                + "; ".join(
                    f"{r['factor'].upper()} subnetwork {_fmt_ci(r['subnetwork'])}, "
                    f"ablation {_fmt_ci(r['ablation_mean'])}"
                    for r in per
                    if r["subnetwork"]
                )
            )
        lines.append(f"{task}, {regime}, {structure}: " + " | ".join(parts))
    return lines


def _read_runs(path: Path) -> list[dict]:
    """Finished runs of an earlier, interrupted call (a torn last line is dropped)."""
    runs = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return runs


def run_modularity(
    model_dirs: list[str | Path],
    out: str | Path,
    cfg: ModularityConfig | None = None,
    resume: bool = True,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """The whole experiment into `out`: runs.jsonl as it goes, then modularity.json, the
    plots and the report section, over the runs of this call's job list. A rerun resumes,
    and may add tasks, models, regimes or seeds; other settings need a fresh folder."""
    cfg = cfg or ModularityConfig()
    out = Path(out)
    dirs = [Path(d).resolve() for d in model_dirs]
    if not dirs:
        raise UserError("modularity needs at least one model directory (a pretrained checkpoint)")
    for d in dirs:
        load_config(d)  # a clear error for a folder that is not a checkpoint
        if not (d / "tokenizer.json").is_file():
            raise UserError(f"{d}: no tokenizer.json (needed to encode the task prompts)")
    # What every run's numbers depend on. The job list (tasks, models, regimes, seeds) is not
    # part of it, so a folder can be extended with more of them and keeps its finished runs.
    # Through JSON, so it compares equal to the setup.json an earlier call wrote.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in JOB_FIELDS}
    setup = json.loads(json.dumps({"settings": settings}))
    out.mkdir(parents=True, exist_ok=True)
    setup_path, runs_path = out / "setup.json", out / "runs.jsonl"
    if setup_path.exists() and read_json(setup_path) != setup:
        if not force:
            raise UserError(
                f"{out}: holds a modularity run with other settings "
                "(pass --force to start over there, or choose another --out)"
            )
        resume = False
    if not resume:
        runs_path.unlink(missing_ok=True)
    write_json_atomic(setup_path, setup)
    done = {
        (r["task"], r["model"], r["regime"], r["base_seed"]): r
        for r in (_read_runs(runs_path) if resume else [])
    }

    tasks = {t: get_compound_task(t, cfg.n_train, cfg.n_test, cfg.seed) for t in cfg.tasks}
    for files in cfg.task_files:
        task = load_compound_task(*files, seed=cfg.seed)
        if task.name in tasks:
            raise UserError(f"{files[0]}: a second compound task named {task.name!r}")
        tasks[task.name] = task
    jobs = [
        (t, d, reg, s)
        for t in tasks
        for d in dirs
        for reg in cfg.regimes
        for s in range(cfg.base_seeds)
    ]
    t0 = time.perf_counter()
    runs = []
    with runs_path.open("a", encoding="utf-8") as log:
        for task_name, d, regime, seed in tqdm(
            jobs, desc="modularity", unit="model", disable=not progress
        ):
            key = (task_name, str(d), regime, seed)
            if key in done:
                runs.append(done[key])
                continue
            run = _one_run(tasks[task_name], d, regime, seed, cfg)
            runs.append(run)
            log.write(json.dumps(run) + "\n")
            log.flush()
    summary = summarise(runs)
    results = {
        "schema_version": 1,
        "setup": setup | {"config": dataclasses.asdict(cfg), "models": [str(d) for d in dirs]},
        "runs": runs,
        "summary": summary,
        "consistency": consistency(summary),
        "findings": findings(summary),
        "forced_vs_emergent": forced_vs_emergent(runs, summary),
        "fer_validation": validate_on_planted(cfg.seed),
        "seconds": time.perf_counter() - t0,
    }
    write_json_atomic(out / RESULTS_FILE, results)
    plot_ablation_matrix(results, out / "ablation_matrix.png")
    write_report_section(results, out)
    return results


def _one_run(task: CompoundTask, model_dir: Path, regime: str, seed: int, cfg) -> dict:
    model_cfg, train_cfg = load_config(model_dir)
    kind, density = _kind(model_cfg, train_cfg)
    tokenizer = load_tokenizer(model_dir / "tokenizer.json")
    batches = {s: task.encode(tokenizer, s, model_cfg.n_ctx) for s in ("train", "test")}
    batches["sub"] = {
        f: {s: task.sub[f].encode(tokenizer, s, model_cfg.n_ctx) for s in ("train", "test")}
        for f in FACTORS
    }
    model = base_model(model_dir, train_cfg, regime, cfg.seed + seed, batches["train"], cfg)
    names = masked_layers(model, cfg.masks.layers)
    t0 = time.perf_counter()
    result = analyse_base(model, batches, cfg, names)
    tests = [batches["sub"][f]["test"] for f in FACTORS]
    result["fer"] = fer_measures(model, tests, names, seed=cfg.seed + seed)
    return {
        "task": task.name,
        "model": str(model_dir),
        "kind": kind,
        "density": density,
        "regime": regime,
        "base_seed": seed,
        **result,
        "seconds": time.perf_counter() - t0,
    }


# ---------- plots and the report section ----------


def _fmt_ci(ci: dict | None, digits: int = 2) -> str:
    if not ci:
        return "n/a"
    if ci["low"] is None:
        return f"{ci['mean']:+.{digits}f} (1 base model)"
    verdict = "" if ci["found"] else ", not found"
    return f"{ci['mean']:+.{digits}f} [{ci['low']:+.{digits}f}, {ci['high']:+.{digits}f}]{verdict}"


def plot_ablation_matrix(results: dict, path: Path) -> None:
    """Accuracy drop on each subroutine (columns) when each structure is removed (rows),
    one panel per task x structure, rows grouped by model and regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
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
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.2 * len(panels) + 2.5, 0.45 * 2 * len(groups) + 1.6),
        squeeze=False,
        layout="constrained",  # room for the long row labels and the colour bar
    )
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
    plt.close(fig)


def write_report_section(results: dict, out: Path) -> None:
    from .report import write_section

    fve = results["forced_vs_emergent"]
    summary = results["summary"]
    paragraphs = [
        "Do models grow a separate subnetwork per subroutine of a compound task, and how does "
        "that compare with the structure weight sparsity forces? Subnetwork metric: accuracy "
        "of the structure alone on its own subroutine minus on the other (> 0 = it does only "
        "its own job). Ablation metric: accuracy of the full model without it, own minus other "
        "(< 0 = removing it broke only its own job). Intervals are 95% t-intervals over base "
        "models; an effect whose interval includes 0 is reported as not found.",
    ]
    paragraphs += results["findings"]
    collapsed = sum(r["collapsed"] for r in summary)
    if collapsed:
        paragraphs.append(
            f"{collapsed} mask search(es) collapsed to an empty or full mask; they are left out "
            "of the means (see modularity.json)."
        )
    unmatched = {r["task"] for r in fve if not r["matched_accuracy"]}
    if unmatched:
        paragraphs.append(
            "Compound accuracy differs by more than 0.05 between the kinds of model on "
            f"{', '.join(sorted(unmatched))}: compare their structures with care."
        )
    v = results["fer_validation"]
    paragraphs.append(
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
    tables = [
        {
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
                for r in results["consistency"]
            ],
        },
        {
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
        },
        {
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
                "spread (sd)",
            ],
            "rows": [
                [
                    r["task"],
                    r["kind"],
                    r["regime"],
                    r["structure"],
                    r["factor"].upper(),
                    f"{r['usable']} ({r['collapsed']} collapsed, {r['unreachable']} unreachable)",
                    _fmt_ci(r["subnetwork"]),
                    _fmt_ci(r.get("ablation_zero")),
                    _fmt_ci(r["ablation_mean"]),
                    "n/a"
                    if r["spread"]["subnetwork"] is None
                    else f"{r['spread']['subnetwork']:.2f}",
                ]
                for r in summary
            ],
        },
        {
            "caption": "Same behaviour, different internals: per model (mean over base seeds) "
            "perturbation sensitivity (median behaviour change when 2% of weights get noise) "
            "and the sweep of its most important weight (roughness: 0 = straight line)",
            "columns": [
                "task",
                "model",
                "regime",
                "compound acc",
                "circuit nodes",
                "perturbation median",
                "sweep roughness",
                "sweep control",
            ],
            "rows": _fer_rows(results["runs"]),
        },
    ]
    write_section(
        out,
        "Forced vs emergent modularity",
        paragraphs,
        tables,
        [{"caption": "Accuracy drop when a structure is removed", "file": "ablation_matrix.png"}],
    )


def _fer_rows(runs: list[dict]) -> list[list]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["kind"], r["regime"]), []).append(r)

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.fmean(xs) if xs else None

    return [
        [
            task,
            kind,
            regime,
            mean([r["compound_accuracy"] for r in rs]),
            mean(
                [
                    m["nodes"]
                    for r in rs
                    for f in FACTORS
                    for m in r["nodes"][f]
                    if m["status"] == "ok"
                ]
            ),
            mean([r["fer"]["perturbation"]["median"] for r in rs]),
            mean([r["fer"]["sweep"]["roughness"] for r in rs]),
            mean([r["fer"]["sweep"]["control"] for r in rs]),
        ]
        for (task, kind, regime), rs in sorted(groups.items())
    ]
