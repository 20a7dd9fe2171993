"""Which device trains: ``auto`` takes a CUDA GPU when PyTorch sees one, else the CPU."""

from __future__ import annotations

import logging
from typing import Literal

import torch

from hpo.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(requested: str) -> Literal["cpu", "cuda"]:
    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "cuda":
        if not available:
            raise ConfigError(
                'device = "cuda" but PyTorch sees no CUDA GPU on this machine; '
                'use device = "auto" (falls back to the CPU) or "cpu"'
            )
        return "cuda"
    if requested != "auto":
        raise ConfigError(f'device = {requested!r}; use "auto", "cpu" or "cuda"')
    return "cuda" if available else "cpu"
