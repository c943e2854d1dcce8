import json

import pytest
import torch

from conftest import tiny_configs, write_quote_task
from sparsecircuits import load, train
from sparsecircuits.circuit import SCHEMA_VERSION, Circuit, circuit_edges
from sparsecircuits.cli import main
from sparsecircuits.config import ModelConfig
from sparsecircuits.errors import UserError
from sparsecircuits.model import SparseGPT
from sparsecircuits.nodes import MEANS_FILE, ablation_hooks, node_sites, parse_node
from sparsecircuits.prune import TargetUnreachable, calibrate, prune
from sparsecircuits.pruning import PruneConfig
from sparsecircuits.tasks import get_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_dir):
    import os

    os.environ.setdefault("SPARSECIRCUITS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # 200 steps: enough to fit the quote pairs (30 steps stays at chance, so a target
    # between the full model's loss and chance would leave the search nothing to do)
    m, t = tiny_configs(corpus_dir, steps=200, n_ctx=32, lr=0.02, batch_size=8)
    return train(m, t, tmp_path_factory.mktemp("m") / "run", progress=False)


@pytest.fixture()
def quote_task(tmp_path):
    return write_quote_task(tmp_path / "quotes.jsonl")


def reachable_target(model_dir, task, data=None) -> float:
    """A target between the full model's loss and chance, so the search has work to do."""
    cfg = PruneConfig(method="random", target_loss=1e-9, random_draws=0)
    with pytest.raises(TargetUnreachable) as e:
        prune(model_dir, task, cfg, progress=False, data=data)
    return e.value.full_loss + 0.5 * (1.3863 - e.value.full_loss)


def test_prune_end_to_end_and_circuit_json(trained, quote_task, tmp_path):
    target = reachable_target(trained, quote_task)
    cfg = PruneConfig(
        method="masks", target_loss=target, steps=40, random_draws=3, n_train=8, n_test=4
    )
    c = prune(trained, quote_task, cfg, progress=False)
    assert (trained / MEANS_FILE).exists()
    assert 0 < c.n_nodes < c.n_nodes_total == sum(s.width for s in node_sites(c_model(trained)))
    assert c.examples and set(c.examples[0]["activations"]) <= {n.name for n in c.nodes}
    assert set(c.node_effects) == {n.name for n in c.nodes}
    assert c.bisection and min(h["k"] for h in c.bisection if h["loss"] <= target) == c.n_nodes
    assert c.metrics["circuit"]["loss_calibrated"] is not None
    assert {"full", "circuit", "ablated", "random"} <= set(c.metrics)
    assert c.metrics["random"]["draws"] == 3
    names = {n.name for n in c.nodes}
    for e in c.edges:  # edges join kept nodes through nonzero weights
        assert e.src in names and e.dst in names and e.weight != 0
    for n in c.nodes:
        assert n.name.startswith(f"blocks.{n.layer}.") and parse_node(n.name)[1] == n.index
    path = c.save(tmp_path / "circuit.json")
    again = Circuit.load(path)
    assert (
        again.n_nodes == c.n_nodes
        and again.n_edges == c.n_edges
        and again.schema_version == SCHEMA_VERSION
    )
    d = json.loads(path.read_text())
    assert d["n_nodes"] == c.n_nodes and d["n_edges"] == c.n_edges
    # deterministic under the seed
    c2 = prune(trained, quote_task, cfg, progress=False)
    assert [n.name for n in c2.nodes] == [n.name for n in c.nodes]


def c_model(run):
    return load(run)[0].cfg


@pytest.mark.parametrize("method", ["attribution", "magnitude", "random"])
def test_baselines_share_the_bisection(trained, quote_task, method):
    target = reachable_target(trained, quote_task)
    c = prune(
        trained,
        quote_task,
        PruneConfig(method=method, target_loss=target, random_draws=0, n_train=8, n_test=4),
        progress=False,
    )
    assert c.method == method and c.n_nodes >= 1
    assert c.bisection[-1]["k"] in {h["k"] for h in c.bisection}


def test_node_means_are_cached_and_follow_the_weights(trained, quote_task, monkeypatch):
    from sparsecircuits import nodes

    prune(
        trained,
        quote_task,
        PruneConfig(method="random", target_loss=5, random_draws=0),
        progress=False,
    )

    def fail(*a, **k):
        raise AssertionError("means should come from the cache")

    monkeypatch.setattr(nodes, "compute_node_means", fail)
    prune(
        trained,
        quote_task,
        PruneConfig(method="random", target_loss=5, random_draws=0),
        progress=False,
    )
    (trained / MEANS_FILE).write_bytes(b"garbage")
    with pytest.raises(AssertionError, match="from the cache"):
        prune(
            trained,
            quote_task,
            PruneConfig(method="random", target_loss=5, random_draws=0),
            progress=False,
        )


def test_unreachable_target_says_so(trained, quote_task, capsys, tmp_path):
    with pytest.raises(TargetUnreachable, match="full model's task loss on quotes is"):
        prune(trained, quote_task, PruneConfig(target_loss=1e-9), progress=False)
    rc = main(
        [
            "prune",
            str(trained),
            "--task",
            quote_task,
            "--target-loss",
            "1e-9",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "above the target" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_bad_method_and_task(trained):
    with pytest.raises(UserError, match="unknown method 'magic'"):
        prune(trained, "single_double_quote", PruneConfig(method="magic"), progress=False)
    with pytest.raises(UserError, match="known tasks: single_double_quote"):
        prune(trained, "nope", PruneConfig(), progress=False)


def test_cli_prune_prints_the_table(trained, quote_task, tmp_path, capsys):
    target = reachable_target(trained, quote_task)
    rc = main(
        [
            "prune",
            str(trained),
            "--task",
            quote_task,
            "--target-loss",
            str(target),
            "--method",
            "attribution",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
            "--n-train",
            "8",
            "--n-test",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    for words in (
        "nodes",
        "edges",
        "full model",
        "circuit alone",
        "circuit ablated",
        "random circuits",
    ):
        assert words in out
    assert Circuit.load(tmp_path / "c" / "circuit.json").method == "attribution"


def test_cli_tasks_list_and_show(trained, capsys):
    assert main(["tasks", "list"]) == 0
    assert "single_double_quote" in capsys.readouterr().out
    assert main(["tasks", "show", "for_while", "--examples", "1"]) == 0
    assert "correct" in capsys.readouterr().out
    assert main(["tasks", "show", "nope"]) == 2


def test_masks_of_ones_are_the_identity_and_zeros_ablate():
    torch.manual_seed(0)
    model = SparseGPT(ModelConfig(vocab_size=40, d_model=32, n_layer=2, afrac=None)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sites = node_sites(model.cfg)
    means = {s.hook: torch.randn(s.width) for s in sites}
    x = torch.randint(0, 40, (3, 7))
    ones = {s.hook: torch.ones(s.width) for s in sites}
    assert torch.allclose(
        model.run_with_hooks(x, fwd_hooks=ablation_hooks(sites, means, ones)), model(x), atol=1e-6
    )
    zeros = {s.hook: torch.zeros(s.width) for s in sites}
    seen = {}

    def grab(act, hook):
        seen[hook.name] = act

    hooks = ablation_hooks(sites, means, zeros) + [("blocks.1.attn.hook_q", grab)]
    model.run_with_hooks(x, fwd_hooks=hooks)
    assert torch.allclose(
        seen["blocks.1.attn.hook_q"].flatten(-2), means["blocks.1.attn.hook_q"].expand(3, 7, -1)
    )


def test_edge_count_matches_nonzero_weights():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, d_model=16, n_layer=2, d_head=4, afrac=None)
    model = SparseGPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) < 0.3)
    sites = node_sites(cfg)
    kept = {s.hook: torch.ones(s.width, dtype=torch.bool) for s in sites}
    expected = 0
    for b in model.blocks:
        for lin in (
            b.attn.q_proj,
            b.attn.k_proj,
            b.attn.v_proj,
            b.attn.o_proj,
            b.mlp.fc_in,
            b.mlp.fc_out,
        ):
            expected += int((lin.weight != 0).sum())
    # residual: attn_out0 -> mlp_in0, attn_in1, mlp_in1; mlp_out0 -> attn_in1, mlp_in1; attn_out1 -> mlp_in1
    expected += 6 * 16
    assert len(circuit_edges(model, sites, kept)) == expected
    # keeping nothing at a site removes its edges
    kept["blocks.0.attn.hook_q"][:] = False
    assert len(circuit_edges(model, sites, kept)) == expected - int(
        (model.blocks[0].attn.q_proj.weight != 0).sum()
    )


def test_calibration_only_rescales():
    from sparsecircuits.tasks import TaskBatch

    batch = TaskBatch(
        torch.zeros(4, 2, dtype=torch.long),
        torch.ones(4, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        torch.ones(4, dtype=torch.long),
    )
    diff = torch.tensor([0.1, 0.1, 0.2, 0.2])  # right but timid
    loss, scale, _ = calibrate(diff, batch, 16)
    assert scale > 1 and loss < float(torch.nn.functional.softplus(-diff).view(-1, 2).sum(1).mean())


def test_get_task_used_by_prune_is_deterministic():
    a = get_task("single_double_quote", 8, 8, seed=3)
    b = get_task("single_double_quote", 8, 8, seed=3)
    assert a.test == b.test


def test_prune_an_imported_reference_checkpoint(tmp_path, corpus_dir, quote_task):
    from sparsecircuits.corpus import prepare
    from sparsecircuits.importer import import_openai
    from sparsecircuits.tokenizer import save_tokenizer
    from test_importer import BASE, reference_state, write_reference

    tok = prepare([str(corpus_dir)], 300, 0.1).tokenizer
    save_tokenizer(tok, tmp_path / "tok.json")
    cfg = {**BASE, "vocab_size": 300, "block_size": 32, "afrac": 0.5}
    src = write_reference(tmp_path / "ref", cfg, reference_state(cfg))
    out = import_openai(src, tmp_path / "imported", tokenizer=str(tmp_path / "tok.json"))
    target = reachable_target(out, quote_task, data=[str(corpus_dir)])
    c = prune(
        out,
        quote_task,
        PruneConfig(method="attribution", target_loss=target, random_draws=2),
        progress=False,
        data=[str(corpus_dir)],
    )
    assert 1 <= c.n_nodes < c.n_nodes_total and (out / MEANS_FILE).exists()
