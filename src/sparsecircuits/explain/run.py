"""Running explanations: node activations over a checkpoint's held-out windows and task
prompts, direct input/output paths, and the cache beside the checkpoint."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import checkpoint_corpus, load, load_config
from ..circuit import Circuit
from ..corpus import relocate_cached
from ..errors import UserError
from ..io import file_digest, read_json, write_json_atomic
from ..nodes import NodeSite, channels, heldout_windows, node_sites, parse_node, weights_digest
from ..tasks import TASKS, get_task
from .config import CACHE_FILE, VERSION, ExplainConfig
from .features import Feature, default_features, feature_matrix
from .lexer import Context, make_context
from .scoring import explain_activations, rounded

# ---------- direct paths: which tokens feed a node, which logits it pushes ----------


@torch.no_grad()
def direct_tokens(model, site: NodeSite, index: int, token_text, k: int) -> dict:
    """Top tokens by their embedding's direct effect on the node (through the site's norm and
    read weight; earlier layers ignored), and top logits by the node's direct write (through
    the final norm's gain). Sites without such a path get no list."""
    block = model.blocks[site.layer]
    norm = block.ln1 if site.kind in ("attn_in", "attn_q", "attn_k", "attn_v") else block.ln2
    read = {"attn_q": block.attn.q_proj, "attn_k": block.attn.k_proj, "attn_v": block.attn.v_proj}
    read["mlp_neuron"] = block.mlp.fc_in
    write = {"attn_v": block.attn.o_proj, "mlp_neuron": block.mlp.fc_out}
    out = {}
    if site.kind in ("attn_in", "mlp_in") or site.kind in read:
        normed = norm(model.embed.weight[None])[0]  # [vocab, d_model]
        proj = read.get(site.kind)
        vals = normed[:, index] if proj is None else normed @ proj.weight[index]
        out["top_inputs"] = _top(vals, token_text, k)
    if site.kind in ("attn_out", "mlp_out") or site.kind in write:
        gain = model.ln_final.w
        vals = (
            model.W_U @ (gain * write[site.kind].weight[:, index])
            if site.kind in write
            else model.W_U[:, index] * gain[index]
        )
        out["top_logits"] = _top(vals, token_text, k)
    return out


def _top(vals: torch.Tensor, token_text, k: int) -> list:
    top = vals.float().cpu().topk(min(k, len(vals)))
    return [
        [token_text[int(i)], rounded(float(v))]
        for v, i in zip(top.values, top.indices, strict=True)
    ]


# ---------- activations and the whole pipeline ----------


def check_nodes(cfg, nodes: list[str]) -> list[tuple[str, int]]:
    """(hook, index) of each node name; a name that is no node of the model is an error."""
    sites = {s.hook: s for s in node_sites(cfg)}
    out = []
    for name in nodes:
        hook, idx = parse_node(name)
        if hook not in sites:
            raise UserError(
                f"{name}: {hook} is not a node site of this model ({cfg.n_layer} layers; "
                f"sites look like {next(iter(sites))})"
            )
        if not 0 <= idx < sites[hook].width:
            raise UserError(f"{name}: index out of range ({hook} has {sites[hook].width} nodes)")
        out.append((hook, idx))
    return out


@torch.no_grad()
def node_activations(
    model, contexts: list[Context], nodes: list[str], batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """([positions, nodes] activations, [positions, 2] (context, token)), positions in context
    order. Contexts of unequal length are padded at the end (the model is causal)."""
    sites = {s.hook: s for s in node_sites(model.cfg)}
    wanted: dict[str, list[int]] = {}
    cols: list[tuple[str, int]] = []
    for hook, idx in check_nodes(model.cfg, nodes):
        wanted.setdefault(hook, []).append(idx)
        cols.append((hook, len(wanted[hook]) - 1))
    device = next(model.parameters()).device
    chunks, where = [], []
    for b in range(0, len(contexts), batch_size):
        group = contexts[b : b + batch_size]
        width = max(len(c.ids) for c in group)
        tokens = torch.zeros(len(group), width, dtype=torch.long)
        for r, c in enumerate(group):
            tokens[r, : len(c.ids)] = torch.tensor(c.ids)
        _, cache = model.run_with_cache(tokens.to(device), names_filter=list(wanted))
        per_hook = {
            h: channels(cache[h], sites[h])[..., idx].float().cpu() for h, idx in wanted.items()
        }
        acts = torch.stack([per_hook[h][..., j] for h, j in cols], dim=-1)  # [B, T, nodes]
        for r, c in enumerate(group):
            chunks.append(acts[r, : len(c.ids)].numpy())
            where += [(b + r, t) for t in range(len(c.ids))]
    return np.concatenate(chunks), np.asarray(where, dtype=np.int64)


def explain_nodes(
    model,
    contexts: list[Context],
    nodes: list[str],
    token_text: Sequence[str],
    features: list[Feature] | None = None,
    settings: ExplainConfig | None = None,
) -> dict[str, dict]:
    """{node: explanation} for any model and contexts (see the module docstring)."""
    settings = settings or ExplainConfig()
    features = features if features is not None else default_features(contexts, settings.n_tokens)
    if not nodes:
        return {}
    feats = feature_matrix(contexts, features)
    acts, where = node_activations(model, contexts, nodes)
    sites = {s.hook: s for s in node_sites(model.cfg)}
    out = {}
    for j, name in enumerate(nodes):
        hook, idx = parse_node(name)
        e = explain_activations(acts[:, j], feats, features, contexts, where, settings)
        e.update(direct_tokens(model, sites[hook], idx, token_text, settings.top_k))
        out[name] = e
    return out


def vocab_text(tokenizer, vocab_size: int) -> list[str]:
    return [tokenizer.decode([i]) for i in range(vocab_size)]


def checkpoint_contexts(
    model_dir,
    model,
    tokenizer,
    task: str | None,
    settings: ExplainConfig,
    prune_cfg: dict | None = None,
) -> tuple[list[Context], list[str]]:
    """(contexts, token text): the node means' held-out windows, then the task's test prompts."""

    text = vocab_text(tokenizer, model.cfg.vocab_size)
    corpus = checkpoint_corpus(model_dir, model, tokenizer)
    contexts = [
        make_context(row.tolist(), text, from_line_start=False)
        for w in heldout_windows(corpus, model.cfg.n_ctx, settings.batches, settings.batch_size)
        for row in w
    ]
    if task:
        t = get_task(task, *_pairs(prune_cfg or {}))
        batch = t.encode(tokenizer, "test", model.cfg.n_ctx)
        contexts += [
            make_context(batch.tokens[r, : int(batch.last_pos[r]) + 1].tolist(), text, True)
            for r in range(len(batch))
        ]
    return contexts, text


# The pairs a task's prompts are drawn with where a circuit's settings do not say (the
# circuit search's defaults): n_train, n_test, seed.
DEFAULT_PAIRS = (128, 128, 0)


def _pairs(prompts: dict) -> tuple[int, int, int]:
    """(n_train, n_test, seed) of the prompt pairs `prompts` (prune settings) describe."""
    n_train, n_test, seed = DEFAULT_PAIRS
    return prompts.get("n_train", n_train), prompts.get("n_test", n_test), prompts.get("seed", seed)


def _cache_key(model_dir: Path, settings: ExplainConfig, task: str | None, prompts: dict) -> str:
    # A task file by its content too: an edited file has other prompts under the same name.
    if task is not None and task not in TASKS and Path(task).is_file():
        task = f"{task}@{file_digest(task)}"
    # and by the test pairs drawn (keys cached before they were named stay valid: seed 0, 128)
    _, n_test, seed = _pairs(prompts)
    if task is not None and (n_test, seed) != DEFAULT_PAIRS[1:]:
        task = f"{task}#pairs{seed}/{n_test}"
    return f"v{VERSION}:{weights_digest(model_dir)}:{sorted(vars(settings).items())}:{task}"


def explain_checkpoint(
    model_dir,
    nodes: list[str],
    task: str | None = None,
    prune_cfg: dict | None = None,
    settings: ExplainConfig | None = None,
    model=None,
    tokenizer=None,
    pair_seed: int | None = None,
) -> dict[str, dict]:
    """Explanations of nodes of a checkpoint, on its held-out windows plus `task`'s test
    prompts (as `prune_cfg` drew them, from `pair_seed` where the pairs had a seed of their
    own, as a study's do); cached beside the checkpoint (the default library only: custom
    features use `explain_nodes`)."""

    model_dir = Path(model_dir)
    settings = settings or ExplainConfig()
    if model is None:
        model, tokenizer = load(model_dir)
    if tokenizer is None:
        raise UserError(f"{model_dir}: explaining nodes needs the checkpoint's tokenizer.json")
    try:
        check_nodes(model.cfg, nodes)
    except UserError as e:
        raise UserError(f"{model_dir}: {e}") from None
    prompts = dict(prune_cfg or {}) | ({} if pair_seed is None else {"seed": pair_seed})
    key = _cache_key(model_dir, settings, task, prompts)
    path = model_dir / CACHE_FILE
    cache: dict[str, Any] = {}
    if path.exists():
        try:
            stored = read_json(path)
            cache = stored.get("nodes", {}) if stored.get("key") == key else {}
        except UserError:  # a damaged cache is rebuilt
            cache = {}
    missing = [n for n in dict.fromkeys(nodes) if n not in cache]
    if missing:
        contexts, text = checkpoint_contexts(model_dir, model, tokenizer, task, settings, prompts)
        cache.update(explain_nodes(model, contexts, missing, text, settings=settings))
        try:
            write_json_atomic(path, {"key": key, "nodes": cache})
        except UserError as e:  # a read-only model folder: the answer stands, uncached
            print(f"note: {e}; the explanations were not cached", file=sys.stderr)
    return {n: cache[n] for n in nodes}


def explain_circuit(
    path_or_circuit,
    model_dir=None,
    settings: ExplainConfig | None = None,
    save=True,
    pair_seed: int | None = None,
):
    """Explain every node of a circuit and store the explanations in it (and in its
    circuit.json when given a path and `save`). `pair_seed`: the seed its prompt pairs were
    drawn from, where not its search's seed (a study's `pair_seed`)."""

    path = None
    circuit = path_or_circuit
    if not isinstance(circuit, Circuit):
        path = Path(path_or_circuit)
        circuit = Circuit.load(path)
    model_dir = model_dir or (circuit.model_dir and str(relocate_cached(circuit.model_dir)))
    if not model_dir or not (Path(model_dir) / "model.safetensors").is_file():
        raise UserError(
            f"{path or 'circuit'}: its model folder {model_dir!r} is not there; pass the model folder"
        )
    # Another model's nodes would be explained under this circuit's names and stored in it.
    if circuit.model_config:
        have = asdict(load_config(model_dir)[0])
        differ = [
            k
            for k in sorted(set(have) | set(circuit.model_config))
            if have.get(k) != circuit.model_config.get(k)
        ]
        if differ:
            raise UserError(
                f"{model_dir}: not this circuit's model ({path or 'circuit'} was found in a "
                f"model with other {', '.join(differ)})"
            )
    circuit.explanations = explain_checkpoint(
        model_dir,
        [n.name for n in circuit.nodes],
        circuit.task,
        circuit.prune_config,
        settings,
        pair_seed=pair_seed,
    )
    if path is not None and save:
        circuit.save(path)
    return circuit
