"""How many intra-op threads torch uses: the cores this process may use, or what the user says.

PyTorch takes every core it sees, whatever the process's CPU affinity (``taskset``, a Slurm or
Kubernetes cpuset) or its cgroup CPU quota (docker ``--cpus``, a pod's CPU limit). With more
threads than cores to run them, OpenMP's barriers wait for a core the process does not have:
on 2 cores with another process busy on one, a 128x256 @ 256x256 matmul took 2.1 ms with 2
threads against 0.25 ms with 1 (8.6x, measured on an AMD EPYC Zen 3). So hpo counts the cores
it may use (affinity, then the cgroup quota, v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``) and
sets torch's intra-op threads to that, unless told: ``--threads`` or ``$HPO_THREADS``, else
``$OMP_NUM_THREADS`` when the user set it. Several workers on one host share its cores: where
the user set no count, each worker takes ``cores // workers on this host`` (at least 1) before
every claim, counting the live workers of its pipeline on its host from the workers' registry
(:func:`shared`); the compose file, the Kubernetes manifest and the Slurm files set
``HPO_THREADS`` per worker outright.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Threads:
    """A thread count and why."""

    n: int
    source: str
    automatic: bool = False  # counted from the machine, not set by the user: shared among workers

    def describe(self) -> str:
        return f"{self.n} thread{'s' if self.n != 1 else ''} ({self.source})"


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores, None where there is none."""
    v2 = root / "cpu.max"
    try:
        if v2.exists():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.exists():
            quota_us = int(v1.read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError) as exc:
        logger.debug("cannot read the cgroup CPU quota under %s: %s", root, exc)
    return None


def available_cores(root: Path = CGROUP_ROOT) -> Threads:
    """The cores this process may use: its CPU affinity, capped by its cgroup's quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None and math.ceil(quota) < affinity:
        return Threads(max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g} of {affinity} cores", True)
    return Threads(affinity, "the cores this process may use", True)


def _positive(value: str, source: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{source}={value!r}: give a whole number of threads, 1 or more")
    return n


def resolve(requested: int | None = None) -> Threads:
    """``requested`` (``--threads``), else ``$HPO_THREADS``, else ``$OMP_NUM_THREADS``, else the
    cores available."""
    if requested is not None:
        return Threads(_positive(str(requested), "--threads"), "--threads")
    for name in ("HPO_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name)
        if value:
            return Threads(_positive(value, name), f"${name}")
    return available_cores()


def apply(threads: Threads) -> None:
    """Set torch's intra-op threads (the process's training uses that many)."""
    torch.set_num_threads(threads.n)
    logger.info("training with %s", threads.describe())


def shared(threads: Threads, workers_on_host: int) -> Threads:
    """This worker's share of the host's cores: ``threads`` as they are when the user set them,
    else the cores divided among the workers on this host (at least 1 each)."""
    if not threads.automatic or workers_on_host <= 1:
        return threads
    n = max(1, threads.n // workers_on_host)
    return Threads(n, f"{threads.n} cores shared by {workers_on_host} workers on this host", True)


def rebalance(threads: Threads, workers_on_host: int) -> None:
    """Apply this worker's share now if it changed (called before each claim)."""
    share = shared(threads, workers_on_host)
    if torch.get_num_threads() != share.n:
        apply(share)
