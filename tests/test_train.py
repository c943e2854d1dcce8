import importlib
import json

import pytest
import torch

from conftest import tiny_configs
from sparsecircuits import corpus, load
from sparsecircuits.checkpoint import load_tensors
from sparsecircuits.cli import main
from sparsecircuits.errors import UserError
from sparsecircuits.sparsity import density_report
from sparsecircuits.train import lr_at, train

train_module = importlib.import_module("sparsecircuits.train")  # the package exports a train()


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_loadable_checkpoint_and_metrics(tmp_path, corpus_dir):
    m, t = tiny_configs(corpus_dir, steps=30, lr=0.05, density=0.25, anneal_frac=0.5, save_every=10)
    run = train(m, t, tmp_path / "run", progress=False)
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert {"step", "tokens", "train_loss", "lr", "density"} <= set(rows[0])
    assert [r["step"] for r in rows if "heldout_loss" in r] == [6, 12, 18, 24, 30]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["density"] < 1.0 and rows[-1]["density"] == 0.25
    model, tok = load(run)
    assert tok is not None and tok.get_vocab_size() == 300
    dens = {r["name"]: r for r in density_report(model)}
    q = dens["blocks.0.attn.q_proj.weight"]
    assert q["nonzero"] == max(round(0.25 * q["numel"]), 32 * 4)
    snaps = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert snaps == ["step_0000000", "step_0000010", "step_0000020", "step_0000030"]
    early, _ = load(run / "checkpoints" / "step_0000010")
    assert not torch.equal(early.blocks[0].attn.q_proj.weight, model.blocks[0].attn.q_proj.weight)


def test_same_seed_same_weights_other_seed_differs(tmp_path, corpus_dir):
    m, t = tiny_configs(corpus_dir)
    a = load_tensors(train(m, t, tmp_path / "a", progress=False) / "model.safetensors")
    b = load_tensors(train(m, t, tmp_path / "b", progress=False) / "model.safetensors")
    m2, t2 = tiny_configs(corpus_dir, seed=1)
    c = load_tensors(train(m2, t2, tmp_path / "c", progress=False) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.q_proj.weight"], c["blocks.0.attn.q_proj.weight"])


def test_bf16_precision_is_deterministic_and_close_to_fp32(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)  # any CPU runs it
    m, t = tiny_configs(corpus_dir, precision="bf16")
    a = load_tensors(train(m, t, tmp_path / "a", progress=False) / "model.safetensors")
    b = load_tensors(train(m, t, tmp_path / "b", progress=False) / "model.safetensors")
    m32, t32 = tiny_configs(corpus_dir)
    c = load_tensors(train(m32, t32, tmp_path / "c", progress=False) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values())  # master weights stay fp32
    w = "blocks.0.attn.q_proj.weight"
    assert not torch.equal(a[w], c[w])  # autocast really ran
    losses = [
        json.loads(line)["train_loss"]
        for d in ("a", "c")
        for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1:]
    ]
    assert abs(losses[0] - losses[1]) < 0.05 * losses[1]


def test_bf16_without_native_support_trains_in_fp32_and_records_it(
    tmp_path, corpus_dir, monkeypatch, capsys
):
    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    monkeypatch.setattr(train_module, "_FP32_SAID", set())  # as in a fresh process
    m, t = tiny_configs(corpus_dir, precision="bf16")
    a = load_tensors(train(m, t, tmp_path / "a", progress=False) / "model.safetensors")
    assert "training in fp32" in capsys.readouterr().err
    train(m, t, tmp_path / "b", progress=False)  # a second model in the same process
    assert "training in fp32" not in capsys.readouterr().err  # said once, not per model
    m32, t32 = tiny_configs(corpus_dir)
    c = load_tensors(train(m32, t32, tmp_path / "c", progress=False) / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["precision"] == "fp32"


def test_resume_after_interruption_matches_uninterrupted(tmp_path, corpus_dir, monkeypatch):
    m, t = tiny_configs(corpus_dir, steps=12, checkpoint_every=4)
    full = train(m, t, tmp_path / "full", progress=False)

    real_batch = corpus.TokenData.batch

    def dying_batch(self, split, bs, n_ctx, seed, step):
        if split == "train" and step == 9:
            raise KeyboardInterrupt
        return real_batch(self, split, bs, n_ctx, seed, step)

    monkeypatch.setattr(corpus.TokenData, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(m, t, tmp_path / "cut", progress=False)
    assert max(r["step"] for r in metrics(tmp_path / "cut")) == 9
    monkeypatch.setattr(corpus.TokenData, "batch", real_batch)
    with pytest.raises(UserError, match="already holds a run"):
        train(m, t, tmp_path / "cut", progress=False)
    train(m, t, tmp_path / "cut", resume=True, progress=False)

    a = load_tensors(full / "model.safetensors")
    b = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics(full)) == strip(metrics(tmp_path / "cut"))


def test_resume_with_another_config_is_refused(tmp_path, corpus_dir):
    m, t = tiny_configs(corpus_dir, steps=4)
    train(m, t, tmp_path / "r", progress=False)
    m2, t2 = tiny_configs(corpus_dir, steps=4, lr=0.5)
    with pytest.raises(UserError, match=r"different config \(train.lr\)"):
        train(m2, t2, tmp_path / "r", resume=True, progress=False)


def test_lr_schedule_warmup_decay_and_density_factor():
    _, t = tiny_configs(".", steps=100, lr=1.0, warmup_frac=0.1)
    assert lr_at(0, t, 1.0) == pytest.approx(0.1)
    assert lr_at(9, t, 1.0) == pytest.approx(1.0)
    assert lr_at(99, t, 1.0) == pytest.approx(0.0)
    assert lr_at(9, t, 0.25) == pytest.approx(2.0)


def test_dense_model_is_the_same_code_with_density_one(tmp_path, corpus_dir):
    m, t = tiny_configs(corpus_dir, density=1.0)
    model, _ = load(train(m, t, tmp_path / "dense", progress=False))
    assert all(r["density"] == 1.0 for r in density_report(model) if r["kind"] == "matrix")


def test_cli_train_eval_sample(tmp_path, corpus_dir, capsys):
    out = tmp_path / "cli"
    args = [
        "train",
        "--preset",
        "smoke",
        "--data",
        str(corpus_dir),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "vocab_size=300",
        "steps=6",
        "eval_every=3",
        "eval_batches=1",
        "batch_size=4",
    ]
    assert main(args) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert main(["eval", str(out), "--batches", "2", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "held-out loss:" in text and "blocks.0.attn.q_proj.weight" in text
    assert main(["sample", str(out), "--prompt", "def ", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    # an existing run is not overwritten without --resume
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already holds a run" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 5),
            "model.safetensors: corrupt or truncated",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:-200]
            ),
            "model.safetensors: corrupt or truncated",
        ),
        (
            lambda d: (d / "tokenizer.json").write_text("{"),
            "tokenizer.json: not a valid tokenizer.json",
        ),
        (
            lambda d: (d / "config.json").write_text('{"model": {"d_modle": 3}}'),
            "unknown model config key",
        ),
    ],
)
def test_damaged_checkpoints_give_one_line_errors(tmp_path, corpus_dir, capsys, damage, words):
    m, t = tiny_configs(corpus_dir, steps=2)
    run = train(m, t, tmp_path / "r", progress=False)
    damage(run)
    with pytest.raises(UserError, match=words):
        load(run)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_bad_cli_input_exit_code_2(tmp_path, capsys):
    assert (
        main(["train", "--preset", "smoke", "--set", "density=2", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "density must be in (0, 1]" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "train",
                "--preset",
                "smoke",
                "--data",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "no UTF-8 text files found" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_same_seed_same_weights_at_a_multithreaded_size(tmp_path, corpus_dir, monkeypatch):
    """Tiny shapes run single-threaded kernels; these are large enough for the parallel,
    order-dependent ones that deterministic mode must pin down. The thread count is part of
    the configuration: pinned at 2, so a busy machine (where the adaptive count drops to 1
    for one run and not the other) cannot change the reduction order between the runs."""
    from sparsecircuits import threads

    monkeypatch.setitem(threads._state, "fixed", True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    m, t = tiny_configs(corpus_dir, d_model=64, n_ctx=64, batch_size=32, steps=6, n_layer=1)
    a = load_tensors(train(m, t, tmp_path / "a", progress=False) / "model.safetensors")
    b = load_tensors(train(m, t, tmp_path / "b", progress=False) / "model.safetensors")
    torch.set_num_threads(before)
    assert all(torch.equal(a[k], b[k]) for k in a)
