"""How many threads to compute with on a machine someone else is also using.

Facts measured on a 2-core laptop-class CPU (benchmarks/bench_train.py re-measures them):
OpenMP's default wait policy spins a thread that waits at a barrier for milliseconds, so a
2-thread job next to one other busy process runs ~3x slower than alone; a thread that
sleeps at once (`OMP_WAIT_POLICY=PASSIVE`) pays for waking at every one of the ~1000 small
ops of a training step (the quick step ran ~25% slower than with spinning), and running
one thread fewer than there are free cores keeps most of the throughput under load. So:
before torch starts, waiting threads spin for ~0.1 ms and then sleep (GNU OpenMP's
GOMP_SPINCOUNT, the runtime in PyTorch's Linux wheels; other runtimes get PASSIVE), and
`adapt()` (called once per training or pruning step) looks at how busy the other processes
are every few seconds and uses the cores they leave free.

A user who sets `--threads` or OMP_NUM_THREADS gets exactly that number; an
OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment wins over ours. A process that
imported torch before sparsecircuits keeps the policy torch started with.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

PERIOD = 2.0  # seconds between looks at /proc/stat
_state: dict = {"fixed": "OMP_NUM_THREADS" in os.environ, "last": None, "max": None}


SPIN_COUNT = "10000"  # ~0.1 ms of spinning (GNU OpenMP counts ~100k spins per ms)


def configure_env() -> None:
    """Set the OpenMP wait policy; must run before torch is imported."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT  # GNU OpenMP: read before the policy, wins


configure_env()  # on import: sparsecircuits/__init__.py imports this module before torch


def set_threads(n: int) -> None:
    """Use exactly n threads from now on (the `--threads` option)."""
    import torch

    torch.set_num_threads(n)
    _state["fixed"] = True


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, busy ticks of this process) or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy, int(own[11]) + int(own[12])  # utime + stime, all threads


def others_busy(before: tuple[int, int, float], after: tuple[int, int, float]) -> float:
    """Cores' worth of CPU the other processes used between two samples (busy, own, time)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    seconds = max(after[2] - before[2], 1e-3)
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / ticks_per_s / seconds)


def threads_for(cores: int, busy_elsewhere: float) -> int:
    """Leave a core to each busy process elsewhere (counting half a core as one), never < 1."""
    return max(1, min(cores, cores - round(busy_elsewhere + 0.01)))


def adapt() -> None:
    """Every PERIOD seconds, match torch's thread count to the cores left free."""
    if _state["fixed"]:
        return
    now = time.monotonic()
    last = _state["last"]
    if last is not None and now - last[2] < PERIOD:
        return
    ticks = _cpu_ticks()
    if ticks is None:
        _state["fixed"] = True
        return
    import torch

    if _state["max"] is None:
        _state["max"] = torch.get_num_threads()
    sample = (*ticks, now)
    _state["last"] = sample
    if last is None:
        return
    n = threads_for(_state["max"], others_busy(last, sample))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)


def _die_with_parent() -> None:
    """Ask Linux to end this process when its parent ends. A study's workers train for
    minutes: killed without them, the parent left them training as orphans, and the run
    restarted beside them found its models' folders locked by the orphans."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it ended before we asked
            os._exit(1)
    except (OSError, AttributeError):
        pass  # not Linux: the worker ends when it next asks the closed pool for work


def _one_thread_worker() -> None:
    _die_with_parent()
    set_threads(1)


def in_processes(jobs: int, fn, arglists: list[tuple]):
    """Yield (index, fn(*args)) for every args as each finishes, computed `jobs` at a time
    in fresh processes of one thread each (on 2 cores, two one-thread jobs get more done
    than one two-thread job). A worker's error (a UserError too) is raised here."""
    if not arglists:
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread_worker) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(arglists)}
        for done in as_completed(futures):
            yield futures[done], done.result()
