"""A circuit: the kept nodes, the edges between them, and how it was validated.

Edges are nonzero weights between kept nodes (the count Gao et al. report; in a dense
model every weight between kept nodes counts):
- residual read -> q / k / v channel      (q_proj, k_proj, v_proj weights)
- v channel -> attention residual write   (o_proj: v feeds z, which o_proj maps out)
- residual read -> MLP neuron -> MLP residual write   (fc_in, fc_out)
- residual write -> a later residual read of the same channel (the residual stream; the
  weight is the read's norm gain, the only per-channel factor on that path)
q and k channels interact through their product, not through a weight, so no edge joins them.

`circuit.json` is the serialized form; SCHEMA_VERSION changes whenever its fields do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .circuit_metrics import CircuitMetrics
from .config import OLD_NODE_SITES
from .errors import UserError
from .io import read_json, write_json_atomic
from .model import SparseGPT
from .nodes import NodeSite

SCHEMA_VERSION = 1


@dataclass
class Node:
    name: str  # e.g. blocks.0.attn.hook_q[5]
    site: str  # one of nodes.SITE_KINDS: attn_in | attn_q | attn_k | attn_v | attn_out | ...
    layer: int
    index: int
    mean: float  # the value it takes when ablated
    score: float  # the pruning method's score (higher = kept first)


@dataclass
class Edge:
    src: str
    dst: str
    weight: float


@dataclass
class Circuit:
    task: str
    method: str
    target_loss: float
    nodes: list[Node]
    edges: list[Edge]
    n_nodes_total: int
    # How it did on the test split and how it was chosen. A dict: the metrics of a
    # circuit.json in an older shape (or {} for a circuit built by hand), kept as written.
    metrics: CircuitMetrics | dict
    calibration: dict  # logit scale and shift fitted to the circuit
    model_dir: str | None = None
    model_config: dict = field(default_factory=dict)
    prune_config: dict = field(default_factory=dict)
    bisection: list[dict] = field(default_factory=list)  # [{"k", "loss"}] in search order
    node_effects: dict = field(default_factory=dict)  # node -> task loss rise when removed alone
    examples: list = field(default_factory=list)  # prompts with per-token node activations
    # node -> explanation (explain.py); optional, so circuit.json files without it still load
    explanations: dict = field(default_factory=dict)
    seconds: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(self.metrics, CircuitMetrics):
            d["metrics"] = self.metrics.to_json()
        d["n_nodes"], d["n_edges"] = self.n_nodes, self.n_edges
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        d = read_json(path)
        if d.get("schema_version") != SCHEMA_VERSION:
            raise UserError(
                f"{path}: circuit schema version {d.get('schema_version')}, this tool reads {SCHEMA_VERSION}"
            )
        d.pop("n_nodes", None)
        d.pop("n_edges", None)
        try:
            d["nodes"] = [Node(**n) for n in d["nodes"]]
            for node in d["nodes"]:
                node.site = OLD_NODE_SITES.get(node.site, node.site)
            d["edges"] = [Edge(**e) for e in d["edges"]]
            d["metrics"] = _metrics(d["metrics"])
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise UserError(f"{path}: not a valid circuit.json ({e})") from None


def _metrics(d: dict) -> CircuitMetrics | dict:
    """Typed metrics, or the JSON as written where it is not in the current shape: older
    files still load (and save back unchanged) for what does not read their metrics."""
    try:
        return CircuitMetrics.from_json(d)
    except (TypeError, KeyError):
        return d


def _linear_edges(weight: torch.Tensor, src: NodeSite, dst: NodeSite, kept: dict) -> list[Edge]:
    """Edges through a weight [dst width, src width] between kept nodes."""
    w = weight.detach().cpu()
    sub = w[kept[dst.hook]][:, kept[src.hook]]
    dst_idx = kept[dst.hook].nonzero().flatten()
    src_idx = kept[src.hook].nonzero().flatten()
    return [
        Edge(src.node(int(src_idx[j])), dst.node(int(dst_idx[i])), float(sub[i, j]))
        for i, j in sub.nonzero().tolist()
    ]


def circuit_edges(
    model: SparseGPT, sites: list[NodeSite], kept: dict[str, torch.Tensor]
) -> list[Edge]:
    """All edges between kept nodes; `kept` maps each hook to a boolean tensor [width]."""
    by = {(s.kind, s.layer): s for s in sites}
    edges: list[Edge] = []
    for layer in range(len(model.blocks)):
        block = model.block(layer)
        s = lambda kind, layer=layer: by[(kind, layer)]  # noqa: E731
        for kind, proj in (
            ("attn_q", block.attn.q_proj),
            ("attn_k", block.attn.k_proj),
            ("attn_v", block.attn.v_proj),
        ):
            edges += _linear_edges(proj.weight, s("attn_in"), s(kind), kept)
        edges += _linear_edges(block.attn.o_proj.weight, s("attn_v"), s("attn_out"), kept)
        edges += _linear_edges(block.mlp.fc_in.weight, s("mlp_in"), s("mlp_neuron"), kept)
        edges += _linear_edges(block.mlp.fc_out.weight, s("mlp_neuron"), s("mlp_out"), kept)
    # Residual stream: a write reaches every later read of the same channel.
    order = [
        (layer, kind)
        for layer in range(len(model.blocks))
        for kind in ("attn_in", "attn_out", "mlp_in", "mlp_out")
    ]
    for i, (wl, wk) in enumerate(order):
        if wk not in ("attn_out", "mlp_out"):
            continue
        write = by[(wk, wl)]
        for rl, rk in order[i + 1 :]:
            if rk not in ("attn_in", "mlp_in"):
                continue
            read = by[(rk, rl)]
            gain = (
                (model.block(rl).ln1 if rk == "attn_in" else model.block(rl).ln2).w.detach().cpu()
            )
            both = kept[write.hook] & kept[read.hook] & (gain != 0)
            edges += [
                Edge(write.node(c), read.node(c), float(gain[c]))
                for c in both.nonzero().flatten().tolist()
            ]
    return edges
