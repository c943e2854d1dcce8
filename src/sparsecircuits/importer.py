"""Import a released circuit_sparsity checkpoint (Gao et al. 2025) as one of ours.

The source is a folder with `beeg_config.json` and `final_model.pt` (a plain state dict,
loaded with `weights_only=True` so no code in it runs). Everything is checked before
anything is written: the config must describe a model `SparseGPT` computes exactly, and
every tensor must be there with the shape the config implies, so an import either yields
the same logits as the reference or fails with one line naming the file and the problem.
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import ModelConfig
from .errors import UserError
from .io import read_json, replace_dir
from .model import SparseGPT
from .tokenizer import load_tokenizer

CONFIG_FILE = "beeg_config.json"
WEIGHTS_FILE = "final_model.pt"

_REQUIRED = object()
_CAUSAL_MASK = re.compile(r"transformer\.h\.\d+\.attn\.bias")
_INT, _BOOL, _STR = (int,), (bool,), (str,)
_INT_OR_NULL = (int, type(None))


def import_openai(
    src: str | Path, out: str | Path, tokenizer: str | None = None, force: bool = False
) -> Path:
    """Convert `src` (reference format) into a checkpoint folder `out`; returns `out`."""
    src, out = Path(src), Path(out)
    _check_out(out, force)  # before the (possibly large) load, so a mistake costs nothing
    if not src.is_dir():
        raise UserError(f"{src}: no such folder")
    cfg_path, weights_path = src / CONFIG_FILE, src / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise UserError(f"{p}: file not found")
    raw = read_json(cfg_path)
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    state = _load_state(weights_path)
    cfg = _model_config(raw, state, cfg_path, weights_path)
    if tok is not None and tok.get_vocab_size() > cfg.vocab_size:
        raise UserError(
            f"{tokenizer}: {tok.get_vocab_size()} tokens, more than the model's "
            f"vocab_size={cfg.vocab_size}"
        )
    model = _build_model(cfg, state, weights_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_checkpoint(tmp, model, tok)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path, force: bool) -> None:
    """Only ever replace a checkpoint (with --force) or an empty folder: never other files."""
    if (out / "config.json").is_file():
        if not force:
            raise UserError(f"{out}: already holds a checkpoint; pass --force to overwrite it")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out}: folder is not empty and holds no checkpoint; choose another --out")
    elif out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # torch raises many unrelated types for a damaged file
        raise UserError(
            f"{path}: cannot be loaded (corrupt or truncated, or not a tensors-only state dict)"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"{path}: not a state dict (a mapping of names to tensors)")
    # torch.compile saves names under `_orig_mod.`; nanoGPT-style code may save its causal
    # mask as a buffer `attn.bias` (no parameter): neither is part of the model.
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not _CAUSAL_MASK.fullmatch(k)}


def _field(raw: dict, path: Path, key: str, types: tuple, default=_REQUIRED):
    """One config value, type-checked, so a wrong file fails here and not inside torch."""
    if key not in raw:
        if default is _REQUIRED:
            raise UserError(f"{path}: missing required key {key!r}")
        return default
    value = raw[key]
    # bool is an int in Python, but `true` is no layer count and `1` no flag.
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        raise UserError(f"{path}: {key} has the wrong type ({value!r})")
    return value


def _choice(path: Path, key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{path}: unsupported {key} {value!r} (supported: {', '.join(choices)})")
    return value


def _model_config(
    raw: dict, state: dict[str, torch.Tensor], path: Path, weights_path: Path
) -> ModelConfig:
    """Map the reference GPTConfig onto ours. Optional tensors (wpe, final_logits_bias,
    bigram_table) are taken from the state dict, since the config does not record them all."""
    f = functools.partial(_field, raw, path)
    if f("d_pos_emb", _INT_OR_NULL, None) is not None:
        raise UserError(
            f"{path}: d_pos_emb={raw['d_pos_emb']} (concatenated positional embedding) "
            "is not supported"
        )
    d_model, n_head = f("d_model", _INT), f("n_head", _INT)
    d_head = f("d_head", _INT_OR_NULL, None)
    if d_head is None:
        if n_head < 1 or d_model % n_head:
            raise UserError(
                f"{path}: d_head is null but d_model={d_model} is not a multiple of n_head={n_head}"
            )
        d_head = d_model // n_head
    d_mlp = f("d_mlp" if "d_mlp" in raw else "n_mlp", _INT_OR_NULL, None)
    # afrac is required: a missing key must not silently mean "dense".
    afrac = f("afrac", (int, float, type(None)))
    sites = f("afrac_loctypes", (str, list)) if afrac is not None else ""
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    bigram = "bigram_table" in state
    if f("enable_bigram_table", _BOOL, bigram) != bigram:
        state_says = "has a bigram_table" if bigram else "has no bigram_table"
        raise UserError(f"{weights_path}: {state_says}, unlike enable_bigram_table in {path.name}")
    rms = f("rms_norm", _BOOL)
    values = dict(
        vocab_size=f("vocab_size", _INT),
        n_ctx=f("block_size", _INT),
        d_model=d_model,
        n_layer=f("n_layer", _INT),
        d_head=d_head,
        n_head=n_head,
        d_mlp=d_mlp,
        norm="rms" if rms else "layer",
        ln_bias=False if rms else f("ln_bias", _BOOL),
        bias=f("bias", _BOOL),
        act=_choice(path, "activation_type", f("activation_type", _STR), ("gelu", "relu")),
        resid_act=_choice(
            path,
            "residual_activation_type",
            f("residual_activation_type", _STR),
            ("identity", "relu"),
        ),
        pos_emb="transformer.wpe.weight" in state,
        sink=f("sink", _BOOL),
        bigram_table=bigram,
        tied_unembed=f("tied_unembed", _BOOL),
        final_bias="final_logits_bias" in state,
        afrac=afrac,
        afrac_sites=sites,
    )
    try:
        return ModelConfig(**values)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def _key_map(cfg: ModelConfig) -> dict[str, list[str]]:
    """Reference tensor name -> our parameter name(s); c_attn's rows are q, then k, then v."""
    norm_bias = cfg.norm == "layer" and cfg.ln_bias
    linear = ("weight", "bias") if cfg.bias else ("weight",)
    m = {"transformer.wte.weight": ["embed.weight"], "transformer.ln_f.weight": ["ln_final.w"]}
    if norm_bias:
        m["transformer.ln_f.bias"] = ["ln_final.b"]
    if cfg.pos_emb:
        m["transformer.wpe.weight"] = ["pos_embed.weight"]
    for i in range(cfg.n_layer):
        ref, ours = f"transformer.h.{i}.", f"blocks.{i}."
        for a, b in (("ln_1", "ln1"), ("ln_2", "ln2")):
            m[f"{ref}{a}.weight"] = [f"{ours}{b}.w"]
            if norm_bias:
                m[f"{ref}{a}.bias"] = [f"{ours}{b}.b"]
        for p in linear:
            m[f"{ref}attn.c_attn.{p}"] = [f"{ours}attn.{x}_proj.{p}" for x in "qkv"]
            m[f"{ref}attn.c_proj.{p}"] = [f"{ours}attn.o_proj.{p}"]
            m[f"{ref}mlp.c_fc.{p}"] = [f"{ours}mlp.fc_in.{p}"]
            m[f"{ref}mlp.c_proj.{p}"] = [f"{ours}mlp.fc_out.{p}"]
        if cfg.sink:
            m[f"{ref}attn.attn_imp.sink_logit"] = [f"{ours}attn.sink_logit"]
    if not cfg.tied_unembed:
        m["lm_head.weight"] = ["unembed.weight"]
    if cfg.final_bias:
        m["final_logits_bias"] = ["logit_bias"]
    if cfg.bigram_table:
        m["bigram_table"] = ["bigram"]
    return m


def _build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], path: Path) -> SparseGPT:
    """Check every tensor against the config, then move it into a SparseGPT (float32)."""
    if cfg.tied_unembed and "lm_head.weight" in state:
        # Tied weights are saved under both names; the embedding *is* lm_head.
        head = state.pop("lm_head.weight")
        wte = state.setdefault("transformer.wte.weight", head)
        if wte.shape != head.shape or not torch.equal(wte, head):
            raise UserError(
                f"{path}: lm_head.weight differs from transformer.wte.weight "
                "although tied_unembed is true"
            )
    key_map = _key_map(cfg)
    missing = [k for k in key_map if k not in state]
    if missing:
        raise UserError(f"{path}: missing {missing[0]}, which the config implies")
    unexpected = sorted(set(state) - set(key_map))
    if unexpected:
        raise UserError(f"{path}: unexpected {unexpected[0]}, which the config does not use")
    with torch.device("meta"):  # shapes only: no memory, no random init
        model = SparseGPT(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for ref, ours in key_map.items():
        rows, *rest = shapes[ours[0]]
        want = (len(ours) * rows, *rest)
        if tuple(state[ref].shape) != want:
            raise UserError(
                f"{path}: {ref} has shape {list(state[ref].shape)}, the config implies {list(want)}"
            )
    converted: dict[str, torch.Tensor] = {}
    for ref, ours in key_map.items():
        # Popping frees each source tensor as soon as its float32 copy exists.
        parts = state.pop(ref).to(torch.float32).split(shapes[ours[0]][0])
        converted.update((k, t.clone()) for k, t in zip(ours, parts, strict=True))
    model.load_state_dict(converted, assign=True)
    return model.eval()
