import contextlib
import subprocess
import sys

import pytest
import torch

import sparsecircuits.model as model_module
from sparsecircuits import fused
from sparsecircuits.checkpoint import save_checkpoint
from sparsecircuits.config import ACT_SITES, ModelConfig
from sparsecircuits.model import SparseGPT, abs_topk

TL_NAMES = [
    "hook_embed",
    "blocks.{l}.hook_resid_pre",
    "blocks.{l}.hook_resid_mid",
    "blocks.{l}.hook_resid_post",
    "blocks.{l}.ln1.hook_normalized",
    "blocks.{l}.ln2.hook_normalized",
    "blocks.{l}.attn.hook_q",
    "blocks.{l}.attn.hook_k",
    "blocks.{l}.attn.hook_v",
    "blocks.{l}.attn.hook_attn_scores",
    "blocks.{l}.attn.hook_pattern",
    "blocks.{l}.attn.hook_z",
    "blocks.{l}.hook_attn_out",
    "blocks.{l}.mlp.hook_pre",
    "blocks.{l}.mlp.hook_post",
    "blocks.{l}.hook_mlp_out",
    "ln_final.hook_normalized",
]


def small(**kw) -> SparseGPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=61, n_ctx=12, d_model=32, n_layer=2)
    cfg.update(kw)
    model = SparseGPT(ModelConfig(**cfg))
    with torch.no_grad():  # a trained-looking model: zero-initialised parts would hide bugs
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tokens(n=2, t=10, vocab=61):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(1))


def test_forward_shapes_and_loss():
    model = small()
    logits = model(tokens())
    assert logits.shape == (2, 10, 61)
    logits2, loss = model(tokens(), return_type="both")
    assert torch.equal(logits, logits2)
    assert loss.ndim == 0 and loss > 0


def test_transformerlens_hook_names_and_shapes():
    model = small()
    names = set(model.hook_names())
    for layer in range(2):
        for n in TL_NAMES:
            assert n.format(l=layer) in names
    _, cache = model.run_with_cache(tokens())
    assert cache["blocks.0.attn.hook_q"].shape == (2, 10, 2, 16)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 2, 10, 10)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 10, 128)
    assert cache["blocks.0.hook_resid_post"].shape == (2, 10, 32)
    # the residual stream adds up
    b0 = "blocks.0."
    assert torch.allclose(
        cache[b0 + "hook_resid_pre"] + cache[b0 + "hook_attn_out"], cache[b0 + "hook_resid_mid"]
    )
    assert torch.allclose(
        cache[b0 + "hook_resid_mid"] + cache[b0 + "hook_mlp_out"], cache[b0 + "hook_resid_post"]
    )
    assert torch.equal(cache[b0 + "hook_resid_post"], cache["blocks.1.hook_resid_pre"])


def test_names_filter_forms():
    model = small()
    _, c = model.run_with_cache(tokens(), names_filter="blocks.0.attn.hook_v")
    assert list(c) == ["blocks.0.attn.hook_v"]
    _, c = model.run_with_cache(tokens(), names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(c) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    _, c = model.run_with_cache(tokens(), names_filter=["hook_embed", "ln_final.hook_normalized"])
    assert len(c) == 2


def test_hook_replacement_changes_output_and_hooks_are_removed():
    model = small()
    x = tokens()
    clean = model(x)

    def kill_channel(act, hook):
        act = act.clone()
        act[..., 0, :] = 0  # head 0 of q
        return act

    patched = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_q", kill_channel)])
    assert not torch.allclose(clean, patched)
    assert torch.equal(model(x), clean)  # hooks gone after the call
    assert all(not h.has_hooks for h in model.hook_dict.values())


def test_hooks_removed_even_when_the_hook_raises():
    model = small()

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        model.run_with_hooks(tokens(), fwd_hooks=[("hook_embed", boom)])
    assert all(not h.has_hooks for h in model.hook_dict.values())


def test_backward_hooks_and_cached_gradients_match_plain_autograd():
    """incl_bwd caches each activation's gradient; a bwd hook sees (and may replace) the
    same gradient torch.autograd computes for that activation."""
    model = small(afrac=None)
    x = tokens()
    name = "blocks.0.hook_resid_mid"

    def loss_of(logits):
        return logits[:, -1].logsumexp(-1).sum()

    # plain autograd: keep the activation, differentiate the loss with respect to it
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept["act"] = act

    loss_of(model.run_with_hooks(x, fwd_hooks=[(name, keep)])).backward()
    want = kept["act"].grad.clone()
    model.zero_grad()

    _, cache = model.run_with_cache(x, incl_bwd=True, backward_of=loss_of)
    assert torch.allclose(cache[name + "_grad"], want, atol=1e-6)
    assert cache[name].shape == cache[name + "_grad"].shape
    model.zero_grad()

    seen = []
    model.run_with_hooks(
        x, bwd_hooks=[(name, lambda g, h: seen.append((h.name, g)))], backward_of=loss_of
    )
    assert seen[0][0] == name and torch.allclose(seen[0][1], want, atol=1e-6)
    assert all(not h.has_hooks for h in model.hook_dict.values())
    model.zero_grad()

    # a bwd hook that zeroes the gradient there cuts every parameter upstream of it off
    model.run_with_hooks(
        x, bwd_hooks=[(name, lambda g, h: torch.zeros_like(g))], backward_of=loss_of
    )
    grad = model.blocks[0].attn.q_proj.weight.grad
    assert grad is None or not grad.any()


def test_the_activation_cache_reads_like_transformerlens():
    model = small()
    _, cache = model.run_with_cache(tokens())
    assert torch.equal(cache["q", 0], cache["blocks.0.attn.hook_q"])
    assert torch.equal(cache["embed"], cache["hook_embed"])
    stacked = cache.stack_activation("resid_post")
    assert stacked.shape == (2, 2, 10, 32)
    assert torch.equal(stacked[1], cache["blocks.1.hook_resid_post"])
    resid = cache.accumulated_resid()
    assert resid.shape[0] == 3 and torch.equal(resid[-1], cache["resid_post", 1])
    one = model.run_with_cache(tokens()[:1])[1].remove_batch_dim()
    assert one["q", 0].shape == (10, 2, 16)
    with pytest.raises(KeyError, match="per-layer site"):
        cache["q"]
    with pytest.raises(KeyError, match="not in the cache"):
        model.run_with_cache(tokens(), names_filter="hook_embed")[1]["q", 0]


def test_unknown_hook_name_is_reported():
    with pytest.raises(KeyError, match="no hook point named"):
        small().run_with_hooks(tokens(), fwd_hooks=[("blocks.9.hook_q", lambda a, h: a)])


@pytest.mark.parametrize(
    "hook, axis_size",
    [
        ("blocks.0.ln1.hook_normalized", 32),  # residual read into attention
        ("blocks.0.ln2.hook_normalized", 32),  # residual read into the MLP
        ("blocks.0.attn.hook_k", 32),  # k channels, as [head, d_head]
        ("blocks.0.mlp.hook_post", 128),  # MLP neurons
        ("blocks.0.hook_attn_out", 32),  # residual write
        ("blocks.0.hook_mlp_out", 32),
    ],
)
def test_every_node_site_is_reachable_channel_by_channel(hook, axis_size):
    model = small(afrac=None)
    x = tokens()
    clean = model(x)
    _, cache = model.run_with_cache(x, names_filter=hook)
    act = cache[hook]
    assert act.flatten(2).shape[-1] == axis_size

    def ablate_one(a, h):
        flat = a.flatten(2).clone()
        flat[..., 3] = 0
        return flat.view_as(a)

    assert not torch.allclose(model.run_with_hooks(x, fwd_hooks=[(hook, ablate_one)]), clean)


def test_abs_topk_keeps_largest_magnitudes():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5, -0.2, 1.0, 0.0, -4.0]])
    y = abs_topk(x, 0.25)
    assert torch.equal(y, torch.tensor([[0, -3.0, 0, 0, 0, 0, 0, -4.0]]))


@pytest.mark.parametrize("site", ACT_SITES)
def test_act_sparsity_at_each_site(site):
    model = small(afrac=0.25, afrac_sites=[site])
    _, cache = model.run_with_cache(tokens())
    where = {
        "attn_in": ("blocks.0.ln1.hook_normalized", 32),
        "attn_q": ("blocks.0.attn.hook_q", 32),
        "attn_k": ("blocks.0.attn.hook_k", 32),
        "attn_v": ("blocks.0.attn.hook_v", 32),
        "attn_out": ("blocks.0.hook_attn_out", 32),
        "mlp_in": ("blocks.0.ln2.hook_normalized", 32),
        "mlp_neuron": ("blocks.0.mlp.hook_post", 128),
        "mlp_out": ("blocks.0.hook_mlp_out", 32),
        "resid_post_attn": ("blocks.0.hook_resid_mid", 32),
        "resid_post_mlp": ("blocks.0.hook_resid_post", 32),
    }
    name, width = where[site]
    nonzero = (cache[name].flatten(2) != 0).sum(-1)
    assert (nonzero <= width // 4).all()
    # and a site not listed stays dense
    other = "blocks.0.mlp.hook_pre"
    assert ((cache[other] != 0).sum(-1) > 32).all()


def test_attention_is_causal_and_sink_takes_the_rest():
    model = small(sink=True)
    x = tokens()
    _, cache = model.run_with_cache(x)
    pattern, sink = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_sink"]
    assert torch.all(pattern.triu(1) == 0)
    assert torch.allclose(pattern.sum(-1) + sink, torch.ones_like(sink))
    assert (sink > 0).all()
    # future tokens do not affect earlier logits
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 61
    assert torch.allclose(model(x)[:, :-1], model(y)[:, :-1], atol=1e-6)


def test_no_sink_pattern_rows_sum_to_one():
    _, cache = small(sink=False).run_with_cache(tokens())
    p = cache["blocks.1.attn.hook_pattern"]
    assert torch.allclose(p.sum(-1), torch.ones_like(p[..., 0]))


def test_bigram_table_adds_the_current_tokens_row():
    model = small(bigram_table=True)
    x = tokens()
    with_table = model(x)
    with torch.no_grad():
        delta = model.bigram[x]
        model.bigram.zero_()
    assert torch.allclose(with_table, model(x) + delta, atol=1e-5)


def test_tied_unembedding_uses_the_embedding():
    model = small(tied_unembed=True)
    assert model.unembed is None and model.W_U is model.embed.weight
    names = [n for n, _ in model.named_parameters()]
    assert "unembed.weight" not in names


def _with_base_weights(**kw) -> SparseGPT:
    """The option's model carrying the base model's weights wherever the two share one, so
    any difference in output is the option's doing, not a different random init."""
    model = small(**kw)
    shared = {k: v for k, v in small().state_dict().items() if k in model.state_dict()}
    model.load_state_dict(shared, strict=False)
    return model


def test_options_change_the_computation():
    x = tokens()
    base_model = small()
    base = base_model(x)
    for kw in [dict(norm="layer"), dict(act="relu"), dict(resid_act="relu"), dict(pos_emb=True)]:
        out = _with_base_weights(**kw)(x)
        assert out.shape == base.shape and not torch.allclose(out, base, atol=1e-3), kw
    # no biases = the base model with its biases zeroed
    with torch.no_grad():
        for name, p in base_model.named_parameters():
            if (
                name.endswith("proj.bias")
                or name.endswith("fc_in.bias")
                or name.endswith("fc_out.bias")
            ):
                p.zero_()
    assert torch.allclose(_with_base_weights(bias=False)(x), base_model(x), atol=1e-5)
    # a final bias adds the same vector to every position's logits
    model = _with_base_weights(final_bias=True)
    assert torch.allclose(model(x), base + model.logit_bias, atol=1e-5)


def test_init_follows_the_recipe():
    torch.manual_seed(0)
    model = SparseGPT(ModelConfig(vocab_size=500, d_model=128, n_layer=4))
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.fc_out.weight.std().item() == pytest.approx(0.02 / 8**0.5, rel=0.05)
    assert torch.all(model.bigram == 0) and torch.all(model.blocks[0].ln1.w == 1)


def _loss_and_grads(model, x):
    model.zero_grad()
    loss = model(x, return_type="loss")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_fast_equals_plain(model, x):
    fast_loss, fast = _loss_and_grads(model, x)
    with fused.plain():
        plain_loss, ref = _loss_and_grads(model, x)
    assert torch.allclose(fast_loss, plain_loss, atol=1e-5)
    for name in ref:
        assert torch.allclose(fast[name], ref[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(sink=False, bigram_table=False),
        dict(afrac=0.25, tied_unembed=True),
        dict(final_bias=True),  # bias and bigram rows both added to the unembedding
    ],
)
def test_fast_path_matches_plain_loss_and_every_gradient(kw):
    model = small(**kw).train()
    x = tokens(n=3, t=12)
    _assert_fast_equals_plain(model, x)
    # the logits path agrees too (fused attention, no fused head)
    with fused.plain():
        ref_logits = model(x)
    assert torch.allclose(model(x), ref_logits, atol=1e-5)


@pytest.mark.parametrize("sink", [True, False])
@pytest.mark.parametrize("d_head", [16, 12])
def test_attention_padded_to_a_kernel_width_is_unchanged(monkeypatch, sink, d_head):
    """The head-width padding CUDA's kernel wants (SDPA_WIDTH_MULTIPLE), forced on the CPU:
    the loss, every gradient and the one-position logits still match the plain path."""
    monkeypatch.setitem(model_module.SDPA_WIDTH_MULTIPLE, "cpu", 8)
    model = small(sink=sink, d_head=d_head, n_head=2).train()
    x = tokens(n=3, t=12)
    _assert_fast_equals_plain(model, x)
    last = torch.tensor([11, 4, 7])
    with fused.plain():
        ref = model(x, positions=last)
    assert torch.allclose(model(x, positions=last), ref, atol=1e-5)


def test_fast_loss_matches_chunked_over_many_rows(monkeypatch):
    monkeypatch.setattr(fused, "CHUNK", 7)  # several chunks and a ragged last one
    _assert_fast_equals_plain(small().train(), tokens(n=3, t=12))


def test_a_hook_on_the_pattern_takes_the_explicit_path_and_is_honoured():
    model = small()
    x = tokens()
    clean = model(x)

    def flatten(pattern, hook):  # uniform attention over the visible keys
        return pattern.tril() / pattern.tril().sum(-1, keepdim=True).clamp_min(1e-9) * 0.5

    hooked = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", flatten)])
    assert not torch.allclose(hooked, clean, atol=1e-3)
    with fused.plain():
        assert torch.allclose(
            model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", flatten)]),
            hooked,
            atol=1e-5,
        )


@pytest.mark.parametrize("final_bias", [False, True])
def test_fast_path_under_bf16_autocast_matches_plain(final_bias):
    """Under autocast the fast loss runs its matmuls in bf16 and attention in fp32 (on the
    CPU); the plain path runs both in bf16: the two agree to bf16 precision (without
    AbsTopK, whose choices a rounding difference can flip)."""
    model = small(final_bias=final_bias, afrac=None).train()
    x = tokens(n=3, t=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast_loss, fast = _loss_and_grads(model, x)
        with fused.plain():
            plain_loss, ref = _loss_and_grads(model, x)
            ref_logits = model(x)
        logits = model(x)
    assert fast_loss.dtype == torch.float32
    assert torch.allclose(fast_loss, plain_loss, atol=2e-2)
    assert torch.allclose(logits.float(), ref_logits.float(), atol=5e-2)
    for name in ref:
        scale = ref[name].abs().max().item() + 1e-6
        assert (fast[name] - ref[name]).abs().max().item() <= 0.05 * scale, name


def test_kth_largest_on_several_threads_equals_topk(monkeypatch):
    a = torch.randn(300, 97, generator=torch.Generator().manual_seed(5)).abs()
    a[:, :10] = 0.0  # zeros and ties must not change the answer
    a[7, 20:40] = 1.5
    expected = a.topk(13, dim=-1).values[:, -1:]
    monkeypatch.setattr(fused, "_ENTRIES_PER_THREAD", 1)  # split even this small input
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(fused.kth_largest(a, 13), expected)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fused.kth_largest(a, 13), expected)


def test_abs_topk_fast_threshold_equals_topk():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    fast = abs_topk(x, 0.2)
    with fused.plain():
        ref_idx = x.abs().topk(19, dim=-1).indices
    ref = torch.zeros_like(x).scatter(-1, ref_idx, x.gather(-1, ref_idx))
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("kw", [dict(), dict(sink=False, afrac=0.25), dict(n_layer=1)])
def test_logits_at_positions_equal_the_full_logits_there(kw, fast):
    model = small(**kw)
    x = tokens(n=4, t=12)
    where = torch.tensor([11, 3, 0, 7])
    with contextlib.nullcontext() if fast else fused.plain():
        full = model(x)[torch.arange(4), where]
        seen = {}

        def shape(act, hook):
            seen[hook.name] = act.shape

        read = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_q", shape)], positions=where)
    assert read.shape == (4, 61)
    assert torch.allclose(read, full, atol=1e-5)
    # only the last block is cut down: earlier blocks still see every position
    assert seen["blocks.0.attn.hook_q"][1] == (1 if kw.get("n_layer") == 1 else 12)


def test_logits_at_positions_honour_a_pattern_hook():
    model = small()
    x = tokens(n=2, t=12)
    where = torch.tensor([5, 9])

    def halve(pattern, hook):
        return pattern * 0.5

    hooks = [("blocks.1.attn.hook_pattern", halve)]
    full = model.run_with_hooks(x, fwd_hooks=hooks)[torch.arange(2), where]
    assert torch.allclose(
        model.run_with_hooks(x, fwd_hooks=hooks, positions=where), full, atol=1e-5
    )
    assert not torch.allclose(model(x, positions=where), full, atol=1e-3)


def test_fast_loss_without_gradients_equals_plain():
    model = small()
    x = tokens(n=3, t=12)
    with torch.no_grad():
        fast = model(x, return_type="loss")
        with fused.plain():
            plain = model(x, return_type="loss")
    assert fast.requires_grad is False
    assert torch.allclose(fast, plain, atol=1e-5)


def test_an_empty_batch_gives_empty_logits():
    assert small()(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 61)


def test_a_seed_gives_the_init_it_gave_with_nn_embedding(monkeypatch):
    # Embed replaced nn.Embedding; it draws the same numbers, so a seed still gives the
    # model it gave before (cached study models, results files).
    cfg = ModelConfig(vocab_size=61, n_ctx=12, d_model=32, n_layer=1, pos_emb=True)
    torch.manual_seed(0)
    ours = SparseGPT(cfg).state_dict()
    monkeypatch.setattr(model_module, "Embed", torch.nn.Embedding)
    torch.manual_seed(0)
    before = SparseGPT(cfg).state_dict()
    assert list(ours) == list(before)
    assert all(torch.equal(ours[k], before[k]) for k in ours)


def test_loading_a_checkpoint_does_not_import_torch_dynamo(tmp_path):
    # A random init on the meta device imports torch._dynamo (~2 s of every command that
    # loads a checkpoint, e.g. eval); loading builds the model there, so it must skip init.
    save_checkpoint(tmp_path / "ckpt", small(pos_emb=True), None)
    code = (
        "import sys; from sparsecircuits.checkpoint import load; "
        f"m, _ = load({str(tmp_path / 'ckpt')!r}); "
        "print(m.embed.weight.is_meta, 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
