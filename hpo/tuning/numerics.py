"""A pipeline's numerics (training precision and ``torch.compile``), decided once and stored.

Precision and compile change what a model learns (bf16 rounds differently; a compiled bf16 step
fuses and rounds differently again), so they belong to the pipeline, not to a trial or a machine:
picked per trial from a per-machine cache, a second worker, a resumed run, a fresh data
directory or a node of another CPU kind re-decided them mid-stage, and a 0.1 s timing near a bar
moved the faithful pipeline's selections (an AMD Zen 4 picked another optimizer in two clones).
So the first worker that needs them decides, under the storage's lock (:func:`decide`), and
stores the decision, with the machine it was measured on and the measured gains, in the
study ``<pipeline>.numerics``; every later worker and every resume reads it back and nothing
probes again. A study file that pins ``precision`` or ``compile`` in ``[defaults]`` decides
that half itself (and the pinned value enters the stages' fingerprints).

A worker whose CPU has no bf16 instructions refuses to train a pipeline whose stored numerics are
bf16 (measured 16x slower than fp32 on an AMD Zen 3): one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo.errors import ConfigError
from hpo.settings import TrainPrecision
from hpo.tuning.locks import claim_lock

logger = logging.getLogger(__name__)

ATTR = "hpo:numerics"


@dataclass(frozen=True)
class Numerics:
    """How every torch model of a pipeline trains: its precision and whether stacks compile.

    ``source`` says who decided each: "study file" (pinned) or "measured" (``measured``: the
    probes' figures, ``machine``: where they ran)."""

    precision: TrainPrecision
    compile: bool
    source: dict[str, str] = field(default_factory=dict)  # {"precision": ..., "compile": ...}
    machine: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    decided_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Numerics:
        precision = d.get("precision")
        if precision not in ("fp32", "bf16") or not isinstance(d.get("compile"), bool):
            raise ConfigError(
                f"the stored numerics {dict(d)!r} are not hpo's; delete the study holding them "
                "(optuna delete-study) to decide them again"
            )
        return cls(
            precision=precision,
            compile=d["compile"],
            source=dict(d.get("source") or {}),
            machine=dict(d.get("machine") or {}),
            measured=dict(d.get("measured") or {}),
            decided_at=str(d.get("decided_at", "")),
        )

    def describe(self) -> str:
        """One line: ``bf16, eager (measured on AMD EPYC [avx512_bf16], torch 2.13.0: bf16 1.85x,
        compile 1.02x)``."""
        what = f"{self.precision}, {'torch.compile' if self.compile else 'eager'}"
        measured = [k for k, v in self.source.items() if v == "measured"]
        if not measured:
            return f"{what} (pinned by the study file)"
        gains = ", ".join(
            f"{name} {self.measured[key]:.2f}x"
            for name, key in (("bf16", "bf16_gain"), ("compile", "compile_gain"))
            if isinstance(self.measured.get(key), int | float)
        )
        where = f"{self.machine.get('model', '?')} [{self.machine.get('bf16_flags', '?')}]"
        pinned = [k for k, v in self.source.items() if v != "measured"]
        tail = f"; {', '.join(pinned)} pinned by the study file" if pinned else ""
        torch_version = self.machine.get("torch", "?")
        return f"{what} (measured on {where}, torch {torch_version}{': ' + gains if gains else ''}{tail})"


def study_name(pipeline: str) -> str:
    return f"{pipeline}.numerics"


def stored(storage: optuna.storages.BaseStorage, pipeline: str) -> Numerics | None:
    """The pipeline's stored numerics, if some worker decided them."""
    try:
        study = optuna.load_study(study_name=study_name(pipeline), storage=storage)
    except KeyError:
        return None
    value = study.user_attrs.get(ATTR)
    return Numerics.from_dict(value) if isinstance(value, Mapping) else None


def decide(storage: optuna.storages.BaseStorage, pipeline: str, measure: Callable[[], Numerics]) -> Numerics:
    """The pipeline's numerics: the stored ones, else ``measure()``'d by this worker and stored,
    under the storage's lock so that two workers starting together decide once."""
    found = stored(storage, pipeline)
    if found is not None:
        return found
    with claim_lock(storage, study_name(pipeline)):
        found = stored(storage, pipeline)
        if found is not None:
            return found
        numerics = dataclasses.replace(
            measure(), decided_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        )
        study = optuna.create_study(study_name=study_name(pipeline), storage=storage, load_if_exists=True)
        study.set_user_attr(ATTR, numerics.to_dict())
    logger.debug("pipeline %s: numerics decided here: %s", pipeline, numerics.describe())
    return numerics


def check_runnable(numerics: Numerics, *, has_bf16: bool, device: str, pipeline: str) -> None:
    """Refuse, in one line, to train measured bf16 numerics on a CPU without bf16 instructions."""
    if numerics.precision != "bf16" or device != "cpu" or has_bf16:
        return
    if numerics.source.get("precision") != "measured":
        logger.warning(
            "pipeline %s pins precision = bf16, and this CPU has no bf16 instructions "
            "(measured 16x slower than fp32 on an AMD Zen 3)",
            pipeline,
        )
        return
    raise ConfigError(
        f"pipeline {pipeline!r} trains in bf16 (measured on {numerics.machine.get('model', '?')}), and this "
        "CPU has no bf16 instructions (about 16x slower than fp32): run this worker on a CPU with "
        "avx512_bf16 or AMX, or pin the numerics for every worker with --set defaults.precision=fp32 "
        "under a new pipeline name (--set pipeline.name=...)"
    )
