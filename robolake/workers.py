"""Warm worker processes for CPU-bound work: the slices of one large recording, the
uploads of a partition.

Workers are spawned once per process and size and kept (a step cleans upload after upload:
each worker pays its imports and lookup tables once, not once per recording). Spawned,
not forked: callers may hold threads. Each call runs under the caller's environment of
that moment (settings, credentials), not the one the worker was spawned with. A pool
whose worker died (killed, out of memory) is replaced on the next call.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed memory instead of returning it to the system: chunks
    (~1 MiB inflated) and column batches are allocated and freed thousands of times per
    recording, and by default each one above 128 KiB is a fresh mmap whose pages fault in
    again (on a robot-hour: 200 k page faults, a fifth of the decode time). Allocations
    under 32 MiB come from the heap, and up to 128 MiB freed at its top stay mapped (peak
    RSS +35 MB there). Once per process; nothing where the C library is not glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its CPU affinity, capped by the cgroup v2 CPU quota
    (a container's CPU limit: on Kubernetes `os.cpu_count()` is the node's)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def warm_pool(size: int, broken: ProcessPoolExecutor | None = None) -> ProcessPoolExecutor:
    """The kept pool of `size` workers; `broken`: a pool to replace."""
    with _POOLS_LOCK:
        if broken is not None and _POOLS.get(size) is broken:
            del _POOLS[size]
        if size not in _POOLS:
            pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"))
            # a process that multiprocessing started (a step of Dagster's multiprocess
            # executor) waits for its child processes when it ends, before the handler that
            # would stop the pool runs: stop it first (before the pool's queues close, at
            # exit priority 10), or that process never ends
            multiprocessing.util.Finalize(pool, pool.shutdown, kwargs={"cancel_futures": True},
                                          exitpriority=100)
            _POOLS[size] = pool
        return _POOLS[size]


def run_all(processes: int, fn: Callable, calls: Sequence[tuple]) -> list:
    """[fn(*call) for call in calls] on `processes` warm workers (this process waits), or
    here when one process is enough. Workers take the next call as they finish one: put
    the longest first. A call's exception is raised once the calls before it are done;
    the calls not started by then are cancelled."""
    if processes <= 1 or len(calls) <= 1:
        keep_freed_memory()
        return [fn(*call) for call in calls]
    env = dict(os.environ)
    # one pool per size, however many calls (a worker starts when a call needs it), so a
    # step does not collect idle pools of every size its partitions asked for
    pool = warm_pool(processes)
    try:
        futures = [pool.submit(_in_worker, env, fn, *call) for call in calls]
    except BrokenProcessPool:  # a worker died since the last call: start them again
        pool = warm_pool(processes, broken=pool)
        futures = [pool.submit(_in_worker, env, fn, *call) for call in calls]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()


def _in_worker(env: dict[str, str], fn: Callable, *args):
    """fn(*args) in a worker, under the caller's environment."""
    if dict(os.environ) != env:
        os.environ.clear()
        os.environ.update(env)
        from robolake.settings import reset_settings

        reset_settings()
    keep_freed_memory()
    return fn(*args)
