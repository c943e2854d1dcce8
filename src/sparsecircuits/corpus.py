"""The training text: which files, how they split, and their token ids on disk.

Default corpus: every `.py` file of the running Python's standard library (site-packages
excluded), which every machine with Python has. Any folders or files can replace it.

Files go to the held-out split by a hash of their path relative to the source root, so the
split is the same on every machine. Tokens are cached once per (corpus, tokenizer) as
uint16 arrays that are memory-mapped, so a second run starts at once.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from .errors import UserError
from .io import atomic_path, read_json, write_json_atomic
from .tokenizer import eot_id, load_tokenizer, save_tokenizer, train_tokenizer

CACHE_VERSION = 1


def cache_root() -> Path:
    env = os.environ.get("SPARSECIRCUITS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsecircuits"


def relocate_cached(path: str | Path) -> Path:
    """A cache entry recorded at `path` (a model folder in a study's results or a circuit),
    or, where that is gone (the cache moved, or a timed run's temporary cache was merged
    into this one), the entry of the same content-addressed name in this cache."""
    path = Path(path)
    if path.exists():
        return path
    here = cache_root() / path.parent.name / path.name
    return here if here.exists() else path


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class SourceFile:
    path: Path  # where it is on this machine
    name: str  # path relative to its source root: the identity used for the split and the hash


TEXT_PROBE = 8192  # bytes read to decide whether a file is text


def _is_text(path: Path) -> bool:
    """Whether the file's head is UTF-8 without NUL bytes; only the head is read, so a
    folder holding a large video costs a few kilobytes, not the video's size."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE)
    if b"\0" in head:
        return False
    try:
        # A head cut inside a multi-byte character is still text.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def collect_files(
    sources: list[str] | None = None, exts: list[str] | None = None
) -> list[SourceFile]:
    """Every readable text file under the sources (the standard library when None), sorted."""
    if sources is None:
        root = stdlib_root()
        exts = exts or [".py"]
        files = [
            SourceFile(p, p.relative_to(root).as_posix())
            for p in root.rglob("*")
            if p.suffix in exts and "site-packages" not in p.parts and p.is_file()
        ]
        if not files:
            raise UserError(f"{root}: no {', '.join(exts)} files in the standard library")
        return sorted(files, key=lambda f: f.name)
    exts = [e if e.startswith(".") else "." + e for e in exts] if exts else None
    files = []
    for i, src in enumerate(sources):
        p = Path(src).expanduser()
        prefix = f"{i}/" if len(sources) > 1 else ""
        if p.is_file():
            candidates = [(p, prefix + p.name)]
        elif p.is_dir():
            candidates = [
                (f, prefix + f.relative_to(p).as_posix())
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and (exts is None or f.suffix in exts)
            ]
        else:
            raise UserError(f"{p}: no such file or folder")
        found = [SourceFile(f, name) for f, name in candidates if _is_text(f)]
        if not found:
            what = f"{', '.join(exts)} files" if exts else "UTF-8 text files"
            raise UserError(f"{p}: no {what} found to train on")
        if len(found) < len(candidates):
            print(
                f"note: {p}: skipped {len(candidates) - len(found)} files that are not UTF-8 text",
                file=sys.stderr,
            )
        files.extend(found)
    return sorted(files, key=lambda f: f.name)


EVAL_SEED = 987_654  # held-out windows are the same for every run, whatever its seed


def is_heldout(name: str, heldout_frac: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_000) < heldout_frac * 1_000_000


def split_files(
    files: list[SourceFile], heldout_frac: float
) -> tuple[list[SourceFile], list[SourceFile]]:
    train = [f for f in files if not is_heldout(f.name, heldout_frac)]
    heldout = [f for f in files if is_heldout(f.name, heldout_frac)]
    if not train or not heldout:
        # Too few files for a hash split: fall back to holding out the last file.
        if len(files) < 2:
            raise UserError(f"{files[0].path}: need at least 2 files for a train/held-out split")
        train, heldout = files[:-1], files[-1:]
    return train, heldout


def read_text(f: SourceFile) -> str:
    return f.path.read_text(encoding="utf-8", errors="replace")


def fingerprint(files: list[SourceFile], heldout_frac: float) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{CACHE_VERSION} heldout={heldout_frac}".encode())
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.blake2b(f.path.read_bytes(), digest_size=16).digest())
    return h.hexdigest()


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.blake2b(tok.to_str().encode(), digest_size=8).hexdigest()


def _write_tokens(files: list[SourceFile], tok: Tokenizer, path: Path, desc: str) -> int:
    """Encode files (end-of-text after each) into a uint16 file, chunk by chunk."""
    eot = eot_id(tok)
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        chunk = 64
        # disable=None: a bar on a terminal only, not in logs (nor in a `--quiet` pipe)
        bars = tqdm(range(0, len(files), chunk), desc=desc, unit="chunk", leave=False, disable=None)
        for i in bars:
            encs = tok.encode_batch([read_text(f) for f in files[i : i + chunk]])
            for e in encs:
                arr = np.asarray(e.ids + [eot], dtype=np.uint16)
                out.write(arr.tobytes())
                n += arr.size
        out.flush()
    return n


ORPHAN_AGE_S = 3600


def _remove_orphans(folder: Path) -> None:
    """Delete the temporaries of a killed tokenization (atomic_path's `.NAME.*.tmp`). A live
    writer appends to its file chunk by chunk, so one untouched for an hour is an orphan."""
    for tmp in folder.glob(".*.tmp"):
        if time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S:
            tmp.unlink(missing_ok=True)


@dataclass
class TokenData:
    """Token ids of both splits, memory-mapped, and the tokenizer that made them."""

    train: np.ndarray
    heldout: np.ndarray
    tokenizer: Tokenizer
    cache_dir: Path

    @staticmethod
    def windows(data: np.ndarray, starts: torch.Tensor, n_ctx: int) -> torch.Tensor:
        """[len(starts), n_ctx + 1] windows of token ids `data` starting at `starts`."""
        idx = starts.numpy()[:, None] + np.arange(n_ctx + 1)[None, :]
        return torch.from_numpy(data[idx].astype(np.int64))

    def batch(self, split: str, batch_size: int, n_ctx: int, seed: int, step: int) -> torch.Tensor:
        """[batch, n_ctx + 1] windows; a pure function of (seed, step), so a resumed or
        data-parallel run sees exactly the batches an uninterrupted one would."""
        data = self.train if split == "train" else self.heldout
        if len(data) < n_ctx + 2:
            raise UserError(
                f"{self.cache_dir}: the {split} split has {len(data)} tokens, fewer than one "
                f"context of {n_ctx + 1}; add text or lower n_ctx"
            )
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(data) - n_ctx - 1, (batch_size,), generator=g)
        return self.windows(data, starts, n_ctx)

    def eval_batches(self, batches: int, batch_size: int, n_ctx: int):
        """The held-out windows every run evaluates (by EVAL_SEED, whatever the run's seed):
        `batches` batches of [batch_size, n_ctx + 1]."""
        for i in range(batches):
            yield self.batch("heldout", batch_size, n_ctx, EVAL_SEED, i)


def prepare(
    sources: list[str] | None,
    vocab_size: int,
    heldout_frac: float = 0.05,
    exts: list[str] | None = None,
    cache: Path | None = None,
    tokenizer: Tokenizer | None = None,
) -> TokenData:
    """Collect, split, train the tokenizer on the train split (unless one is given), and
    tokenize both splits, reusing everything already cached for the same files and settings."""
    files = collect_files(sources, exts)
    train_files, heldout_files = split_files(files, heldout_frac)
    corpus_dir = (cache or cache_root()) / f"corpus-{fingerprint(files, heldout_frac)}"
    tok_path = corpus_dir / f"tokenizer-{vocab_size}.json"
    if tokenizer is not None:
        tok = tokenizer
    elif tok_path.exists():
        tok = load_tokenizer(tok_path)
    else:
        tok = train_tokenizer((read_text(f) for f in train_files), vocab_size)
        save_tokenizer(tok, tok_path)
    tok_dir = corpus_dir / f"tokens-{tokenizer_hash(tok)}"
    meta_path = tok_dir / "meta.json"
    if not meta_path.exists():
        _remove_orphans(tok_dir)
        # meta.json is written last: its presence means both token files are complete.
        counts = {
            split: _write_tokens(fs, tok, tok_dir / f"{split}.bin", f"tokenizing {split}")
            for split, fs in (("train", train_files), ("heldout", heldout_files))
        }
        write_json_atomic(
            meta_path,
            {
                "version": CACHE_VERSION,
                "sources": sources or [str(stdlib_root())],
                "files": {"train": len(train_files), "heldout": len(heldout_files)},
                "tokens": counts,
            },
        )
    meta = read_json(meta_path)
    arrays = {}
    for split in ("train", "heldout"):
        path = tok_dir / f"{split}.bin"
        expected = meta["tokens"][split]
        if not path.exists() or path.stat().st_size != 2 * expected:
            raise UserError(f"{path}: token cache is damaged; delete {tok_dir} to rebuild it")
        arrays[split] = np.memmap(path, dtype=np.uint16, mode="r", shape=(expected,))
    return TokenData(arrays["train"], arrays["heldout"], tok, tok_dir)


def describe(data: TokenData) -> str:
    meta = json.loads((data.cache_dir / "meta.json").read_text())
    return (
        f"{meta['files']['train']} train / {meta['files']['heldout']} held-out files, "
        f"{meta['tokens']['train']:,} / {meta['tokens']['heldout']:,} tokens"
    )
