"""One exception type for everything a user can get wrong.

The CLI turns a `UserError` into a single line `error: ...` and exit code 2, so every
message names the file and the problem; nothing deep inside torch reaches the user. A write
that fails (a full disk, a read-only folder) is such an error too, naming the path (file
writing itself is in `io`).
"""

from __future__ import annotations

import os


class UserError(Exception):
    """Bad input: a message for a person, naming the file and the problem."""


def write_error(path: str | os.PathLike, e: Exception) -> UserError:
    """The one-line error for a write that failed (`e` an OSError or a library's wrapper)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return UserError(f"{path}: cannot write ({reason})")
