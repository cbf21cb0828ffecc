"""The Ray cluster a job runs on: a local one, or one at an address; how many workers of how
many threads it holds."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from edgeds.errors import ConfigError

INSTALL = "--ray needs Ray Data, which is not installed: pip install 'edgeds[ray]'"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the part of Ray a job needs
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


def connect(address: str | None):
    """Ray, initialised: at `address` ('auto': the cluster `ray start` made on this machine),
    or a new local one over this machine's CPUs when None."""
    ray = import_ray()
    # stderr is the job's progress and summary: Ray's own notes go to its session's log files
    # (/tmp/ray/session_latest/logs), workers' output too; a worker's error still ends the job
    # in one line.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if address is None:
        # Ray starts its workers at nice 15, below its own processes and this one: an engine
        # whose threads fill the cores then loses a thread to each of them for a while, and a
        # step waits for its slowest thread. The local Ray that edgeds starts runs its workers
        # at the priority a local job runs at; a cluster's nodes set it where `ray start` runs.
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=address or "local", num_cpus=None if address else os.cpu_count(),
                 include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {_first_line(exc)}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own progress line says what is done
    ctx.print_on_execution_start = False
    return ray


@dataclass(frozen=True)
class Pool:
    workers: int  # actors, one engine each
    threads: int  # each engine's threads = the CPUs Ray reserves for its actor
    node_cpus: tuple[int, ...]  # of the cluster's live nodes


def size_pool(ray, workers: int | None, threads: int | None) -> Pool:
    """Defaults: one worker per node, as many threads as the smallest node has CPUs (or, with
    --workers, the smallest node's CPUs shared by the workers it holds)."""
    cpus = tuple(sorted((int(n["Resources"].get("CPU", 0)) for n in ray.nodes()
                         if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1), reverse=True))
    if not cpus:
        raise ConfigError("the Ray cluster has no node with a CPU")
    workers = workers or len(cpus)
    threads = threads or max(cpus[-1] // math.ceil(workers / len(cpus)), 1)
    if threads > cpus[0]:
        raise ConfigError(f"--threads {threads}: no node of the Ray cluster has that many CPUs "
                          f"(nodes: {_listing(cpus)})")
    fits = sum(c // threads for c in cpus)
    if workers > fits:
        raise ConfigError(f"--workers {workers} x --threads {threads}: the Ray cluster holds "
                          f"{fits} such workers (nodes: {_listing(cpus)})")
    return Pool(workers, threads, cpus)


def _listing(cpus: tuple[int, ...]) -> str:
    return ", ".join(f"{c} CPUs" for c in cpus)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
