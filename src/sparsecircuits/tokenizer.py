"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), trained on the training split.

Byte-level means every file can be encoded, whatever its characters; an end-of-text token
separates files so the model learns where one file ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .errors import UserError
from .io import atomic_path, read_regular

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size > 65535:
        raise UserError(f"vocab_size={vocab_size} does not fit the uint16 token cache")
    if vocab_size < 257:
        raise UserError(f"vocab_size={vocab_size} is below the 256 bytes + end-of-text minimum")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise UserError(f"tokenizer has no {EOT} token")
    return i


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tok.save(str(tmp))


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    data = read_regular(path, "tokenizer.json")  # a FIFO named tokenizer.json would hang
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # the Rust side raises a bare Exception
        raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
