"""A fake study folder, shaped like `sparsecircuits study` output, for the report tests.

Five models (dense and sparse, d_model 64 and 128) on two tasks. Among the circuits: one big
dense circuit (800 nodes, 5000 edges) for the viewer's collapse and edge filter, one
unreachable, one failed, and one whose circuit.json is corrupt. The example prompts hold text
that breaks naive HTML embedding: `</script>`, `<!--`, quotes, `<b>bold</b>`, U+2028.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from sparsecircuits.nodes import SITE_KINDS, NodeSite
from sparsecircuits.study import StudyConfig
from sparsecircuits.study_results import CircuitRow, EligibilityRow, ModelRow

TASKS = ["single_double_quote", "bracket_closing"]
SMALL = ("w64_d0.25_s0", "single_double_quote")  # a small circuit the browser test inspects
BIG = ("w128_dense_s0", "single_double_quote")
CORRUPT = ("w64_d0.25_s0", "bracket_closing")  # status ok, but its circuit.json is not JSON
UNREACHABLE = ("w128_d0.0625_s0", "bracket_closing")
FAILED = ("w128_d0.0625_s0", "single_double_quote")
N_LAYER = 2

# Edges only join sites that a transformer block connects (see circuit.py).
_LINKS = [
    ("attn_in", "attn_q"),
    ("attn_in", "attn_k"),
    ("attn_in", "attn_v"),
    ("attn_v", "attn_out"),
]
_LINKS += [("attn_out", "mlp_in"), ("mlp_in", "mlp_neuron"), ("mlp_neuron", "mlp_out")]

# Tokens of one prompt: Python source with every character that could escape a <script>.
TOKENS = ["def", " f", "():", "\n", "    ", "s", " =", " '", "</script>", "<!--", ' "']
TOKENS += ["<b>bold</b>", " &amp;", "\u2028", " x", "='", "\n", "    ", "return", " s", "[", "'"]


def _model(d_model: int, density: float, rng: random.Random) -> dict:
    dense = density == 1.0
    mid = f"w{d_model}_dense_s0" if dense else f"w{d_model}_d{density:g}_s0"
    total = 40 * d_model * d_model
    kind = "dense" if dense else f"sparse 1/{round(1 / density)}"
    return {
        "id": mid,
        "label": f"{kind}, d_model {d_model}, seed 0",
        "kind": "dense" if dense else "sparse",
        "d_model": d_model,
        "n_layer": N_LAYER,
        "density": density,
        "seed": 0,
        "dir": f"models/{mid}",
        "total_params": total,
        "nonzero_params": int(total * density),
        "matrix_nonzero": int(total * density / 2),
        "heldout_loss": round(3.2 + 0.4 * (1 - density) - d_model / 400 + rng.random() * 0.05, 4),
    }


def _metrics(rng: random.Random) -> dict:
    def part(loss):
        return {
            "loss": loss,
            "accuracy": 0.9,
            "loss_calibrated": loss * 0.9,
            "accuracy_calibrated": 0.92,
        }

    return {
        "full": part(round(0.1 + rng.random() * 0.05, 4)),
        "circuit": part(0.29),
        "ablated": {"loss": 2.5, "accuracy": 0.4},
        "random": {"draws": 10, "loss_mean": 1.9, "loss_std": math.nan, "accuracy_mean": 0.5},
    }


def make_circuit(task: str, n_nodes: int, n_edges: int, seed: int) -> dict:
    """A circuit.json dict with random nodes, edges between linked sites, and activations."""
    rng = random.Random(seed)
    width = {"attn_q": 64, "attn_k": 64, "attn_v": 64, "mlp_neuron": 512}
    slots = [
        (kind, layer, i)
        for layer in range(N_LAYER)
        for kind in SITE_KINDS
        for i in range(width.get(kind, 128))
    ]
    chosen = sorted(rng.sample(slots, n_nodes), key=lambda s: (s[1], SITE_KINDS.index(s[0]), s[2]))
    nodes = [
        {
            "name": NodeSite(kind, layer, 0).node(i),
            "site": kind,
            "layer": layer,
            "index": i,
            "mean": round(rng.gauss(0, 0.5), 5),
            "score": round(rng.random(), 5),
        }
        for kind, layer, i in chosen
    ]
    by_site: dict[tuple[str, int], list[str]] = {}
    for n in nodes:
        by_site.setdefault((n["site"], n["layer"]), []).append(n["name"])
    pairs = [
        (s, d)
        for layer in range(N_LAYER)
        for a, b in _LINKS
        for s in by_site.get((a, layer), [])
        for d in by_site.get((b, layer), [])
    ]
    pairs += [
        (s, d) for s in by_site.get(("mlp_out", 0), []) for d in by_site.get(("attn_in", 1), [])
    ]
    edges = [
        {"src": s, "dst": d, "weight": round(rng.choice([-1, 1]) * rng.lognormvariate(-2, 1), 6)}
        for s, d in rng.sample(pairs, min(n_edges, len(pairs)))
    ]
    names = [n["name"] for n in nodes]
    examples = [
        {
            "label": f"pair {p}, prompt {ab}",
            "tokens": TOKENS,
            "correct": "'",
            "incorrect": '"',
            # Activations recorded for all but the last node, to exercise "not recorded".
            "activations": {
                name: [round(rng.gauss(0, 1), 4) for _ in TOKENS] for name in names[:-1]
            },
        }
        for p in range(2)
        for ab in "ab"
    ]
    return {
        "schema_version": 1,
        "task": task,
        "method": "masks",
        "target_loss": 0.3,
        "n_nodes": len(nodes),
        "n_nodes_total": N_LAYER * (4 * 128 + 3 * 64 + 512),
        "n_edges": len(edges),
        "nodes": nodes,
        "edges": edges,
        "metrics": _metrics(rng),
        "calibration": {"scale": 1.3, "shift": 0.1},
        "model_config": {"n_layer": N_LAYER, "d_model": 128, "n_head": 4, "d_head": 16},
        # Effects for every other node: the viewer must cope with missing ones.
        "node_effects": {name: round(rng.random() * 0.5, 4) for name in names[::2]},
        "examples": examples,
        "explanations": _explanations(names, seed),
        "seconds": 1.0,
    }


FEATURES = ["in string '", "token 'def'", "bracket depth 1", "after return", "<b>feature</b>"]


def _explanations(names: list[str], seed: int) -> dict:
    """Node explanations as explain.py writes them, for three kinds of node in turn: one
    feature explains it (AUC, precision, recall >= 0.9), a feature that does not (precision
    below 0.9), and constant (no feature); all with examples."""
    rng = random.Random(seed + 1000)  # its own stream: the circuit above stays as it was
    out = {}
    for j, name in enumerate(names):
        examples = [
            {"label": label, "value": round(rng.gauss(0, 1), 3), "tokens": TOKENS[:9], "at": 8}
            for label in ("max", "top 1%", "median", "min")
        ]
        if j % 3 == 2:
            out[name] = {"feature": None, "auc": None, "positions": 4096, "examples": examples}
            continue
        good = j % 3 == 0
        out[name] = {
            "feature": FEATURES[j % len(FEATURES)],
            "description": "a feature",
            "auc": round(rng.uniform(0.95, 1.0) if good else rng.uniform(0.6, 0.99), 4),
            "direction": rng.choice([1, -1]),
            "precision": round(rng.uniform(0.9, 1.0) if good else rng.uniform(0.3, 0.85), 4),
            "recall": round(rng.uniform(0.9, 1.0), 4),
            "positions": 4096,
            "examples": examples,
            "top_inputs": [[t, round(rng.random(), 3)] for t in TOKENS[5:9]],
            "top_logits": [[t, round(rng.random(), 3)] for t in TOKENS[:3]],
        }
    return out


def write_fake_study(root: Path) -> Path:
    """Write the fake study into `root` (created) and return it."""
    rng = random.Random(0)
    models = [
        _model(64, 1.0, rng),
        _model(64, 0.25, rng),
        _model(128, 1.0, rng),
        _model(128, 0.25, rng),
        _model(128, 0.0625, rng),
    ]
    circuits = []
    for m in models:
        for task in TASKS:
            key = (m["id"], task)
            row = {"model": m["id"], "task": task, "status": "ok", "message": None}
            row |= {"target_loss": 0.3}  # the study's target (a real row has one)
            if key == UNREACHABLE:
                row.update(
                    status="unreachable", message="task loss 0.41 > target 0.3 with all nodes"
                )
            elif key == FAILED:
                row.update(status="error", message="RuntimeError: pruning diverged (loss nan)")
            if row["status"] != "ok":
                circuits.append(
                    {**row, "n_nodes": None, "n_edges": None, "metrics": None, "path": None}
                )
                continue
            n_nodes, n_edges = (800, 5000) if key == BIG else (30 + len(circuits) * 3, 70)
            circuit = make_circuit(task, n_nodes, n_edges, seed=len(circuits))
            path = Path("circuits") / m["id"] / task / "circuit.json"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(circuit)
            (root / path).write_text(text[:200] if key == CORRUPT else text)
            circuits.append(
                {
                    **row,
                    "n_nodes": circuit["n_nodes"],
                    "n_edges": circuit["n_edges"],
                    "metrics": circuit["metrics"],
                    "path": path.as_posix(),
                }
            )
    frontier = []
    for m in models:
        rows = [c for c in circuits if c["model"] == m["id"]]
        ok = [c["n_edges"] for c in rows if c["status"] == "ok"]
        geomean = math.exp(sum(map(math.log, ok)) / len(ok)) if len(ok) == len(TASKS) else None
        frontier.append(
            {k: m[k] for k in ("id", "label", "kind", "d_model", "density", "seed", "heldout_loss")}
            | {"model": m["id"], "geomean_edges": geomean, "n_tasks": len(ok)}
        )
    results = {
        "schema_version": 2,
        "study": {"preset": "quick", "tasks": TASKS, "seeds": [0], "target_loss": 0.3},
        "models": models,
        "circuits": circuits,
        "frontier": frontier,
        "answer": {
            "sentence": "Sparse models' circuits are 16x smaller at equal loss (fake <b>data</b>).",
            "ratio": {"value": 16.0, "low": 8.0, "high": 30.0, "n": 6, "n_tasks": 2, "n_seeds": 1},
            "controls": "no control came close on 7 validated circuits",
            "density_trend": "Sparser models have smaller circuits.",
            "width_effect": "Wider models reach lower loss.",
            "details": ["This is a fixture, not a result.", "</script><!-- still text"],
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    # Python's json writes NaN (the random draws' std above) as the study code would.
    (root / "results.json").write_text(json.dumps(results, indent=1))
    _write_sections(root)
    return root


# A 1x1 PNG: analysis sections inline their images.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


def _write_sections(root: Path) -> None:
    """One good analysis section, one damaged one (the report must show its error)."""
    good = root / "activations"
    good.mkdir()
    (good / "plot.png").write_bytes(PNG)
    section = {
        "title": "Activation sparsity",
        "paragraphs": ["No effect found <i>here</i>."],
        "tables": [
            {
                "caption": "per condition",
                "columns": ["condition", "top-10%"],
                "rows": [["familiar", 0.5], ["random", 0.61]],
            }
        ],
        "images": [{"caption": "by layer", "file": "plot.png"}],
    }
    (good / "section.json").write_text(json.dumps(section))
    bad = root / "modularity"
    bad.mkdir()
    (bad / "section.json").write_text('{"title": ')


def model_row(mid: str, kind: str = "dense", seed: int = 0, **fields) -> ModelRow:
    """A model row for tests of the measures: what a test does not set is a placeholder."""
    return ModelRow(
        **{
            "id": mid,
            "label": mid,
            "kind": kind,
            "d_model": 64,
            "density": 1.0 if kind == "dense" else 0.25,
            "seed": seed,
            "n_layer": 1,
            "dir": f"models/{mid}",
            "total_params": 0,
            "nonzero_params": 0,
            "matrix_nonzero": 0,
            "heldout_loss": None,
        }
        | fields
    )


def circuit_row(model: str, task: str, status: str = "ok", **fields) -> CircuitRow:
    """A circuit row for tests of the measures (target loss 0.3 unless set)."""
    return CircuitRow(model=model, task=task, status=status, **{"target_loss": 0.3} | fields)


def eligibility_row(model: str, task: str, reaches: bool = True, **fields) -> EligibilityRow:
    """A full model on a task for tests of the frontier rule: the metrics a test does not
    set are placeholders."""
    metrics = dict(loss=0.1, accuracy=1.0, loss_calibrated=0.1, accuracy_calibrated=0.95)
    return EligibilityRow(
        model=model,
        task=task,
        reaches=reaches,
        **{"target_loss": 0.3, "loss_se": None, "train_loss_calibrated": 0.1} | metrics | fields,
    )


def tiny_study_config(corpus_dir, task, steps: int = 8, every: int = 4, **changes) -> StudyConfig:
    """A study of smoke-sized models trained `steps` steps on the test corpus, pruning one
    task file. A tiny model is at chance: a target above chance and no accuracy bar let
    every step of the pipeline run (the rules themselves are tested on synthetic rows).
    `every`: steps between evaluations and checkpoints."""
    fields = dict(
        preset="test",
        base_preset="smoke",
        train_overrides=dict(
            data=[str(corpus_dir)],
            vocab_size=300,
            n_ctx=16,
            n_layer=1,
            steps=steps,
            batch_size=4,
            eval_every=every,
            eval_batches=2,
            checkpoint_every=every,
        ),
        base_width=32,
        densities=[0.5, 0.25],
        fixed_l0_density=0.25,
        l0_widths=[32, 64],
        dense_widths=[32],
        tasks=[str(task)],
        seeds=1,
        target_loss=10.0,
        min_accuracy=0.0,
        k_coefs=[1e-3, 1e-2],
        # at chance, the empty circuit "does" any task at a target above chance
        prune=dict(
            steps=5,
            n_train=4,
            n_select=2,
            n_test=4,
            random_draws=2,
            effect_pairs=2,
            example_pairs=1,
            refuse_trivial=False,
        ),
    )
    return StudyConfig(**{**fields, **changes})
