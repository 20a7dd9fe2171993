"""Seeded draws from PyTorch's global generators, leaving the caller's streams untouched.

Model initialisation draws from the global generator, and so does dropout in a user's module
(``nn.Dropout``); hpo's trainers take their data order from generators of their own. Inside
:func:`seeded`, the CPU generator and, where CUDA is present, every CUDA device's are seeded, and
all of them are restored afterwards (``torch.random.fork_rng`` forks only the CPU's unless told
the devices).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
