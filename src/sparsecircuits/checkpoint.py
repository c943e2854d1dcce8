"""Checkpoints: a folder with `model.safetensors`, `config.json` and `tokenizer.json`.

No pickle anywhere a user might load a file from someone else. Every file is written to a
temporary name and renamed, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .config import TOKENIZER_KEY, ModelConfig, TrainConfig, config_to_dict, load_config_file
from .corpus import prepare
from .device import pick_device
from .errors import UserError, write_error
from .io import atomic_path, check_path, file_digest, read_json, write_json_atomic
from .model import SparseGPT
from .tokenizer import load_tokenizer, save_tokenizer


def save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None
) -> None:
    with atomic_path(path) as tmp:
        try:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata
            )
        except SafetensorError as e:  # a full disk surfaces as this, not as an OSError
            raise write_error(path, e) from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def save_checkpoint(
    out: str | Path,
    model: SparseGPT,
    tokenizer: Tokenizer | None,
    train_cfg: TrainConfig | None = None,
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out / "model.safetensors", {"format": "sparsecircuits"})
    tok_path = out / "tokenizer.json"
    if tokenizer is not None:
        save_tokenizer(tokenizer, tok_path)
    elif tok_path.is_file():  # a later save of the same run: record the tokenizer already there
        tokenizer = load_tokenizer(tok_path)
    saved = config_to_dict(model.cfg, train_cfg)
    if tokenizer is not None:
        saved[TOKENIZER_KEY] = {
            "blake2b": file_digest(tok_path),
            "vocab_size": tokenizer.get_vocab_size(),
        }
    write_json_atomic(out / "config.json", saved)
    return out


def load_checked_tokenizer(
    path: str | Path, cfg: ModelConfig, train_cfg: TrainConfig | None
) -> Tokenizer | None:
    """The checkpoint's tokenizer.json (None if it has none), refused unless it is the one
    the model was trained with: another run's tokenizer encodes text into other ids, and
    every loss, sample and circuit would be silently wrong. config.json records its hash;
    a checkpoint saved before that was recorded is checked on its vocabulary size."""
    path = Path(path)
    tok_path = path / "tokenizer.json"
    if not tok_path.exists():
        return None
    tokenizer = load_tokenizer(tok_path)
    n = tokenizer.get_vocab_size()
    record = read_json(path / "config.json").get(TOKENIZER_KEY)
    if record is not None:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("blake2b"), str)
            and type(record.get("vocab_size")) is int
        ):
            raise UserError(f"{path / 'config.json'}: malformed {TOKENIZER_KEY!r} entry")
        if file_digest(tok_path) != record["blake2b"]:
            raise UserError(
                f"{tok_path}: not the tokenizer this model was trained with ({n} tokens; "
                f"config.json records one of {record['vocab_size']} with another hash)"
            )
        return tokenizer
    # A model trained here has exactly its tokenizer's vocabulary; an import may have more
    # rows than its tokenizer has tokens, never fewer.
    if n > cfg.vocab_size or (train_cfg is not None and n != cfg.vocab_size):
        raise UserError(
            f"{tok_path}: {n} tokens, but the model has vocab_size={cfg.vocab_size}: "
            "not the tokenizer it was trained with"
        )
    return tokenizer


def check_sizes(cfg: ModelConfig, path: Path) -> None:
    """The weights file against config.json's sizes, from its header alone: an edited
    n_layer or d_model is refused before a model of that size is built (even on the meta
    device, a million layers take minutes and gigabytes)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    layers = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    if layers != cfg.n_layer:
        raise UserError(f"{path}: holds {layers} layers, config.json implies n_layer={cfg.n_layer}")
    d, width = cfg.d_model, cfg.heads * cfg.d_head
    for k, want in {
        "embed.weight": [cfg.vocab_size, d],
        "blocks.0.attn.q_proj.weight": [width, d],
        "blocks.0.attn.o_proj.weight": [d, width],
        "blocks.0.mlp.fc_in.weight": [cfg.mlp_width, d],
    }.items():
        if k in shapes and shapes[k] != want:
            raise UserError(f"{path}: {k} has shape {shapes[k]}, config.json implies {want}")


def check_state(model: SparseGPT, state: dict[str, torch.Tensor], where: Path) -> None:
    """Every tensor the model needs, no other, each of its shape and finite."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise UserError(
            f"{where}: does not match config.json (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise UserError(
                f"{where}: {k} has shape {list(state[k].shape)}, "
                f"config.json implies {list(v.shape)}"
            )
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            # NaN weights would flow on into NaN losses, samples and circuit.json numbers.
            raise UserError(f"{where}: {k} holds NaN or infinite values")


def _as_model_dtypes(model: SparseGPT, state: dict[str, torch.Tensor], where: Path) -> dict:
    """`state` in the model's dtypes (fp32): an fp16 or integer file would load, then fail
    (or silently compute differently) in the first matmul that mixes it with fp32. Only a
    tensor whose every value survives the cast is cast; others are refused by name."""
    out = {}
    for k, v in model.state_dict().items():
        t = state[k]
        if t.dtype != v.dtype:
            cast = t.to(v.dtype)
            if not torch.equal(cast.to(t.dtype), t):
                raise UserError(
                    f"{where}: {k} is {t.dtype}, not exactly representable as {v.dtype}"
                )
            t = cast
        out[k] = t
    return out


def load_config(path: str | Path) -> tuple[ModelConfig, TrainConfig | None]:
    path = check_path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a checkpoint (config.json is missing)")
    return load_config_file(path / "config.json")


def load(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[SparseGPT, Tokenizer | None]:
    """Load a checkpoint folder -> (model in eval mode, tokenizer or None)."""
    path = Path(path)
    device = pick_device(device)
    cfg, train_cfg = load_config(path)
    where = path / "model.safetensors"
    check_sizes(cfg, where)
    # Shapes only, no memory: a config.json claiming a huge model costs nothing until the
    # tensors on disk are found to match it.
    with torch.device("meta"):
        model = SparseGPT(cfg)
    state = load_tensors(where)
    check_state(model, state, where)
    model.load_state_dict(_as_model_dtypes(model, state, where), assign=True)
    tokenizer = load_checked_tokenizer(path, cfg, train_cfg)
    return model.to(device).eval(), tokenizer


def checkpoint_corpus(path, model: SparseGPT, tokenizer: Tokenizer, data: list[str] | None = None):
    """The checkpoint's own corpus (or `data`), split as in training and tokenized with the
    checkpoint's tokenizer; a checkpoint without a train config (an import) gets the stdlib."""
    _, train_cfg = load_config(path)
    return prepare(
        data or (train_cfg.data if train_cfg else None),
        model.cfg.vocab_size,
        train_cfg.heldout_frac if train_cfg else 0.05,
        train_cfg.data_ext if train_cfg else None,
        tokenizer=tokenizer,
    )
