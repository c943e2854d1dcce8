"""Measuring: hook activations per input, one checkpoint (conditions, difficulty, snapshots),
groups of seeds, and the whole run into a folder."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import checkpoint_corpus, load, load_config
from ..config import model_name, seedless_key
from ..device import pick_device
from ..errors import UserError
from ..io import claim_run_dir
from ..study_results import StudyResults
from ..tasks import task_logit_diff
from . import metrics
from .conditions import CONDITIONS, Inputs, condition_windows, difficulty_levels, fitting_batch
from .config import FILES, ActivationsConfig
from .intervals import (
    bootstrap_ci,
    bootstrap_diff,
    combine_seeds,
    holm_verdicts,
    length_controlled_diff,
    verdict,
)
from .metrics import sparsity_metrics
from .plots import plot_by_layer, plot_difficulty, plot_training, write_report_section
from .results import ActivationResults

# --- measuring -------------------------------------------------------------------------

# Hooks whose activations are not one vector per position (attention scores and patterns).
_NOT_VECTORS = ("hook_attn_scores", "hook_pattern", "hook_sink")


def resolve_hooks(model, patterns: list[str], where) -> list[str]:
    """Hook names matching any pattern, in model order. A pattern with * ? or [ is a glob on
    the full name; any other pattern matches names containing it (`resid_post`, `mlp.hook_post`)."""
    names = [n for n in model.hook_dict if not n.endswith(_NOT_VECTORS)]
    chosen = set()
    for p in patterns:
        glob = p if any(c in p for c in "*?[") else f"*{p}*"
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise UserError(
                f"{where}: no per-position hook matches {p!r} (hooks: {', '.join(names[:6])}, ...)"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


@torch.no_grad()
def per_input(model, tokens: torch.Tensor, hooks: list[str], last_pos=None):
    """(logits, {hook: {metric: {"last": [n], "all_positions": [n]}}}): every metric for each
    input at its last token (`last_pos`, default the final position) and averaged over its
    positions up to there."""
    # the model may sit on a GPU; the statistics are small and run on the CPU
    logits, cache = model.run_with_cache(
        tokens.to(next(model.parameters()).device), names_filter=hooks
    )
    logits, cache = logits.cpu(), {k: v.cpu() for k, v in cache.items()}
    n, t = tokens.shape
    last = torch.full((n,), t - 1) if last_pos is None else last_pos
    valid = torch.arange(t)[None, :] <= last[:, None]
    out = {}
    for hook in hooks:
        h = cache[hook].flatten(2) if cache[hook].dim() > 3 else cache[hook]
        out[hook] = {
            name: {
                "last": v[torch.arange(n), last],
                "all_positions": torch.where(valid, v, torch.nan).nanmean(1),
            }
            for name, v in sparsity_metrics(h).items()
        }
    return logits, out


def _map(fn, *trees):
    """fn applied leaf-wise to {hook: {metric: {position: leaf}}} trees of the same shape."""
    return {
        hook: {
            m: {p: fn(m, *(t[hook][m][p] for t in trees)) for p in trees[0][hook][m]}
            for m in trees[0][hook]
        }
        for hook in trees[0]
    }


def summarise(values: dict) -> dict:
    """{hook: {metric: {position: (mean, low, high)}}}, intervals over inputs."""
    return _map(lambda _m, v: bootstrap_ci(v), values)


def _effect(metric: str, d, lo, hi, p) -> dict:
    return {"diff": d, "low": lo, "high": hi, "p": p, "verdict": verdict(metric, lo, hi)}


def effects(values: dict, baseline: dict) -> dict:
    """{hook: {metric: {position: {diff, low, high, p, verdict}}}} of values - baseline
    (verdicts uncorrected)."""
    return _map(lambda metric, b, a: _effect(metric, *bootstrap_diff(b, a)), values, baseline)


def input_loss(logits: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """[n] mean next-token loss of each input over its real tokens (NaN for one token)."""
    n, t = inputs.tokens.shape
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), inputs.tokens[:, 1:].flatten(), reduction="none"
    ).view(n, t - 1)
    real = torch.arange(t - 1)[None, :] < inputs.last_pos[:, None]
    return torch.where(real, nll.double(), torch.nan).nanmean(1)


# --- one checkpoint --------------------------------------------------------------------


def snapshots(model_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the snapshots training kept, oldest first."""
    found = []
    for d in (model_dir / "checkpoints").glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    return sorted(found)


def familiarity(model, windows: dict[str, Inputs], hooks: list[str]) -> tuple[dict, dict, dict]:
    """(summaries, effects vs training code, loss) of every condition; loss: per condition
    the mean next-token loss and its degradation (condition - training code), each with an
    interval over inputs: how well the model copes where its activations change."""
    vals, losses = {}, {}
    for name, w in windows.items():
        logits, vals[name] = per_input(model, w.tokens, hooks, w.last_pos)
        losses[name] = input_loss(logits, w)
    loss = {
        "conditions": {name: bootstrap_ci(v) for name, v in losses.items()},
        "degradation": {
            name: _effect("loss", *bootstrap_diff(v, losses["train"]))
            for name, v in losses.items()
            if name != "train"
        },
    }
    return (
        {name: summarise(v) for name, v in vals.items()},
        {name: effects(v, vals["train"]) for name, v in vals.items() if name != "train"},
        loss,
    )


def describe_config(model_dir) -> tuple[str, str, str]:
    """(kind, label, config without the seed) of a checkpoint: models that differ only in
    seed get the same config and so form one group."""
    m, t = load_config(model_dir)
    kind = "imported" if t is None else "dense" if t.density >= 1 else "sparse"
    return kind, model_name(m, t), seedless_key(m, t)


def analyse_checkpoint(model_dir, cfg: ActivationsConfig | None = None, device="cpu") -> dict:
    """Every condition x hook x metric for one checkpoint on its own corpus, difficulty
    levels with accuracy, and the same on every training snapshot."""
    cfg = cfg or ActivationsConfig()
    model_dir = Path(model_dir)
    model, tok = load(model_dir, device=device)
    if tok is None:
        raise UserError(f"{model_dir}: activation analysis needs the checkpoint's tokenizer.json")
    hooks = resolve_hooks(model, cfg.hooks, model_dir)
    data = checkpoint_corpus(model_dir, model, tok)
    windows = condition_windows(data, cfg.n, model.cfg.n_ctx, cfg.seed)
    summaries, effs, loss = familiarity(model, windows, hooks)
    kind, label, _ = describe_config(model_dir)
    _, train_cfg = load_config(model_dir)
    out = {
        "model_dir": str(model_dir),
        "kind": kind,
        "label": label,
        "d_model": model.cfg.d_model,
        "seed": train_cfg.seed if train_cfg else None,
        "n_inputs": cfg.n,
        "hooks": hooks,
        "conditions": summaries,
        "effects": effs,
        "loss": loss,
        "skipped_conditions": [c for c in CONDITIONS if c not in windows],
    }
    if cfg.difficulty:
        out["difficulty"] = measure_difficulty(
            model, tok, difficulty_levels(cfg, data, model.cfg.n_ctx), hooks
        )
    if cfg.training:
        out["training"] = _over_training(model_dir, windows, hooks, train_cfg, model)
    return out


def _over_training(model_dir: Path, windows: dict, hooks: list[str], train_cfg, final) -> dict:
    """The familiarity measurement on every snapshot (and the final weights, when training
    ended between snapshots), on the same windows."""
    steps = []
    snaps = snapshots(model_dir)
    for step, d in snaps:
        model, _ = load(d, device=next(final.parameters()).device)
        if model.cfg != final.cfg:
            raise UserError(f"{d / 'config.json'}: snapshot does not match {model_dir}")
        steps.append((step, *familiarity(model, windows, hooks)[:2]))
    if snaps and train_cfg and train_cfg.steps not in {s for s, _ in snaps}:
        steps.append((train_cfg.steps, *familiarity(final, windows, hooks)[:2]))
    return {
        "steps": [s for s, _, _ in steps],
        "conditions": [c for _, c, _ in steps],
        "effects": [e for _, _, e in steps],
    }


# --- groups of seeds -------------------------------------------------------------------


def _stats(leaf) -> tuple:
    """(mean, low, high, p) of an effect dict, or a (mean, low, high) summary as it is."""
    if isinstance(leaf, dict):
        return (leaf["diff"], leaf["low"], leaf["high"], leaf.get("p", math.nan))
    return tuple(leaf)


def _group_tree(trees: list[dict], with_verdict: bool = False) -> dict:
    """Leaf-wise combine_seeds over the seeds' trees (leaves (mean, lo, hi) or effects)."""

    def one(metric, *leaves):
        stats = [_stats(x) for x in leaves]
        c = combine_seeds(stats)
        if with_verdict:
            c["verdict"] = verdict(metric, c["low"], c["high"])
        return c

    return _map(one, *trees)


def _group_difficulty(models: list[dict]) -> dict:
    out = {}
    for axis in models[0].get("difficulty", {}):
        per = [m["difficulty"][axis] for m in models]
        common = set.intersection(*({lv["level"] for lv in p["levels"]} for p in per))
        levels = []
        for row in per[0]["levels"]:
            if row["level"] in common:
                rows = [next(x for x in p["levels"] if x["level"] == row["level"]) for p in per]
                levels.append(
                    {
                        "level": row["level"],
                        "label": row["label"],
                        "tokens": combine_seeds([r["tokens"] for r in rows]),
                        "accuracy": combine_seeds([r["accuracy"] for r in rows]),
                        "metrics": _group_tree([r["metrics"] for r in rows]),
                    }
                )
        res: dict[str, Any] = {"levels": levels}
        if all("hardest_minus_easiest" in p for p in per):
            for key in ("hardest_minus_easiest", "length_controlled"):
                res[key] = _group_tree([p[key] for p in per], True)
            acc = combine_seeds([_stats(p["accuracy_hardest_minus_easiest"]) for p in per])
            res["accuracy_hardest_minus_easiest"] = acc | {
                "verdict": verdict("accuracy", acc["low"], acc["high"])
            }
        out[axis] = res
    return out


def _group_training(models: list[dict], hook: str, metric: str) -> dict | None:
    found = [m.get("training") for m in models]
    runs = [r for r in found if r and r["steps"]]
    if len(runs) < len(found):
        return None
    steps = sorted(set.intersection(*(set(r["steps"]) for r in runs)))
    pick = [[r["steps"].index(s) for s in steps] for r in runs]
    conditions = [
        {
            c: _group_tree([r["conditions"][i[k]][c] for r, i in zip(runs, pick, strict=True)])
            for c in runs[0]["conditions"][0]
        }
        for k in range(len(steps))
    ]
    effs = [
        {
            c: _group_tree([r["effects"][i[k]][c] for r, i in zip(runs, pick, strict=True)], True)
            for c in runs[0]["effects"][0]
        }
        for k in range(len(steps))
    ]
    emergence = {}
    for c in effs[0] if effs else {}:
        vs = [e[c][hook][metric]["last"]["verdict"] for e in effs]
        # the first snapshot from which the unfamiliar input stays sparser to the end
        at = next(
            (steps[i] for i in range(len(vs)) if all(v == "found: sparser" for v in vs[i:])), None
        )
        emergence[c] = {"verdicts": vs, "sparser_from_step": at}
    return {"steps": steps, "conditions": conditions, "effects": effs, "emergence": emergence}


def group_results(models: list[dict], keys: list[str], cfg: ActivationsConfig) -> list[dict]:
    """Models of the same config (all but the seed) as one group, dense groups first."""
    by_key: dict[str, list[dict]] = {}
    for m, key in zip(models, keys, strict=True):
        by_key.setdefault(key, []).append(m)
    groups = []
    for members in by_key.values():
        hook = members[0]["hooks"][-1]
        groups.append(
            {
                "label": members[0]["label"],
                "kind": members[0]["kind"],
                "d_model": members[0].get("d_model"),
                "model_dirs": [m["model_dir"] for m in members],
                "seeds": [m["seed"] for m in members],
                "headline": {"hook": hook, "metric": cfg.metric, "position": "last"},
                "conditions": {
                    c: _group_tree([m["conditions"][c] for m in members])
                    for c in members[0]["conditions"]
                },
                "effects": {
                    c: _group_tree([m["effects"][c] for m in members], True)
                    for c in members[0]["effects"]
                },
                "difficulty": _group_difficulty(members),
                "training": _group_training(members, hook, cfg.metric),
                "loss": {
                    "conditions": {
                        c: combine_seeds([m["loss"]["conditions"][c] for m in members])
                        for c in members[0]["loss"]["conditions"]
                    },
                    "degradation": {
                        c: combine_seeds([_stats(m["loss"]["degradation"][c]) for m in members])
                        for c in members[0]["loss"]["degradation"]
                    },
                },
            }
        )
        groups[-1]["tests"] = headline_tests(groups[-1])
    return sorted(groups, key=lambda g: (g["kind"] != "dense", g["label"]))


def headline_tests(group: dict) -> list[dict]:
    """The group's headline comparisons (metric at the last token of the headline hook:
    every condition - training code, and hardest - easiest per difficulty axis with prompt
    length regressed out; on the context-length axis length is the difficulty, so raw), with
    Holm-corrected verdicts over them (intervals.holm_verdicts)."""
    hook, metric = group["headline"]["hook"], group["headline"]["metric"]
    rows = [
        {"comparison": f"{c} - train", **e[hook][metric]["last"]}
        for c, e in group["effects"].items()
    ]
    for axis, res in group["difficulty"].items():
        key = "hardest_minus_easiest" if axis == "context_length" else "length_controlled"
        if key in res:
            how = "raw" if key == "hardest_minus_easiest" else "length-controlled"
            rows.append(
                {
                    "comparison": f"{axis}: hardest - easiest ({how})",
                    **res[key][hook][metric]["last"],
                }
            )
    return holm_verdicts(metric, rows)


def _sum_intervals(a: dict, b: dict, sign: int) -> dict:
    """a + sign * b with a normal-approximation interval (half-widths in quadrature)."""
    half = math.hypot((a["high"] - a["low"]) / 2, (b["high"] - b["low"]) / 2)
    mean = a["mean"] + sign * b["mean"]
    return {"mean": mean, "low": mean - half, "high": mean + half}


def robustness(groups: list[dict]) -> list[dict]:
    """Per unfamiliar condition and group: held-out loss degradation (condition - training
    code) beside the activation effect on the same inputs, and each sparse group minus the
    dense group of its width (none at a width without one): does the weight-sparse model
    degrade less than a dense model of the same shape?"""
    rows = []
    for g in groups:
        dense = next(
            (d for d in groups if d["kind"] == "dense" and d.get("d_model") == g.get("d_model")),
            None,
        )
        hook, metric = g["headline"]["hook"], g["headline"]["metric"]
        for c, deg in g["loss"]["degradation"].items():
            row = {
                "group": g["label"],
                "condition": c,
                "loss_degradation": deg,
                "activation_effect": g["effects"][c][hook][metric]["last"],
            }
            if g["kind"] == "sparse" and dense is not None:
                row["minus_dense"] = _sum_intervals(deg, dense["loss"]["degradation"][c], -1)
            rows.append(row)
    return rows


# --- running ---------------------------------------------------------------------------


def run_activations(
    model_dirs: list,
    out,
    cfg: ActivationsConfig | None = None,
    device: str | torch.device = "cpu",
) -> ActivationResults:
    """Analyse every checkpoint, group seeds, write activations.json, the plots and a
    report section into `out`. `device`: where the models run (statistics stay on the CPU)."""
    cfg = cfg or ActivationsConfig()
    device = pick_device(device)
    out = Path(out)
    # Before the analysis, so a wrong --out costs nothing; an earlier analysis there is
    # replaced (its results are recomputed whole), a folder of anything else is refused.
    claim_run_dir(out, None, True, None, marker=FILES["json"], kind="sparsity analysis")
    models = [analyse_checkpoint(d, cfg, device) for d in model_dirs]
    keys = [describe_config(d)[2] for d in model_dirs]
    groups = group_results(models, keys, cfg)
    results = ActivationResults(
        metric_definitions=metrics.__doc__,
        config=asdict(cfg),
        groups=groups,
        models=models,
        robustness=robustness(groups),
    )
    results.save(out / FILES["json"])
    results = ActivationResults.from_json(results.to_json())  # plots read what the file holds
    plot_by_layer(results, out / FILES["layers"], cfg.metric)
    images = [("layers", "metric by layer per input condition")]
    if any(g["training"] for g in results.groups):
        plot_training(results, out / FILES["training"], cfg.metric)
        images.append(("training", "metric over training, familiar vs unfamiliar"))
    if any(g["difficulty"] for g in results.groups):
        plot_difficulty(results, out / FILES["difficulty"], cfg.metric)
        images.append(("difficulty", "metric and accuracy by difficulty level"))
    write_report_section(results, out, images)
    return results


def run_study_activations(
    study_dir, out=None, cfg: ActivationsConfig | None = None, device: str = "cpu"
):
    """The analysis on a study's models (every kind and seed), into DIR/activations by
    default, its report section beside it; rebuilding the study's report is the caller's
    (report.build_report), as for every analysis."""
    study_dir = Path(study_dir)
    rows = StudyResults.of_study(study_dir).models
    if not rows:
        raise UserError(f"{study_dir / 'results.json'}: lists no models")
    dirs = [StudyResults.model_path(study_dir, r) for r in rows]
    results = run_activations(dirs, Path(out) if out else study_dir / "activations", cfg, device)
    return results


def measure_difficulty(model, tok, levels: dict, hooks: list[str]) -> dict:
    """Per axis: per level the accuracy (correct logit > incorrect), prompt length and
    metrics at the last prompt token; the hardest - easiest effects, raw and with prompt
    length regressed out (harder levels are longer: the raw effect mixes the two)."""
    out = {}
    for axis, rows in levels.items():
        measured, skipped = [], []
        for level, label, task in rows:
            batch = fitting_batch(task, tok, model.cfg.n_ctx)
            if isinstance(batch, str):
                skipped.append(f"level {level}: {batch}")
                continue
            logits, vals = per_input(model, batch.tokens, hooks, batch.last_pos)
            correct = (task_logit_diff(logits, batch) > 0).double()
            measured.append((level, label, len(batch), correct, vals, batch.last_pos + 1))
        res = {
            "levels": [
                {
                    "level": lv,
                    "label": label,
                    "n_prompts": n,
                    "tokens": bootstrap_ci(length.double()),
                    "accuracy": bootstrap_ci(correct),
                    "metrics": summarise(vals),
                }
                for lv, label, n, correct, vals, length in measured
            ],
            "skipped": skipped,
        }
        if len(measured) >= 2:
            first, last = measured[0], measured[-1]
            res["hardest_minus_easiest"] = effects(last[4], first[4])
            res["length_controlled"] = _map(
                lambda m, b, a, lb=last[5], la=first[5]: _effect(
                    m, *length_controlled_diff(b, a, lb, la)
                ),
                last[4],
                first[4],
            )
            res["accuracy_hardest_minus_easiest"] = _effect(
                "accuracy", *bootstrap_diff(last[3], first[3])
            )
        out[axis] = res
    return out
