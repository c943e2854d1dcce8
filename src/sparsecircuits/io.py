"""File writing and reading that never leaves a half-written file, and the claiming of run
folders.

Every result is written to a temporary name beside its place and renamed over it, so a
killed process or a full disk leaves the previous file intact; a write that fails is a
one-line `UserError` naming the path, and its temporary is removed. Readers turn a missing
or malformed file into such an error too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError, write_error

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the body succeeds.

    A killed process or a full disk leaves the previous file intact, never a half-written one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes 0600, and some writers (safetensors) replace the file with another
        # 0600 one: set the mode last, so results read like any other file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


# The most any file this package reads whole may hold: results and circuits are a few MB.
MAX_READ = 64 * 2**20


def read_regular(path: str | os.PathLike, what: str = "file", limit: int = MAX_READ) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else a one-line UserError: a
    FIFO would block forever and a device (/dev/zero) never end, and a huge file would
    fill memory before its content is checked. `what` names the expected file."""
    path = Path(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{path}: is a folder, expected a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path}: not a regular file (a pipe or a device); expected a {what}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise UserError(
            f"{path}: {max(st.st_size, len(data)) / 2**20:,.0f} MiB, more than the "
            f"{limit / 2**20:,.0f} MiB a {what} may hold"
        )
    return data


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, turning a missing or malformed file into a one-line UserError."""
    path = Path(path)
    try:
        obj = json.loads(read_regular(path, "JSON file").decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def file_digest(path: str | os.PathLike) -> str:
    """A hash of a file's bytes, for what must follow its content rather than its name."""
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib `Figure` through `atomic_path`. Figures are made without pyplot,
    which keeps no reference to them, so there is nothing to close."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip("."))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON Lines log that a process appends to; a torn last line (a kill in
    the middle of a write) is dropped (rewrite the file before appending again)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = read_regular(path, "JSON Lines file").split(b"\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:  # line by line: a torn last line may end inside a UTF-8 character
            rows.append(json.loads(line.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if n < len(lines):  # only an unterminated last line is torn
                reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                raise UserError(f"{path}:{n}: invalid JSON ({reason})") from None
    return rows


# The file in a folder being written that names its writer (see `writer_lock`).
LOCK_FILE = ".sparsecircuits.lock"
# Folders this process holds, with how many nested holds: a study's commands may take the
# lock of a folder the process already writes (flock would refuse the second open).
_HELD: dict[Path, int] = {}
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Be the one process writing `folder`, or refuse: two runs into one --out would each
    think they wrote it, and the folder would hold a mix of both.

    The lock is advisory (fcntl.flock on LOCK_FILE, which holds the writer's pid), and
    the kernel drops it with its process, so a killed writer blocks nothing. On release the
    lock file goes, and so does the folder if this made it and it is still empty (a start
    that failed leaves nothing behind). A folder where no file can be made is not locked:
    the first write there says why it fails.
    """
    folder = out_folder(folder)
    key = folder.absolute()
    with _HELD_LOCK:
        nested = key in _HELD
        _HELD[key] = _HELD.get(key, 0) + 1
    if nested:
        try:
            yield
        finally:
            _release_count(key)
        return
    made = not folder.exists()
    fd = None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(folder, e) from None
        fd = _lock_file(folder)
        yield
    finally:
        _release_count(key)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(folder / LOCK_FILE)  # while still held: see _lock_file
            os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def _release_count(key: Path) -> None:
    with _HELD_LOCK:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]


def _lock_file(folder: Path) -> int | None:
    """The locked descriptor of folder/LOCK_FILE, with this pid written in it (None where
    the file cannot be made)."""
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_UMASK)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{folder} is being written by another process (pid {pid})") from None
        # The previous holder unlinks the file before it lets go: if it did so after this
        # process opened it, this lock is on a file no one else will open; take the new one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            with contextlib.suppress(OSError):  # the pid is for the message only
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def check_path(path: str | os.PathLike) -> Path:
    """`path`, if the system can name it: a name over 255 bytes or a path over 4095 fails
    every call with it (even exists()), so it is refused here with one line."""
    path = Path(path)
    raw = os.fsencode(path)
    if len(raw) > 4095 or any(len(name) > 255 for name in raw.split(b"/")):
        raise UserError(f"{path}: path too long (a name over 255 bytes or over 4095 in all)")
    return path


def out_folder(out: str | os.PathLike) -> Path:
    """`out` as a folder to write into, checked before any work: not an existing file."""
    out = check_path(out)
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding: torch and tokenizers refuse them
        raise UserError(f"{out}: --out must be a UTF-8 path") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; --out needs a folder")
    return out


def claim_run_dir(
    out: str | os.PathLike,
    settings: dict | None,
    resume: bool,
    force: bool | None,
    *,
    marker: str,
    kind: str,
    clear: tuple[str, ...] = (),
    saved_as: Callable[[dict], dict] | None = None,
) -> bool:
    """Make `out` this run's folder, or refuse; return True when it continues a run there.

    `marker` is the file naming a folder as one of these runs; it holds `settings`, what the
    run's results depend on (None: any run of this kind matches, and the caller writes the
    marker itself). A folder holding the same run is continued when `resume`; any other
    non-empty folder (the same run without `resume`, other settings, or no such run at all)
    is refused unless `force` (None: the command has no --force), so a user's files are
    never replaced. Starting over deletes the `clear` entries, and nothing else. A folder
    holding nothing but the marker is a start that failed, and is claimed afresh.
    `saved_as` maps the saved settings to today's form before they are compared.
    """
    out = out_folder(out)
    path = out / marker
    others = [p for p in out.iterdir() if p.name not in (marker, LOCK_FILE)] if out.is_dir() else []
    hint = "choose another --out" + (
        ", or pass --force to start over there" if force is not None else ""
    )
    fresh = True
    raw = None
    if path.exists() and others:
        saved = raw = read_json(path) if settings is not None else None
        if saved_as is not None and isinstance(saved, dict):
            saved = saved_as(saved)
        if saved == settings and resume:
            fresh = False
        elif saved == settings and not force:
            raise UserError(
                f"{out}: already holds a {kind} with this config; pass --resume to continue it, or {hint}"
            )
        elif not force:
            assert settings is not None  # None settings match any saved run (above)
            raise UserError(
                f"{path}: holds a different {kind}: different config ({_diff(saved, settings)}); {hint}"
            )
    elif others and not force:
        raise UserError(f"{out}: exists and is not a {kind} folder; {hint}")
    elif path.exists() and settings is not None and not force:
        # Only the marker: a start that failed, if the file is one of ours (its keys are
        # among a run's); a user's own file of that name is not replaced.
        saved = read_json(path)
        if not set(saved) <= set(settings):
            raise UserError(f"{path}: not a {kind}'s {marker} (a file of yours?); {hint}")
    try:
        for name in clear if fresh else ():
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    if settings is not None and (fresh or raw != settings):  # as it is: not even reformatted
        write_json_atomic(path, settings)
    return not fresh


def _diff(saved, settings: dict) -> str:
    """The keys (section.key for nested dicts) whose values differ."""
    if not isinstance(saved, dict):
        return "not a settings file"
    keys = []
    for k in sorted(set(saved) | set(settings)):
        a, b = saved.get(k), settings.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{k}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        elif a != b:
            keys.append(k)
    return ", ".join(keys)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh folder beside `final` to write into; it replaces `final` only if the body
    succeeds, and is removed if it fails (a full disk leaves no temporary folder)."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process
    try:
        tmp.mkdir(parents=True)
        yield tmp
        replace_dir(tmp, final)
    except OSError as e:
        raise write_error(final, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (the old one, if any, goes only after)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
