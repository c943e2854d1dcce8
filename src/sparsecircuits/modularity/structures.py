"""One base model: weight subnetworks and node circuits per subroutine, their Lepori metrics,
overlap and stability, and the FER measures."""

from __future__ import annotations

import math
import random
import statistics
import time
from itertools import combinations, product
from pathlib import Path

import torch

from ..checkpoint import load_checked_tokenizer, load_config
from ..config import model_name
from ..errors import UserError
from ..fer import fer_measures
from ..nodes import ablation_hooks, compute_node_means, node_sites, parse_node
from ..prune import TargetUnreachable, TaskTrivial, find_circuit
from ..prune_methods import PruneConfig
from ..tasks import Task, TaskBatch, prompt_windows, task_accuracy
from ..tasks.compound import FACTORS, CompoundTask, compound_accuracy
from ..weightmask import (
    Ablation,
    continuous_sparsification,
    input_means,
    jaccard,
    kept_weights,
    masked_accuracy,
    masked_layers,
)
from .build import base_model
from .config import ModularityConfig


def _accuracy_profile(acc: dict[str, float], factor: str) -> dict:
    other = FACTORS[1 - FACTORS.index(factor)]
    return {"own": acc[factor], "other": acc[other], "metric": acc[factor] - acc[other]}


def _lepori(accuracy, keep, removed, subs, factor: str, modes: tuple[Ablation, ...]) -> dict:
    """Subnetwork metric (the structure alone, rest removed in the first mode) and ablation
    metric per mode (the structure removed), each on the test pairs of both subroutines.
    `accuracy(masks, batch, mode)` runs the model under masks."""
    test = {f: subs[f]["test"] for f in FACTORS}

    def profile(masks, mode):
        return _accuracy_profile({f: accuracy(masks, test[f], mode) for f in FACTORS}, factor)

    return {"subnetwork": profile(keep, modes[0])} | {
        f"ablation_{mode.value}": profile(removed, mode) for mode in modes
    }


def weight_structures(
    model, names, subs: dict[str, dict[str, TaskBatch]], means, cfg: ModularityConfig
):
    """Per subroutine: one mask per mask seed, with its size and Lepori metrics."""
    modules = dict(model.named_modules())
    total = sum(int((modules[n].weight != 0).sum()) for n in names)

    def accuracy(masks, batch, mode):
        return masked_accuracy(model, masks, batch, mode, means)

    out: dict[str, list[dict]] = {}
    kept: dict[str, list] = {}
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
                    # a model whose masked layers are all zero has no weight to keep
                    "kept_frac": n_kept / total if total else math.nan,
                    **_lepori(
                        accuracy, mask, removed, subs, factor, (Ablation.ZERO, Ablation.MEAN)
                    ),
                }
            )
            kept[factor].append(k)
        out[factor] = runs
    return out, kept, total


def _node_masks(model, circuit) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    masks = {s.hook: torch.zeros(s.width, device=device) for s in node_sites(model.cfg)}
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

    out: dict[str, list[dict]] = {}
    kept: dict[str, list] = {}
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
            except TaskTrivial:  # no node needed: as collapsed as a mask keeping none
                runs.append({"mask_seed": ms, "status": "empty", "nodes": 0})
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
                    **_lepori(accuracy, masks, removed, subs, factor, (Ablation.MEAN,)),
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
    node_means = {h: m.to(compound_test.tokens.device) for h, m in node_means.items()}
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


def shuffled_labels(task: CompoundTask, seed: int) -> dict[str, Task]:
    """The control that can fail: the A and B training pairs pooled, shuffled and dealt back
    at random, so each "subroutine" a mask is searched on is half A, half B. Tested on the
    true A and B pairs, its structures should show no selectivity; if they did, the real
    labels' selectivity could be an artefact of the pipeline rather than of the model."""
    pool = [p for f in FACTORS for p in task.sub[f].train]
    random.Random(seed).shuffle(pool)
    half = len(pool) // 2
    return {
        f: Task(f"{task.sub[f].name} (shuffled labels)", task.sub[f].description, part, [])
        for f, part in zip(FACTORS, (pool[:half], pool[half:]), strict=True)
    }


def one_run(task: CompoundTask, model_dir: Path, regime: str, seed: int, cfg, device="cpu") -> dict:
    """One base model of `regime` built from `model_dir` with `seed`, analysed on `device`."""
    model_cfg, train_cfg = load_config(model_dir)
    density = train_cfg.density if train_cfg is not None else 1.0
    tokenizer = load_checked_tokenizer(model_dir, model_cfg, train_cfg)
    if tokenizer is None:
        raise UserError(f"{model_dir}: no tokenizer.json to encode the task's prompts")
    n_ctx = model_cfg.n_ctx
    batches = {s: task.encode(tokenizer, s, n_ctx).to(device) for s in ("train", "test")}
    train_subs = shuffled_labels(task, seed) if regime == "shuffled" else task.sub
    batches["sub"] = {
        f: {
            "train": train_subs[f].encode(tokenizer, "train", n_ctx).to(device),
            "test": task.sub[f].encode(tokenizer, "test", n_ctx).to(device),
        }
        for f in FACTORS
    }
    model = base_model(model_dir, train_cfg, regime, cfg.seed + seed, batches["train"], cfg, device)
    names = masked_layers(model, cfg.masks.layers)
    t0 = time.perf_counter()
    result = analyse_base(model, batches, cfg, names)
    tests = [batches["sub"][f]["test"] for f in FACTORS]
    result["fer"] = fer_measures(model, tests, names, seed=cfg.seed + seed)
    return {
        "task": task.name,
        "model": str(model_dir),
        "kind": model_name(model_cfg, train_cfg),
        "density": density,
        "regime": regime,
        "base_seed": seed,  # pretrained: the fine-tuning data order; else the init
        "pretrain_seed": train_cfg.seed if train_cfg is not None else None,
        **result,
        "seconds": time.perf_counter() - t0,
    }
