"""``precision = "auto"``: bf16 only where a short probe measured it faster on this machine.

Whether bfloat16 autocast pays depends on the CPU, not on hpo: measured on the machines this
project has run on, the stacked training step in bf16 ran about 1.5x faster than fp32 on a Xeon
with AMX, 1.6x on an AMD Zen 4 with avx512_bf16, and about 16x *slower* on an AMD Zen 3 with AVX2
only (no bf16 instructions; the faithful protocol would take hours there). So no precision is
right by default, and "auto" asks the machine: :func:`resolve` times a few training steps of
the run's own shape (input width, hidden layers, outputs, batch size and stack width, the width
capped at :data:`PROBE_MAX_WIDTH`) in fp32 and in bf16 and picks bf16 only when it is at least
:data:`MIN_GAIN` faster. The probe is a plain stacked MLP step (``bmm`` layers, ReLU, cross-entropy,
backward), the shape of what hpo's trainers run; a ``torch``-family model is probed at the MLP
shape of its settings. Each probe takes well under a second where bf16 is fast, and stops after
its warm-up where a bf16 step costs :data:`HOPELESS` fp32 steps.

Results are cached per machine (CPU model and flags, torch version, threads) in
``<data dir>/precision.json``, so workers and later runs agree and do not probe again; the same
file keeps the stacked trainer's measured ``torch.compile`` picks (:func:`recall`,
:func:`remember`; see :meth:`hpo.stages.StageContext.compile`). On CUDA,
"auto" is bf16 where the GPU supports it (``torch.cuda.is_bf16_supported()``), without a probe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from hpo.training.loop import autocast

logger = logging.getLogger(__name__)

Resolved = Literal["fp32", "bf16"]
CACHE_FILE = "precision.json"
PROBE_MAX_WIDTH = 8
#: bf16 must be clearly faster: near a tie fp32 (exact), and a pick that does not flip with the
#: noise between two probes (one 256x256 model at batch 128 on the AMD EPYC Zen 4 of 2026-11-30
#: measured bf16 at 1.07x and at 0.94x in two probes a minute apart; 3-wide stacks 1.79x, 1.85x).
MIN_GAIN = 1.2
HOPELESS = 4.0  # a bf16 step as slow as this many fp32 steps ends the probe: fp32
STEP_BUDGET_S = 0.12  # timed steps per precision, at most this long


@dataclass(frozen=True)
class Shape:
    """What the probe trains: layer widths (inputs, hidden..., outputs), batch size, stack width."""

    dims: tuple[int, ...]
    batch: int
    width: int

    def key(self) -> str:
        return f"{'-'.join(map(str, self.dims))}/b{self.batch}/w{min(self.width, PROBE_MAX_WIDTH)}"


@dataclass(frozen=True)
class Probe:
    """Seconds per training step in each precision, and the pick."""

    fp32_s: float
    bf16_s: float
    pick: Resolved

    @property
    def gain(self) -> float:
        return self.fp32_s / self.bf16_s


def cpu_description() -> dict[str, str]:
    """The CPU's model name and the flags that decide bf16's speed (from /proc/cpuinfo on Linux)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags", "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    present = [f for f in wanted if f in flags.split()]
    return {
        "model": model,
        "bf16_flags": " ".join(present) or "none",
        "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:12],
    }


def machine_key() -> str:
    cpu = cpu_description()
    return f"{cpu['model']} [{cpu['flags_sha']}] torch {torch.__version__} threads {torch.get_num_threads()}"


def _step(shape: Shape, precision: str) -> Callable[[], None]:
    """One training step of a stack of ``shape.width`` MLPs (forward, loss, backward)."""
    width = min(shape.width, PROBE_MAX_WIDTH)
    gen = torch.Generator().manual_seed(0)
    weights = [
        (torch.randn(width, i, o, generator=gen) / i**0.5).requires_grad_()
        for i, o in zip(shape.dims[:-1], shape.dims[1:], strict=True)
    ]
    biases = [torch.zeros(width, 1, o, requires_grad=True) for o in shape.dims[1:]]
    x = torch.randn(width, shape.batch, shape.dims[0], generator=gen)
    y = torch.randint(0, shape.dims[-1], (width * shape.batch,), generator=gen)

    def step() -> None:
        with autocast(precision):
            h = x
            for k, (w, b) in enumerate(zip(weights, biases, strict=True)):
                h = torch.baddbmm(b, h, w)
                if k < len(weights) - 1:
                    h = F.relu(h)
            loss = F.cross_entropy(h.reshape(-1, shape.dims[-1]).float(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        for p in (*weights, *biases):
            p.grad = None

    return step


def seconds_per_step(step: Callable[[], None], *, limit: float | None = None) -> float:
    """Median seconds of timed steps after two warm-ups (first-call allocations and oneDNN's
    primitive creation make the first steps slow); stops after a step slower than ``limit``."""
    step()
    step()
    times: list[float] = []
    spent = 0.0
    while spent < STEP_BUDGET_S and len(times) < 50:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if limit is not None and times[-1] > limit:
            break
    times.sort()
    return times[len(times) // 2]


def probe(shape: Shape) -> Probe:
    """Time fp32 against bf16 training steps of ``shape`` on this CPU."""
    fp32 = seconds_per_step(_step(shape, "fp32"))
    bf16 = seconds_per_step(_step(shape, "bf16"), limit=HOPELESS * fp32)
    pick: Resolved = "bf16" if fp32 / bf16 >= MIN_GAIN else "fp32"
    return Probe(round(fp32, 6), round(bf16, 6), pick)


def _read(path: Path) -> dict[str, dict[str, dict[str, object]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, dict[str, dict[str, object]]]) -> None:
    """Atomically (a concurrent writer may win; the loser's entry is probed again later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def recall(cache_dir: Path, key: str) -> dict[str, object] | None:
    """This machine's measured entry ``key`` (a precision or compile pick), if there is one."""
    entry = _read(cache_dir / CACHE_FILE).get(machine_key(), {}).get(key)
    return entry if isinstance(entry, dict) else None


def remember(cache_dir: Path, key: str, entry: dict[str, object]) -> None:
    """Store this machine's measured entry ``key``."""
    path = cache_dir / CACHE_FILE
    data = _read(path)
    data.setdefault(machine_key(), {})[key] = entry
    _write(path, data)


def resolve(
    requested: str,
    *,
    device: str,
    shape: Shape,
    cache_dir: Path,
    probe_fn: Callable[[Shape], Probe] | None = None,
) -> Resolved:
    """``requested`` as it is, or for "auto" the faster precision here (probed once per machine
    and shape, then read from the cache)."""
    if requested in ("fp32", "bf16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f'precision = {requested!r}; use "auto", "fp32" or "bf16"')
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    key = shape.key()
    cached = recall(cache_dir, key)
    if cached is not None and cached.get("pick") in ("fp32", "bf16"):
        return cached["pick"]  # type: ignore[return-value]
    result = (probe_fn or probe)(shape)
    remember(cache_dir, key, asdict(result))
    logger.info(
        "precision auto -> %s for %s on %s: fp32 %.2f ms, bf16 %.2f ms a step (bf16 %.2fx)",
        result.pick,
        key,
        cpu_description()["model"],
        result.fp32_s * 1e3,
        result.bf16_s * 1e3,
        result.gain,
    )
    return result.pick


def probe_shape(dims: Sequence[int], batch: int, width: int) -> Shape:
    return Shape(tuple(int(d) for d in dims), int(batch), max(1, int(width)))
