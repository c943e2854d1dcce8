"""Running the study: train (or reuse) every model, check which tasks every model can do,
prune each eligible (model, task) over the k_coef grid, and run the controls.

Every finished model is cached under the token cache root keyed by its config (a second
study reuses it); every circuit is cached in the study folder keyed by what it depends on,
so a killed study resumes where it stopped.

    DIR/study.json                      the study's config (a different one is refused)
    DIR/circuits/<model>/<task>/        circuit.json + row.json + key.json
    DIR/results.json                    everything the report needs
    DIR/frontier.png                    held-out loss vs geometric-mean circuit edges
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import checkpoint_corpus, load, load_config, save_checkpoint
from ..circuit import Circuit
from ..circuit_metrics import CircuitMetrics
from ..config import param_count
from ..device import pick_device
from ..errors import UserError
from ..io import (
    claim_run_dir,
    file_digest,
    read_json,
    read_jsonl,
    staged_dir,
    write_json_atomic,
)
from ..model import SparseGPT
from ..nodes import cached_node_means
from ..prune import TargetUnreachable, encode_splits, find_circuit
from ..prune_methods import PruneConfig, empty_circuit_metrics, full_model_metrics
from ..report import SECTION_FILE
from ..sparsity import WeightSparsifier
from ..study_results import CircuitRow, EligibilityRow, ModelRow, StudyResults
from ..tasks import Pair, Task, get_task
from ..threads import in_processes
from ..train import train
from .answer import analyse
from .config import (
    ModelSpec,
    StudyConfig,
    growth,
    model_configs,
    model_dir,
    model_specs,
    task_label,
)
from .measures import frontier_tasks, reaches
from .summary import plot_frontier, write_summary

PRUNE_UNITS = 200  # a circuit search weighs about as much as this many training steps


# What a study writes into its folder: a study started over (--force) removes them, and
# every analysis section (DIR/*/section.json), so the report shows no other study's results.
OUTPUTS = ("circuits", "results.json", "frontier.png", "report.html", "summary.md")


def _claim(out: Path, cfg: StudyConfig, resume: bool, force: bool) -> str | None:
    """Make `out` this study's folder (io.claim_run_dir's rules), or, with `resume`, grow
    the study there when `cfg` only adds models or tasks to it (a ladder's next rung):
    what it holds is kept, and only what is new is trained and searched. Returns what a
    growth added."""
    marker = out / "study.json"
    added = None
    if resume and marker.is_file():
        saved = StudyConfig.completed(read_json(marker), str(marker))
        added = growth(saved, cfg)
        if added:
            write_json_atomic(marker, dataclasses.asdict(cfg))
    sections = tuple(p.parent.name for p in out.glob(f"*/{SECTION_FILE}"))
    claim_run_dir(
        out,
        dataclasses.asdict(cfg),
        resume,
        force,
        marker="study.json",
        kind="study",
        clear=OUTPUTS + ("activations", "modularity") + sections,
        saved_as=lambda saved: StudyConfig.completed(saved, str(out / "study.json")),
    )
    return added


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str = "cpu",
    jobs: int = 1,
) -> StudyResults:
    """Train, prune, analyse; returns the results (also written to DIR/results.json).
    `device` (cpu, cuda, auto) is where models train and circuits are searched; results do
    not depend on it beyond floating-point noise, so it is not part of any cache key.
    `jobs` > 1 trains that many models (and then searches that many circuits) at a time,
    each in its own process on one thread: the study's models are small enough that two
    one-thread jobs get more done than one two-thread job (benchmarks/bench_train.py times
    two training jobs together against one after the other)."""
    out = Path(out)
    where = pick_device(device)  # checked before the folder is claimed
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    added = _claim(out, cfg, resume, force)
    if added and progress:
        print(f"{out}: the study grows ({added}); what it holds is kept")
    specs = model_specs(cfg)
    steps = {s.id: model_configs(cfg, s)[1].steps for s in specs}
    total = sum(steps.values()) + PRUNE_UNITS * len(specs) * len(cfg.tasks)
    # one unit a training step; a circuit search counts as PRUNE_UNITS of them
    bar = tqdm(total=total, desc="study", unit=" step", disable=not progress, dynamic_ncols=True)

    t0 = time.perf_counter()
    todo = [s for s in specs if not (model_dir(cfg, s) / "done.json").exists()]
    if progress and todo:
        for line in training_costs(cfg, todo):
            tqdm.write(line)
    bar.update(sum(steps[s.id] for s in specs if s not in todo))
    if jobs == 1:
        for spec in todo:
            bar.set_postfix_str(f"train {spec.id}")
            start = bar.n
            train_model(cfg, spec, where, lambda d, start=start: bar.update(start + d - bar.n))
            bar.update(start + steps[spec.id] - bar.n)
    else:
        for _, spec in in_processes(jobs, train_model, [(cfg, s, where) for s in todo]):
            bar.set_postfix_str(f"trained {spec.id}")
            bar.update(steps[spec.id])
    models = [model_row(spec, model_dir(cfg, spec), where) for spec in specs]

    t1 = time.perf_counter()
    eligibility = [row for spec in specs for row in full_model_rows(cfg, spec, where)]
    frontier = set(frontier_tasks(cfg, eligibility))
    work = [
        (cfg, spec, task, task in frontier, eligibility, out, where)
        for spec in specs
        for task in cfg.tasks
    ]
    if jobs == 1:
        circuits = []
        for args in work:
            bar.set_postfix_str(f"prune {args[1].id} {args[2]}")
            circuits.append(_circuit(*args))
            bar.update(PRUNE_UNITS)
    else:
        rows = {}
        for i, row in in_processes(jobs, _circuit, work):
            bar.set_postfix_str(f"pruned {row.model} {row.task}")
            rows[i] = row
            bar.update(PRUNE_UNITS)
        circuits = [rows[i] for i in range(len(work))]
    bar.close()
    results = analyse(cfg, models, circuits, eligibility)
    # this run's wall time: cached models and circuits cost (almost) nothing
    results.timing = {
        "train_seconds": round(t1 - t0, 1),
        "prune_seconds": round(time.perf_counter() - t1, 1),
    }
    results.save(out / "results.json")
    plot_frontier(results, out / "frontier.png")
    write_summary(out)
    return results


def training_costs(cfg: StudyConfig, specs: list[ModelSpec]) -> list[str]:
    """What training `specs` will cost, before it starts: per model its parameters and
    training compute (~6 FLOP per matmul parameter per token, dense matmuls as the step
    runs them; the embedding and the bigram table are lookups, left out), and the total;
    a ladder's wide rung shows here before it takes hours."""
    lines, total = [], 0.0
    for spec in specs:
        m, t = model_configs(cfg, spec)
        lookups = m.vocab_size * m.d_model + m.vocab_size**2 * m.bigram_table
        flops = 6 * (param_count(m) - lookups) * t.steps * t.batch_size * m.n_ctx
        total += flops
        lines.append(
            f"to train {spec.id}: {param_count(m):,} parameters, ~{flops / 1e12:.1f} TFLOP"
        )
    lines.append(f"to train: {len(specs)} models, ~{total / 1e12:.1f} TFLOP in all")
    return lines


def train_model(cfg: StudyConfig, spec: ModelSpec, device, on_step=None) -> ModelSpec:
    """Train one model of the family into its cache folder (resuming a killed run)."""
    mdir = model_dir(cfg, spec)
    m, t = model_configs(cfg, spec)
    train(m, t, mdir, resume=True, device=device, progress=False, on_step=on_step)
    write_json_atomic(mdir / "done.json", {"id": spec.id})
    return spec


@torch.no_grad()
def heldout_window_losses(mdir: Path, model, tok, batches: int, batch_size: int) -> torch.Tensor:
    """Next-token loss of every held-out window training evaluates (the same windows for
    every model), one value per window; their mean is the held-out loss."""
    corpus = checkpoint_corpus(mdir, model, tok)
    device = next(model.parameters()).device
    per_window = []
    for w in corpus.eval_batches(batches, batch_size, model.cfg.n_ctx):
        w = w.to(device)
        logits = model(w)[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="none")
        per_window.append(loss.view(len(w), -1).mean(1).float().cpu())
    return torch.cat(per_window)


def _heldout_noise(mdir: Path, model, tok, batches: int, batch_size: int) -> dict:
    """The held-out loss's standard error over its windows, the eval noise the analysis uses
    as its tolerance. Taken over windows, not over the eval batches' means: with eight
    batches and heavy-tailed window losses, the spread of batch means swung 2x with the batch
    size on the same models (0.02 at batch 32 and 128, 0.04 at 64)."""
    losses = heldout_window_losses(mdir, model, tok, batches, batch_size)
    std = float(losses.std()) if len(losses) > 1 else None
    return {
        "heldout_loss_windows": len(losses),
        "heldout_loss_std": std,
        "heldout_loss_se": std / len(losses) ** 0.5 if std is not None else None,
    }


def model_row(spec: ModelSpec, mdir: Path, device) -> ModelRow:
    model, tok = load(mdir, device=device)
    _, tcfg = load_config(mdir)
    if tcfg is None:
        raise UserError(f"{mdir}: no training settings in config.json (not a study's model)")
    metrics = read_jsonl(mdir / "metrics.jsonl")
    heldout = [r["heldout_loss"] for r in metrics if "heldout_loss" in r]
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    return ModelRow(
        **dataclasses.asdict(spec),
        n_layer=model.cfg.n_layer,
        dir=str(mdir),
        total_params=model.num_params(),
        nonzero_params=model.num_params(nonzero=True),
        matrix_nonzero=int(sum((p != 0).sum() for p in matrices)),
        heldout_loss=heldout[-1] if heldout else None,
        **_heldout_noise(mdir, model, tok, tcfg.eval_batches, tcfg.batch_size),
    )


def prune_config(cfg: StudyConfig, task: str) -> PruneConfig:
    """The settings of one of the study's circuit searches (each over its grid,
    `cfg.k_coefs` x `cfg.mask_lrs`). The prompt pairs and the search's own randomness are
    drawn from `cfg.pair_seed` and `cfg.search_seed`, set apart from the pretraining seed,
    so every model of the family is measured on the same pairs."""
    return PruneConfig(**{**cfg.prune, "target_loss": cfg.target(task), "seed": cfg.search_seed})


def study_task(cfg: StudyConfig, name: str) -> Task:
    """A task as every model of the study sees it: the same train, selection and test
    pairs for all (drawn from `cfg.pair_seed`)."""
    p = prune_config(cfg, name)
    return get_task(name, p.n_train, p.n_test, cfg.pair_seed, p.n_select)


def full_model_rows(cfg: StudyConfig, spec: ModelSpec, device) -> list[EligibilityRow]:
    """Per task, the full model on held-out test pairs (calibrated on train pairs) against
    the task's target and the accuracy bar, and the empty circuit (every node mean-ablated)
    against the target: which tasks this model lets into the frontier. A task the empty
    circuit does (`trivial`) has no circuit to measure."""
    mdir = model_dir(cfg, spec)
    model, tok = load(mdir, device=device)
    means = cached_node_means(mdir, model, tok, progress=False)
    rows = []
    for name in cfg.tasks:
        pcfg = prune_config(cfg, name)
        task = study_task(cfg, name)
        train_b, test_b, _ = encode_splits(task, tok, model.cfg.n_ctx, device)
        m = full_model_metrics(model, train_b, test_b, pcfg.calib_steps)
        empty = empty_circuit_metrics(model, train_b, test_b, means, pcfg.calib_steps)
        target = cfg.target(name)
        rows.append(
            EligibilityRow(
                model=spec.id,
                task=name,
                target_loss=target,
                **m,
                reaches=reaches(m, target, cfg.min_accuracy),
                empty_loss_calibrated=empty["loss_calibrated"],
                empty_train_loss_calibrated=empty["train_loss_calibrated"],
                trivial=pcfg.refuse_trivial and empty["train_loss_calibrated"] <= target,
            )
        )
    return rows


def _swapped(p: Pair) -> Pair:
    # replace keeps the pair's other fields (an unpaired example stays one)
    return dataclasses.replace(p, answer_a=p.answer_b, answer_b=p.answer_a)


def nonsense_task(task: Task, seed: int, rate: float = 0.5) -> Task:
    """The same prompts with each pair's answers swapped with probability `rate`: at 0.5,
    labels with no relation to the prompt, which a mask should not be able to make a small
    circuit for (at 0 it is the task itself: the case that shows the control can pass)."""
    rng = random.Random(seed)
    return task.map_pairs(
        lambda pairs: [_swapped(p) if rng.random() < rate else p for p in pairs],
        f"{task.name} (nonsense)",
    )


def inverted_task(task: Task) -> Task:
    """Every pair's answers swapped: a consistent rule, readable from the same place of the
    prompt, that the model was never trained on. A mask that can exploit any signal the
    model carries (e.g. by ablating the nodes that push the right answer) could fit it; a
    model trained on the inverted rule does it outright."""
    return task.map_pairs(lambda pairs: [_swapped(p) for p in pairs], f"{task.name} (inverted)")


def random_init_dir(cfg: StudyConfig, spec: ModelSpec) -> Path:
    """A model of the spec's shape and density that never trained (the tokenizer and corpus
    of the trained one, so node means and prompts are comparable), cached beside it."""
    trained = model_dir(cfg, spec)
    out = trained.with_name(trained.name + "-init")
    if (out / "model.safetensors").exists():
        return out
    m, t = model_configs(cfg, spec)
    torch.manual_seed(t.seed)
    model = SparseGPT(m)
    # anneal_frac 0: the target density from the start, as a trained model ends
    WeightSparsifier(model, dataclasses.replace(t, anneal_frac=0.0)).apply(0)
    with staged_dir(out) as tmp:
        save_checkpoint(tmp, model, load(trained)[1], t)
    return out


def _load(mdir: Path, device):
    """A study model and its tokenizer (every model the study trained has one)."""
    model, tok = load(mdir, device=device)
    if tok is None:
        raise UserError(f"{mdir}: no tokenizer.json (not a study's model)")
    return model, tok


def _search(
    cfg: StudyConfig, mdir: Path, task: Task, pcfg: PruneConfig, device, examples=False, **kw
):
    """One circuit search on a model folder over the study's grid -> the Circuit (raises
    TargetUnreachable); `examples` adds the viewer's example prompts."""
    model, tok = _load(mdir, device)
    train_b, test_b, select_b = encode_splits(task, tok, model.cfg.n_ctx, device)
    means = cached_node_means(mdir, model, tok, progress=False)
    text = (lambda i: tok.decode([i])) if examples else None
    c = find_circuit(
        model,
        train_b,
        test_b,
        means,
        pcfg,
        False,
        task.name,
        str(mdir),
        token_text=text,
        k_coefs=cfg.k_coefs,
        mask_lrs=cfg.mask_lrs,
        select_b=select_b,
        **kw,
    )
    c.model_dir = str(mdir)
    return c


def _control(cfg: StudyConfig, mdir: Path, task: Task, pcfg: PruneConfig, device) -> dict:
    """A control pruned as the real circuit is: the same grid, splits and target; the
    full model need not reach the target (that is the point of the control). Its best
    circuit's size and losses are kept whether or not it validates."""
    light = dataclasses.replace(pcfg, random_draws=0, effect_nodes=0, example_pairs=0)
    try:
        c = _search(cfg, mdir, task, light, device, require_full_model=False)
    except TargetUnreachable as e:
        return {"status": "unreachable", "n_edges": None, "message": str(e)}
    return control_record(c)


def control_record(c: Circuit) -> dict:
    """What a control keeps of its best circuit: status, size, losses, chosen setting."""
    assert isinstance(c.metrics, CircuitMetrics)  # find_circuit types the metrics it measures
    v = c.metrics.validation
    return {
        "status": v.status,
        "n_edges": c.n_edges,
        "n_nodes": c.n_nodes,
        "select_loss_calibrated": v.loss_calibrated,
        "test_loss_calibrated": v.test_loss_calibrated,
        "full_test_loss_calibrated": c.metrics.full.loss_calibrated,
        "k_coef": c.prune_config["k_coef"],
        "mask_lr": c.prune_config["mask_lr"],
    }


def _content_hash(task: str) -> str | None:
    """The hash of a user task file's bytes (None for a built-in task)."""
    return file_digest(task) if task.endswith(".jsonl") else None


def _why_not_searched(cfg: StudyConfig, task: str, eligibility: list[EligibilityRow]) -> dict:
    """The status and message of a circuit the study does not search: some full model
    misses the task (`not_eligible`), or the empty circuit already does it (`trivial`)."""
    target = cfg.target(task)
    rows = [r for r in eligibility if r.task == task]
    missed = [
        f"{r.model} (test loss {r.loss_calibrated:.3f}, accuracy {r.accuracy_calibrated:.2f})"
        for r in rows
        if not r.reaches
    ]
    if missed:
        return {
            "status": "not_eligible",
            "message": f"not every full model reaches target {target} with test accuracy >= "
            f"{cfg.min_accuracy}: {', '.join(missed)}",
        }
    trivial = [
        f"{r.model} (train loss {r.empty_train_loss_calibrated:.3f})" for r in rows if r.trivial
    ]
    return {
        "status": "trivial",
        "message": f"the empty circuit (every node mean-ablated) reaches target {target}: "
        f"{', '.join(trivial)}; the task needs no node",
    }


def _circuit(
    cfg: StudyConfig,
    spec: ModelSpec,
    task_name: str,
    eligible: bool,
    eligibility: list[EligibilityRow],
    out: Path,
    device,
) -> CircuitRow:
    own = next(r for r in eligibility if r.model == spec.id and r.task == task_name)
    row = CircuitRow(
        model=spec.id,
        task=task_name,
        in_frontier=eligible,
        status="ok",
        target_loss=cfg.target(task_name),
    )
    outside = cfg.outside_frontier and own.reaches and not own.trivial
    if not eligible and not outside:
        return dataclasses.replace(row, **_why_not_searched(cfg, task_name, eligibility))
    cdir = out / "circuits" / spec.id / task_label(task_name)
    mdir = model_dir(cfg, spec)
    pcfg = prune_config(cfg, task_name)
    key = {
        "model": str(mdir),
        "weights": (mdir / "model.safetensors").stat().st_mtime_ns,
        "task": task_name,
        # a task file is keyed by what it holds: an edited file is a different task
        "task_content": _content_hash(task_name),
        "prune": dataclasses.asdict(pcfg),
        "k_coefs": cfg.k_coefs,
        "mask_lrs": cfg.mask_lrs,
        "pair_seed": cfg.pair_seed,
        "controls": cfg.controls,
    }
    if (cdir / "key.json").exists() and read_json(cdir / "key.json") == key:
        cached = CircuitRow.from_json(read_json(cdir / "row.json"), str(cdir / "row.json"))
        return dataclasses.replace(cached, in_frontier=eligible)  # the family decides
    task = study_task(cfg, task_name)
    try:
        c = _search(cfg, mdir, task, pcfg, device, examples=True)
        c.save(cdir / "circuit.json")
        assert isinstance(c.metrics, CircuitMetrics)  # find_circuit types the metrics it measures
        v = c.metrics.validation
        row = dataclasses.replace(
            row,
            status=v.status,
            message=None
            if v.status == "ok"
            else f"{v.status}: {v.split} loss {v.loss_calibrated:.3f} against the "
            f"limit {v.limit:.3f} (target + 2 s.e.), {c.n_nodes} of {c.n_nodes_total} "
            "nodes kept",
            n_nodes=c.n_nodes,
            n_edges=c.n_edges,
            metrics=c.metrics.to_json(),  # results.json holds the JSON circuit.json holds
            path=str((cdir / "circuit.json").relative_to(out)),
            k_coef=c.prune_config["k_coef"],
            mask_lr=c.prune_config["mask_lr"],
        )
        if cfg.controls:
            controls = {
                "nonsense": _control(cfg, mdir, nonsense_task(task, spec.seed), pcfg, device),
                "inverted": _control(cfg, mdir, inverted_task(task), pcfg, device),
            }
            if spec.seed == 0:  # one seed is enough for a model that never learned
                controls["random_init"] = _control(
                    cfg, random_init_dir(cfg, spec), task, pcfg, device
                )
            controls["random_circuits"] = c.metrics.random.to_json()
            row.controls = controls
    except TargetUnreachable as e:
        row = dataclasses.replace(row, status="unreachable", message=str(e))
    except UserError as e:
        row = dataclasses.replace(row, status="error", message=str(e))
    # The result is written before the key, so a key on disk always has its result.
    write_json_atomic(cdir / "row.json", row.to_json())
    write_json_atomic(cdir / "key.json", key)
    return row
