"""Same behaviour, different internals (after Kumar et al. 2025, "fractured entangled
representations"): measures of how a model organises a task that its outputs cannot show.

For a model and a task's paired prompts (behaviour = the logit difference correct - incorrect
at each prompt):

- circuit size: nodes of the node-mask circuit at a fixed task loss (prune.find_circuit);
  the modularity run reports it per subroutine.
- perturbation sensitivity: add noise to a random `frac` of the nonzero entries of the
  chosen matrices (std `eps` x the RMS of those nonzero entries) and measure the behaviour
  change |d diff| / mean |diff|; the *median* over draws is reported with the mean. Only
  existing weights are hit, at their own scale, so a weight-sparse and a dense model get
  comparable perturbations; `all_entries=True` keeps the earlier variant (any entry, zeros
  revived, RMS counting the zeros), reported beside it. Isotropic noise on every
  weight cannot tell a rotated model from the original (it is rotation-invariant in
  distribution); noise on a few coordinates can: where the task lives in few weights most
  draws miss them (median ~ 0), where it is smeared over all weights every draw lands.
- weight sweep: the weight with the largest first-order effect on the behaviour is scaled
  by (1 + t), t in [-2, 2], and the mean behaviour recorded. `control` = the change when it
  is zeroed, relative to the behaviour (how much of the task one weight holds: clean circuits
  concentrate it); `roughness` = sum |second difference| / sum |first difference| along the
  sweep (0 for a straight line; fractured responses bend).

`rotate_hidden(model, seed)` builds the ground-truth contrast: the same function with the
residual stream and every attention head's q/k and v bases rotated by random orthogonal
matrices. Outputs are identical (to float error); internals are entangled.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import nn

from .config import ACT_SITES
from .errors import UserError
from .model import SparseGPT
from .nodes import compute_node_means, node_sites
from .planted import SOFT, planted_batch, planted_model
from .prune import find_circuit
from .prune_methods import PruneConfig
from .tasks import TaskBatch, task_logit_diff
from .weightmask import masked_layers

# Every site but the MLP neurons is mixed by the rotation: AbsTopK there would not commute.
_ROTATED_SITES = tuple(site for site in ACT_SITES if site != "mlp_neuron")


def _orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # Haar-distributed


@torch.no_grad()
def rotate_hidden(model: SparseGPT, seed: int = 0) -> SparseGPT:
    """A copy computing the same function in randomly rotated hidden bases (see the module
    docstring). Needs RMSNorm, an identity residual activation, no AbsTopK on the rotated
    sites and an untied unembedding (norm gains are folded into the next layer's reads)."""
    cfg = model.cfg
    problems = [s for s in _ROTATED_SITES if cfg.has_act_sparsity(s)]
    if cfg.norm != "rms" or cfg.resid_act != "identity" or cfg.tied_unembed or problems:
        raise UserError(
            "rotate_hidden needs norm='rms', resid_act='identity', an untied unembedding and "
            f"no AbsTopK on {', '.join(_ROTATED_SITES)} (this model: norm={cfg.norm}, "
            f"resid_act={cfg.resid_act}, tied={cfg.tied_unembed}, AbsTopK at {problems})"
        )
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    R = _orthogonal(cfg.d_model, g)

    def read(linear: nn.Linear, norm):  # folds the norm's gain, then reads x R
        linear.weight.copy_(linear.weight * norm.w @ R)

    def write(linear: nn.Linear):  # writes out R
        linear.weight.copy_(R.T @ linear.weight)
        if linear.bias is not None:
            linear.bias.copy_(linear.bias @ R)

    m.embed.weight.copy_(m.embed.weight @ R)
    if m.pos_embed is not None:
        m.pos_embed.weight.copy_(m.pos_embed.weight @ R)
    dh = cfg.d_head
    for layer in range(len(m.blocks)):
        block = m.block(layer)
        a = block.attn
        for lin in (a.q_proj, a.k_proj, a.v_proj):
            read(lin, block.ln1)
        read(block.mlp.fc_in, block.ln2)
        block.ln1.w.fill_(1.0)
        block.ln2.w.fill_(1.0)
        for h in range(cfg.heads):
            rows = slice(h * dh, (h + 1) * dh)
            Q, P = _orthogonal(dh, g), _orthogonal(dh, g)
            for lin, rot in ((a.q_proj, Q), (a.k_proj, Q), (a.v_proj, P)):
                lin.weight[rows] = rot.T @ lin.weight[rows]
                if lin.bias is not None:
                    lin.bias[rows] = lin.bias[rows] @ rot
            a.o_proj.weight[:, rows] = a.o_proj.weight[:, rows] @ P
        write(a.o_proj)
        write(block.mlp.fc_out)
    assert m.unembed is not None  # untied: checked above
    m.unembed.weight.copy_(m.unembed.weight * m.ln_final.w @ R)
    m.ln_final.w.fill_(1.0)
    return m


@torch.no_grad()
def _behaviour(model, batches: list[TaskBatch]) -> torch.Tensor:
    return torch.cat([task_logit_diff(model(b.tokens), b) for b in batches])


def perturbation_sensitivity(
    model,
    batches: list[TaskBatch],
    names: list[str],
    seed: int = 0,
    draws: int = 32,
    frac: float = 0.02,
    eps: float = 1.0,
    all_entries: bool = False,
) -> dict:
    """Behaviour change under noise on a random `frac` of the named layers' nonzero weights
    (of all entries with `all_entries`; see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    base = _behaviour(model, batches)
    scale = float(base.abs().mean()) or 1.0
    changes = []
    saved = {n: modules[n].weight.detach().clone() for n in names}
    where = {
        n: torch.ones_like(w, dtype=torch.bool) if all_entries else w != 0 for n, w in saved.items()
    }
    rms = {
        n: float(saved[n][where[n]].pow(2).mean().sqrt()) if where[n].any() else 0.0 for n in names
    }
    try:
        for _ in range(draws):
            with torch.no_grad():
                for n in names:
                    w = modules[n].weight
                    # drawn on the CPU, so a device gives the same draws
                    hit = (torch.rand(w.shape, generator=g) < frac).to(w.device) & where[n]
                    noise = torch.randn(w.shape, generator=g).to(w.device)
                    w.copy_(saved[n] + hit * noise * eps * rms[n])
            changes.append(float((_behaviour(model, batches) - base).abs().mean()) / scale)
    finally:  # the caller's model comes back unchanged, whatever happens
        with torch.no_grad():
            for n in names:
                modules[n].weight.copy_(saved[n])
    return {"median": statistics.median(changes), "mean": statistics.fmean(changes), "draws": draws}


def weight_sweep(model, batches: list[TaskBatch], names: list[str], points: int = 21) -> dict:
    """Sweep the most important weight (see the module docstring)."""
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    for w in weights:
        w.requires_grad_(True)
    behaviour = torch.cat([task_logit_diff(model(b.tokens), b) for b in batches]).mean()
    grads = torch.autograd.grad(behaviour, weights)
    for w in weights:
        w.requires_grad_(False)
    effects = [(w.detach() * gr).abs() for w, gr in zip(weights, grads, strict=True)]
    best = max(range(len(names)), key=lambda i: float(effects[i].max()))
    idx = tuple(int(i) for i in torch.unravel_index(effects[best].argmax(), effects[best].shape))
    w = weights[best]
    original = float(w[idx])
    ts = torch.linspace(-2.0, 2.0, points)
    ys = []
    try:
        with torch.no_grad():
            for t in ts:
                w[idx] = original * (1 + float(t))
                ys.append(float(_behaviour(model, batches).mean()))
    finally:
        with torch.no_grad():
            w[idx] = original
    y = torch.tensor(ys)
    y0 = float(_behaviour(model, batches).mean())
    first, second = y.diff(), y.diff(n=2)
    at_zero = int((ts + 1).abs().argmin())  # t = -1 zeroes the weight
    return {
        "weight": f"{names[best]}.weight[{idx[0]}, {idx[1]}]",
        "t": [round(float(t), 3) for t in ts],
        "behaviour": ys,
        "control": abs(ys[at_zero] - y0) / (abs(y0) or 1.0),
        "roughness": float(second.abs().sum() / first.abs().sum().clamp_min(1e-12)),
    }


def fer_measures(model, batches: list[TaskBatch], names: list[str], seed: int = 0) -> dict:
    """Perturbation sensitivity and the weight sweep of the behaviour on `batches`."""
    return {
        "perturbation": perturbation_sensitivity(model, batches, names, seed=seed),
        "perturbation_all_entries": perturbation_sensitivity(
            model, batches, names, seed=seed, all_entries=True
        ),
        "sweep": weight_sweep(model, batches, names),
    }


def validate_on_planted(seed: int = 0) -> dict:
    """The measures on ground truth: the planted model (one clean 7-node circuit) against its
    rotated twin (identical outputs, entangled bases). A measure `separates` them when the
    rotated value is at least twice the clean one."""
    clean = planted_model(SOFT).requires_grad_(False)
    rotated = rotate_hidden(clean, seed).requires_grad_(False)
    train, test = planted_batch(64, 1), planted_batch(64, 2)
    names = masked_layers(clean, ["blocks.*"])
    out: dict[str, Any] = {
        "output_max_diff": float((clean(test.tokens) - rotated(test.tokens)).abs().max())
    }
    for label, model in (("clean", clean), ("rotated", rotated)):
        means = compute_node_means(
            model, [planted_batch(64, 100).tokens], node_sites(model.cfg), progress=False
        )
        cfg = PruneConfig(target_loss=0.15, random_draws=0, effect_nodes=0, example_pairs=0)
        circuit = find_circuit(model, train, test, means, cfg, progress=False)
        measures = fer_measures(model, [test], names, seed=seed)
        out[label] = {
            "circuit_nodes": len(circuit.nodes),
            "perturbation_median": measures["perturbation"]["median"],
            "sweep_roughness": measures["sweep"]["roughness"],
            "sweep_control": measures["sweep"]["control"],
        }
    out["separates"] = {k: out["rotated"][k] >= 2 * out["clean"][k] for k in out["clean"]}
    return out
