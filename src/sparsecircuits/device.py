"""The device a command runs on and what it promises there: which device (`pick_device`),
how much memory is free on it (`check_memory` refuses what cannot fit before allocating),
and deterministic kernels (`deterministic`). The bottom layer: it imports nothing else of
the package but its error type."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError


def pick_device(device: str | torch.device | None) -> torch.device:
    """`auto` (CUDA when there is one), `cpu`, `cuda` or `cuda:N`, checked here so a typo or
    a missing GPU is one line, not a traceback from the first tensor moved."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    return d


def available_memory(device: torch.device) -> int:
    """Bytes free for a new allocation on `device`: the GPU's free memory, or the machine's
    available memory (within a container's limit, where it sets one)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = dict(
            line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line
        )
        have = int(fields["MemAvailable"].split()[0]) * 1024
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            have = min(have, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return have


def check_memory(need: int, device: torch.device, what: str) -> None:
    """Refuse before allocating what cannot fit: past the machine's memory a run is killed
    or pushes everything else into swap, with no message from us."""
    have = available_memory(device)
    if need > have:
        where = "this machine" if device.type == "cpu" else str(device)
        gib = need / 2**30 if need < 2**1000 else float("inf")  # a typo's size overflows
        raise UserError(
            f"{what} needs about {gib:,.1f} GiB of memory; {where} has "
            f"{have / 2**30:,.1f} GiB available"
        )


def deterministic(device: torch.device) -> None:
    """Same inputs -> same results on `device`, for training and circuit search alike.
    On a CPU some kernels (e.g. the accumulating scatter behind the bigram table and
    embedding gradients) add in thread order unless told otherwise; there a kernel without
    a deterministic version only warns. On CUDA, warn-only would let the fused attention
    backward keep its non-deterministic default, so there it is strict (on an H200 every
    gpu_check stage ran under it, prune, modularity and study included; training was 5-8%
    slower at the paper shape). cuBLAS reads its workspace setting when the process first
    uses it: call this before the first CUDA matmul."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cuda")
