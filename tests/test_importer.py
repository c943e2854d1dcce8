"""The importer against an independent forward pass written from the format note.

Checkpoints are built here in the reference format (random tensors under the reference
names, `torch.save` of a plain dict, a `beeg_config.json`), so the test needs no download
and no reference code; `reference_forward` reads only the raw reference state dict.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models

import sparsecircuits
from sparsecircuits.cli import main
from sparsecircuits.errors import UserError
from sparsecircuits.importer import import_openai

BASE = dict(
    block_size=16,
    vocab_size=37,
    n_layer=2,
    n_head=2,
    d_head=8,  # n_head * d_head = 16 != d_model: the two must not be conflated
    d_model=12,
    dropout=0.0,
    bias=True,
    ln_bias=True,
    rms_norm=True,
    residual_activation_type="identity",
    activation_type="gelu",
    afrac=None,
    afrac_loctypes="attn_in,attn_out,mlp_in,mlp_out",
    tied_unembed=False,
    tokenizer_name="tinypython_2k",
    d_mlp=None,
    enable_bigram_table=True,
    learnable_bigram_table=True,
    d_pos_emb=None,
    sink=True,
    enable_sparse_kernels=False,
    debug_nans=False,
    grad_checkpointing=False,
    flash=True,
)


def reference_state(cfg: dict, wpe=True, final_bias=False, lm_head=True, seed=0) -> dict:
    """Random tensors with the names and shapes of the format note."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=g)

    d, v = cfg["d_model"], cfg["vocab_size"]
    width = cfg["n_head"] * (cfg["d_head"] or d // cfg["n_head"])
    d_mlp = cfg.get("d_mlp", cfg.get("n_mlp")) or 4 * d
    sd = {"transformer.wte.weight": rand(v, d, scale=1.0)}
    if wpe:
        sd["transformer.wpe.weight"] = rand(cfg["block_size"], d)

    def norm(name):
        sd[f"{name}.weight"] = rand(d, scale=0.1, offset=1.0)
        if not cfg["rms_norm"] and cfg["ln_bias"]:
            sd[f"{name}.bias"] = rand(d, scale=0.1)

    def linear(name, n_out, n_in):
        sd[f"{name}.weight"] = rand(n_out, n_in, scale=1 / math.sqrt(n_in))
        if cfg["bias"]:
            sd[f"{name}.bias"] = rand(n_out, scale=0.1)

    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}"
        norm(f"{h}.ln_1")
        linear(f"{h}.attn.c_attn", 3 * width, d)
        linear(f"{h}.attn.c_proj", d, width)
        if cfg["sink"]:
            sd[f"{h}.attn.attn_imp.sink_logit"] = rand(cfg["n_head"], scale=1.0)
        norm(f"{h}.ln_2")
        linear(f"{h}.mlp.c_fc", d_mlp, d)
        linear(f"{h}.mlp.c_proj", d, d_mlp)
    norm("transformer.ln_f")
    if not cfg["tied_unembed"]:
        sd["lm_head.weight"] = rand(v, d)
    elif lm_head:  # tied weights saved under both names, one tensor, as nanoGPT does
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    if final_bias:
        sd["final_logits_bias"] = rand(v)
    if cfg["enable_bigram_table"]:
        sd["bigram_table"] = rand(v, v)
    return sd


def write_reference(path, cfg: dict, sd: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "beeg_config.json").write_text(json.dumps(cfg))
    torch.save(sd, path / "final_model.pt")
    return path


def reference_forward(cfg: dict, sd: dict, idx: torch.Tensor) -> torch.Tensor:
    """The format note's forward pass, written out directly on the raw reference tensors."""
    B, T = idx.shape
    nh = cfg["n_head"]
    dh = cfg["d_head"] or cfg["d_model"] // nh
    width = nh * dh
    sites = set(cfg["afrac_loctypes"].split(",")) if cfg["afrac"] is not None else set()

    def topk(x, site):
        if site not in sites:
            return x
        k = max(1, int(cfg["afrac"] * x.shape[-1]))
        kth_largest = x.abs().sort(dim=-1, descending=True).values[..., k - 1 : k]
        return torch.where(x.abs() >= kth_largest, x, torch.zeros_like(x))

    def norm(x, name):
        if cfg["rms_norm"]:
            eps = torch.finfo(x.dtype).eps
            return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * sd[f"{name}.weight"]
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"]
        return y + sd[f"{name}.bias"] if cfg["ln_bias"] else y

    def linear(x, name):
        y = x @ sd[f"{name}.weight"].T
        return y + sd[f"{name}.bias"] if cfg["bias"] else y

    def act(x):
        if cfg["activation_type"] == "relu":
            return x.clamp(min=0)
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def resid(x):
        return x.clamp(min=0) if cfg["residual_activation_type"] == "relu" else x

    x = sd["transformer.wte.weight"][idx]
    if "transformer.wpe.weight" in sd:
        x = x + sd["transformer.wpe.weight"][:T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}"
        qkv = linear(topk(norm(x, f"{h}.ln_1"), "attn_in"), f"{h}.attn.c_attn")
        q, k, v = (
            topk(qkv[..., j * width : (j + 1) * width], site).view(B, T, nh, dh).transpose(1, 2)
            for j, site in enumerate(("attn_q", "attn_k", "attn_v"))
        )
        scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(future, -math.inf)
        if cfg["sink"]:
            sink = sd[f"{h}.attn.attn_imp.sink_logit"].view(1, nh, 1, 1)  # logit vs a zero score
            scores = torch.cat([scores, sink.expand(B, nh, T, 1)], dim=-1)
            v = torch.cat([v, torch.zeros(B, nh, 1, dh)], dim=2)
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, width)
        x = topk(resid(x + topk(linear(z, f"{h}.attn.c_proj"), "attn_out")), "resid_post_attn")
        m = topk(act(linear(topk(norm(x, f"{h}.ln_2"), "mlp_in"), f"{h}.mlp.c_fc")), "mlp_neuron")
        x = topk(resid(x + topk(linear(m, f"{h}.mlp.c_proj"), "mlp_out")), "resid_post_mlp")
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    logits = norm(x, "transformer.ln_f") @ head.T
    if "final_logits_bias" in sd:
        logits = logits + sd["final_logits_bias"]
    if "bigram_table" in sd:
        logits = logits + sd["bigram_table"][idx]
    return logits


ALL_SITES = (
    "attn_in,attn_q,attn_k,attn_v,attn_out,mlp_in,mlp_neuron,mlp_out,resid_post_attn,resid_post_mlp"
)
# (config overrides, state options); together they cover every option the format names.
CASES = {
    "rms-dense-sink-bigram": ({}, {}),
    "layernorm-relu-tied-finalbias-nowpe": (
        dict(
            rms_norm=False,
            bias=False,
            sink=False,
            enable_bigram_table=False,
            activation_type="relu",
            residual_activation_type="relu",
            tied_unembed=True,
            d_head=None,
            n_head=3,
            afrac=0.5,
            afrac_loctypes="attn_in,attn_q,attn_k,attn_v,attn_out,mlp_in,mlp_neuron,mlp_out",
        ),
        dict(wpe=False, final_bias=True),
    ),
    "layernorm-nobias-qkv-resid-sparsity-tied-wte-only": (
        dict(
            rms_norm=False,
            ln_bias=False,
            afrac=0.25,
            afrac_loctypes="attn_q,attn_k,attn_v,resid_post_attn,resid_post_mlp",
            tied_unembed=True,
            d_mlp=20,
            dropout=0.1,
            some_future_key="ignored",
        ),
        dict(lm_head=False, final_bias=True),
    ),
    "rms-all-sites-resid-relu-old-n_mlp": (
        dict(
            afrac=0.4,
            afrac_loctypes=ALL_SITES,
            residual_activation_type="relu",
            n_layer=3,
            n_mlp=24,
        ),
        dict(final_bias=True),
    ),
    "rms-nobias-nosink-resid-sites-only": (
        dict(
            bias=False,
            sink=False,
            d_head=None,
            afrac=0.5,
            afrac_loctypes="resid_post_attn,resid_post_mlp",
            activation_type="relu",
        ),
        dict(wpe=False),
    ),
}


def _case(name):
    overrides, state_opts = CASES[name]
    cfg = {**BASE, **overrides}
    if "n_mlp" in overrides:
        del cfg["d_mlp"]
    return cfg, reference_state(cfg, **state_opts)


@pytest.mark.parametrize("name", CASES)
def test_logits_match_reference_forward(tmp_path, name):
    cfg, sd = _case(name)
    src = write_reference(tmp_path / "src", cfg, sd)
    out = import_openai(src, tmp_path / "out")
    model, tok = sparsecircuits.load(out)
    assert tok is None
    assert model.cfg.pos_emb == ("transformer.wpe.weight" in sd)
    assert model.cfg.final_bias == ("final_logits_bias" in sd)
    assert model.cfg.bigram_table == cfg["enable_bigram_table"]
    assert (model.unembed is None) == cfg["tied_unembed"]

    idx = torch.randint(
        0, cfg["vocab_size"], (3, cfg["block_size"]), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours = model(idx)
    expected = reference_forward(cfg, sd, idx)
    assert ours.shape == expected.shape == (3, cfg["block_size"], cfg["vocab_size"])
    assert (ours - expected).abs().max().item() < 1e-4

    # Non-vacuous: the logits vary, and the comparison notices one changed weight.
    assert expected.std().item() > 0.1
    sd["transformer.h.1.mlp.c_fc.weight"][0] += 1.0
    assert (ours - reference_forward(cfg, sd, idx)).abs().max().item() > 1e-3


def test_tokenizer_is_stored(tmp_path):
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    tok_path = tmp_path / "tok.json"
    Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]")).save(str(tok_path))
    _, tok = sparsecircuits.load(import_openai(src, tmp_path / "out", tokenizer=str(tok_path)))
    assert tok is not None and tok.get_vocab_size() == 3


def test_force_replaces_existing_checkpoint(tmp_path):
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    out = import_openai(src, tmp_path / "out")
    with pytest.raises(UserError, match="already holds a checkpoint"):
        import_openai(src, out)
    sd["bigram_table"] += 1.0
    write_reference(src, cfg, sd)
    import_openai(src, out, force=True)
    model, _ = sparsecircuits.load(out)
    assert torch.equal(model.bigram.detach(), sd["bigram_table"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def _corrupt_config(**changes):
    def edit(cfg, sd):
        cfg.update(changes)

    return edit


def _drop_config(key):
    def edit(cfg, sd):
        del cfg[key]

    return edit


def _edit_state(fn):
    def edit(cfg, sd):
        fn(sd)

    return edit


def _write_bytes(name, data):
    def edit(cfg, sd, src):
        (src / name).write_bytes(data(src / name))

    return edit


# name -> (edit of (cfg, sd) before writing, or of the written folder; the file the message
# must name; a word the message must contain)
BAD_CONFIGS = {
    "missing-required-key": (_drop_config("n_layer"), "beeg_config.json", "n_layer"),
    "concatenated-pos-emb": (_corrupt_config(d_pos_emb=4), "beeg_config.json", "d_pos_emb"),
    "unknown-activation": (
        _corrupt_config(activation_type="swiglu"),
        "beeg_config.json",
        "activation_type",
    ),
    "unknown-residual-activation": (
        _corrupt_config(residual_activation_type="tanh"),
        "beeg_config.json",
        "residual_activation_type",
    ),
    "unknown-afrac-site": (
        _corrupt_config(afrac=0.5, afrac_loctypes="attn_q,attn_z"),
        "beeg_config.json",
        "attn_z",
    ),
    "bad-afrac": (_corrupt_config(afrac=1.5), "beeg_config.json", "afrac"),
    "wrong-type": (_corrupt_config(n_layer="2"), "beeg_config.json", "n_layer"),
    "d_head-null-indivisible": (
        _corrupt_config(d_head=None, n_head=5),
        "beeg_config.json",
        "d_head",
    ),
    "missing-tensor": (
        _edit_state(lambda sd: sd.pop("transformer.h.1.mlp.c_fc.weight")),
        "final_model.pt",
        "transformer.h.1.mlp.c_fc.weight",
    ),
    "wrong-shape": (
        _edit_state(
            lambda sd: sd.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(3, 12)})
        ),
        "final_model.pt",
        "transformer.h.0.attn.c_attn.weight",
    ),
    "sink-not-in-config": (
        _corrupt_config(sink=False),
        "final_model.pt",
        "transformer.h.0.attn.attn_imp.sink_logit",
    ),
    "bias-missing": (
        _edit_state(lambda sd: sd.pop("transformer.h.0.attn.c_proj.bias")),
        "final_model.pt",
        "transformer.h.0.attn.c_proj.bias",
    ),
    "bigram-disabled-but-present": (
        _corrupt_config(enable_bigram_table=False),
        "final_model.pt",
        "bigram_table",
    ),
    "tied-but-different": (
        _corrupt_config(tied_unembed=True),
        "final_model.pt",
        "lm_head.weight",
    ),
}
BAD_FILES = {
    "config-not-json": (
        _write_bytes("beeg_config.json", lambda p: b"{not json"),
        "beeg_config.json",
        "JSON",
    ),
    "weights-truncated": (
        _write_bytes("final_model.pt", lambda p: p.read_bytes()[:-200]),
        "final_model.pt",
        "corrupt",
    ),
    "weights-garbage": (
        _write_bytes("final_model.pt", lambda p: b"not a torch file"),
        "final_model.pt",
        "corrupt",
    ),
    "weights-not-a-state-dict": (
        lambda cfg, sd, src: torch.save({"step": 3, "note": "x"}, src / "final_model.pt"),
        "final_model.pt",
        "state dict",
    ),
    "config-missing": (
        lambda cfg, sd, src: (src / "beeg_config.json").unlink(),
        "beeg_config.json",
        "not found",
    ),
    "weights-missing": (
        lambda cfg, sd, src: (src / "final_model.pt").unlink(),
        "final_model.pt",
        "not found",
    ),
}


def _assert_clean_failure(tmp_path, out, src, fname, word, **kwargs):
    with pytest.raises(UserError) as e:
        import_openai(src, out, **kwargs)
    msg = str(e.value)
    assert fname in msg and word in msg and "\n" not in msg, msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temp folder left


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_bad_config_or_state(tmp_path, name):
    edit, fname, word = BAD_CONFIGS[name]
    cfg, sd = _case("rms-dense-sink-bigram")
    edit(cfg, sd)
    src = write_reference(tmp_path / "src", cfg, sd)
    _assert_clean_failure(tmp_path, tmp_path / "out", src, fname, word)


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files(tmp_path, name):
    edit, fname, word = BAD_FILES[name]
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    edit(cfg, sd, src)
    _assert_clean_failure(tmp_path, tmp_path / "out", src, fname, word)


def test_missing_src_folder(tmp_path):
    (tmp_path / "src").mkdir()
    _assert_clean_failure(tmp_path, tmp_path / "out", tmp_path / "src" / "nope", "nope", "folder")


def test_bad_tokenizer(tmp_path):
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    big = tmp_path / "src" / "big.json"
    vocab = {f"t{i}": i for i in range(cfg["vocab_size"] + 1)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(big))
    _assert_clean_failure(tmp_path, tmp_path / "out", src, "big.json", "vocab", tokenizer=str(big))
    missing = str(tmp_path / "src" / "none.json")
    _assert_clean_failure(
        tmp_path, tmp_path / "out", src, "none.json", "not found", tokenizer=missing
    )


def test_refuses_to_replace_other_folder(tmp_path):
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        import_openai(src, out, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli(tmp_path, capsys):
    cfg, sd = _case("rms-dense-sink-bigram")
    src = write_reference(tmp_path / "src", cfg, sd)
    out = tmp_path / "out"
    assert main(["import-openai", str(src), "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    capsys.readouterr()

    assert main(["import-openai", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(out) in err

    (src / "final_model.pt").write_bytes(b"truncated")
    assert main(["import-openai", str(src), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "final_model.pt" in err
    assert not (tmp_path / "out2").exists()


def test_compile_prefix_and_causal_mask_buffer_are_ignored(tmp_path):
    import torch as _torch

    from sparsecircuits.importer import _load_state

    path = tmp_path / "final_model.pt"
    _torch.save(
        {
            "_orig_mod.transformer.wte.weight": _torch.zeros(2, 2),
            "transformer.h.0.attn.bias": _torch.ones(1, 1, 4, 4),
            "transformer.h.0.attn.c_attn.bias": _torch.zeros(6),
        },
        path,
    )
    assert sorted(_load_state(path)) == [
        "transformer.h.0.attn.c_attn.bias",
        "transformer.wte.weight",
    ]
