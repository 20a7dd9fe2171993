"""The benchmarks' ``--precision fp32|bf16|auto``: "auto" resolved by hpo's own probe on this
machine (the faithful MLP's shape at the bench's stack width), as a run would resolve it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hpo.training import precision

DIMS = (90, 256, 256, 10)


def add_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=default,
        help='training precision; "auto": the faster here by hpo\'s probe (default: %(default)s)',
    )


def resolve(requested: str, width: int, dims: tuple[int, ...] = DIMS, batch: int = 128) -> precision.Resolved:
    """``requested``, or for "auto" what hpo's probe picks on this machine (not cached)."""
    with tempfile.TemporaryDirectory() as cache:
        shape = precision.probe_shape(dims, batch, width)
        return precision.resolve(requested, device="cpu", shape=shape, cache_dir=Path(cache))
