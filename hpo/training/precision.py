"""``precision = "auto"``: bf16 only where a probe measured it clearly faster on this machine.

Whether bfloat16 autocast pays depends on the CPU, not on hpo: measured on the machines this
project has run on, the stacked training step in bf16 ran about 1.5x faster than fp32 on a Xeon
with AMX, 1.6x on an AMD Zen 4 with avx512_bf16, and about 16x *slower* on an AMD Zen 3 with AVX2
only (no bf16 instructions; the faithful protocol would take hours there). So no precision is
right by default, and "auto" asks the machine: :func:`probe` times training steps of the run's
own shape (input width, hidden layers, outputs, batch size and stack width, the width capped at
:data:`PROBE_MAX_WIDTH`) in fp32 and in bf16, in :data:`ROUNDS` interleaved rounds
(:func:`interleaved`), and picks bf16 only when its fastest step is at least :data:`MIN_GAIN`
times faster than fp32's (a dead band: near a tie, fp32). The probe is a plain stacked MLP step
(``bmm`` layers, ReLU, cross-entropy, backward), the shape of what hpo's trainers run; a bf16
round ends after one step where that step costs :data:`HOPELESS` fp32 steps (emulated bf16).

A pipeline decides its numerics **once** (:mod:`hpo.tuning.numerics`): the first worker that
needs them probes, under a storage lock, and stores the picks in the storage, where every worker
and every resume reads them, so no trial probes again and a timing cannot move a result
mid-pipeline. Probes are also cached per machine (CPU model and flags, torch version; not the
live thread count, which changes as workers come and go) in ``<data dir>/precision.json``,
written under a file lock, so a new pipeline on the same machine does not probe again; the same
file keeps the stacked trainer's measured ``torch.compile`` picks (:func:`recall`,
:func:`remember`). On CUDA, "auto" is bf16 where the GPU supports it
(``torch.cuda.is_bf16_supported()``), without a probe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import filelock
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
HOPELESS = 4.0  # a bf16 step as slow as this many fp32 steps ends its round (emulated bf16)
STEP_BUDGET_S = 0.05  # timed steps per precision and round, at most this long
#: interleaved rounds of a probe (fp32, bf16, fp32, bf16, ...): a slow moment of the machine
#: (another process, a frequency change) lands in one round of each, not in one precision
ROUNDS = 7
#: CPU flags with which bf16 autocast runs on the CPU's own instructions (without them, emulated:
#: measured 16x slower than fp32 on an AMD Zen 3)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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
    """Seconds of the fastest training step in each precision, their ratio (fp32 / bf16: above
    1, bf16 is faster), and the pick."""

    fp32_s: float
    bf16_s: float
    pick: Resolved
    gain: float = 0.0


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
    """What a probe's result depends on: the CPU (model and flags) and torch. Not the thread
    count, which changes as workers on a host come and go: a pick that flipped with it would
    flip a stage's numerics mid-run."""
    cpu = cpu_description()
    return f"{cpu['model']} [{cpu['flags_sha']}] torch {torch.__version__}"


def has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (:data:`BF16_FLAGS`)."""
    return any(f in cpu_description()["bf16_flags"].split() for f in BF16_FLAGS)


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


def seconds_per_step(step: Callable[[], None], *, limit: float | None = None, warm: bool = True) -> float:
    """Median seconds of timed steps (within :data:`STEP_BUDGET_S`), after two warm-ups where
    ``warm`` (first-call allocations and oneDNN's primitive creation make the first steps slow);
    stops after a step slower than ``limit``."""
    if warm:
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


@dataclass(frozen=True)
class Timing:
    """Two ways of doing one step, timed in interleaved rounds: each one's fastest step, in
    seconds, and their ratio ``a / b`` (above 1: ``b`` is faster)."""

    a_s: float
    b_s: float
    gain: float


def fastest_step(step: Callable[[], None], *, limit: float | None = None) -> float:
    """The fastest of the steps timed within :data:`STEP_BUDGET_S` (at most 50; stops after a
    step slower than ``limit``). Interference from other work only ever adds time, so the
    fastest step is what the step costs on this machine; a median moves with the load (measured
    on an AMD Zen 5 beside two busy processes: the median ratio of one shape ranged over
    0.8x-3.3x in three probes)."""
    best = math.inf
    spent = 0.0
    for _ in range(50):
        t0 = time.perf_counter()
        step()
        took = time.perf_counter() - t0
        best = min(best, took)
        spent += took
        if spent >= STEP_BUDGET_S or (limit is not None and took > limit):
            break
    return best


def interleaved(
    a: Callable[[], None], b: Callable[[], None], *, rounds: int = ROUNDS, hopeless: float | None = None
) -> Timing:
    """Time ``a`` against ``b`` in ``rounds`` alternating rounds after two warm-up steps each
    (first-call allocations, oneDNN's primitive creation), so that a slow moment of the machine
    falls on both, and compare their fastest steps (:func:`fastest_step`). With ``hopeless``,
    a round of ``b`` ends after a step that many times slower than ``a``'s fastest (``b``
    emulated: one step per round is enough to tell; every round still runs, so that one slow
    moment cannot decide)."""
    for fn in (a, b, a, b):
        fn()
    best_a = best_b = math.inf
    for _ in range(rounds):
        best_a = min(best_a, fastest_step(a))
        best_b = min(best_b, fastest_step(b, limit=hopeless * best_a if hopeless is not None else None))
    return Timing(best_a, best_b, best_a / best_b)


def probe(shape: Shape) -> Probe:
    """Time fp32 against bf16 training steps of ``shape`` on this CPU (:func:`interleaved`);
    bf16 where it is at least :data:`MIN_GAIN` times faster."""
    timing = interleaved(_step(shape, "fp32"), _step(shape, "bf16"), hopeless=HOPELESS)
    pick: Resolved = "bf16" if timing.gain >= MIN_GAIN else "fp32"
    return Probe(round(timing.a_s, 6), round(timing.b_s, 6), pick, round(timing.gain, 4))


def _read(path: Path) -> dict[str, dict[str, dict[str, object]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, dict[str, dict[str, object]]]) -> None:
    """Atomically (readers see the old file or the new one); callers hold :func:`_locked`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The cache file's lock: a read-modify-write by one process at a time, so that two
    workers remembering at once both keep their entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{path}.lock", timeout=60):
        yield


def recall(cache_dir: Path, key: str) -> dict[str, object] | None:
    """This machine's measured entry ``key`` (a precision or compile pick), if there is one."""
    entry = _read(cache_dir / CACHE_FILE).get(machine_key(), {}).get(key)
    return entry if isinstance(entry, dict) else None


def remember(cache_dir: Path, key: str, entry: dict[str, object]) -> None:
    """Store this machine's measured entry ``key``."""
    path = cache_dir / CACHE_FILE
    with _locked(path):
        data = _read(path)
        data.setdefault(machine_key(), {})[key] = entry
        _write(path, data)


def measured(shape: Shape, cache_dir: Path, probe_fn: Callable[[Shape], Probe] | None = None) -> Probe:
    """This machine's probe of ``shape``: from the cache, else probed now and cached."""
    key = shape.key()
    cached = recall(cache_dir, key)
    if cached is not None and cached.get("pick") in ("fp32", "bf16"):
        fp32_s, bf16_s = float(cached["fp32_s"]), float(cached["bf16_s"])  # type: ignore[arg-type]
        gain = float(cached.get("gain") or fp32_s / bf16_s)  # type: ignore[arg-type]
        return Probe(fp32_s, bf16_s, cached["pick"], gain)  # type: ignore[arg-type]
    result = (probe_fn or probe)(shape)
    remember(cache_dir, key, asdict(result))
    logger.debug(
        "precision probe of %s on %s: fp32 %.2f ms, bf16 %.2f ms a step (bf16 %.2fx) -> %s",
        key,
        cpu_description()["model"],
        result.fp32_s * 1e3,
        result.bf16_s * 1e3,
        result.gain,
        result.pick,
    )
    return result


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
    return measured(shape, cache_dir, probe_fn).pick


def probe_shape(dims: Sequence[int], batch: int, width: int) -> Shape:
    return Shape(tuple(int(d) for d in dims), int(batch), max(1, int(width)))
