"""precision = "auto": the probe's pick and its cache per machine (a pipeline deciding its
numerics once: tests/test_numerics.py). The probe's outcome is forced here; the real probe runs
once on a tiny shape (its figures are the benchmark's business, not a test's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo.families.mlp import stacked
from hpo.settings import ModelConfig, OptimConfig, RunConfig, TrainConfig
from hpo.tasks import Classification
from hpo.training import TensorData, precision

SHAPE = precision.Shape((90, 256, 256, 10), 128, 3)


def _forced(
    pick: precision.Resolved, calls: list[precision.Shape]
) -> Callable[[precision.Shape], precision.Probe]:
    def fake(shape: precision.Shape) -> precision.Probe:
        calls.append(shape)
        return precision.Probe(1.0, 0.5 if pick == "bf16" else 2.0, pick, 2.0 if pick == "bf16" else 0.5)

    return fake


@pytest.mark.parametrize("pick", ["bf16", "fp32"])
def test_auto_takes_the_probe_pick_and_caches_it_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pick: precision.Resolved
) -> None:
    calls: list[precision.Shape] = []
    fake = _forced(pick, calls)
    assert precision.resolve("auto", device="cpu", shape=SHAPE, cache_dir=tmp_path, probe_fn=fake) == pick
    assert precision.resolve("auto", device="cpu", shape=SHAPE, cache_dir=tmp_path, probe_fn=fake) == pick
    assert len(calls) == 1  # the second answer came from the cache
    cache = (tmp_path / precision.CACHE_FILE).read_text()
    assert precision.machine_key() in cache and SHAPE.key() in cache
    wider = precision.Shape((90, 256, 256, 10), 128, 25)
    precision.resolve("auto", device="cpu", shape=wider, cache_dir=tmp_path, probe_fn=fake)
    assert len(calls) == 2 and wider.key().endswith(f"/w{precision.PROBE_MAX_WIDTH}")
    monkeypatch.setattr(precision, "machine_key", lambda: "another CPU")
    precision.resolve("auto", device="cpu", shape=SHAPE, cache_dir=tmp_path, probe_fn=fake)
    assert len(calls) == 3  # another machine probes for itself


def test_explicit_precisions_are_not_probed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(shape: precision.Shape) -> precision.Probe:
        raise AssertionError("probed")

    for p in ("fp32", "bf16"):
        assert precision.resolve(p, device="cpu", shape=SHAPE, cache_dir=tmp_path, probe_fn=never) == p
    with pytest.raises(ValueError, match="precision = 'fp16'"):
        precision.resolve("fp16", device="cpu", shape=SHAPE, cache_dir=tmp_path, probe_fn=never)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve("auto", device="cuda", shape=SHAPE, cache_dir=tmp_path, probe_fn=never) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve("auto", device="cuda", shape=SHAPE, cache_dir=tmp_path, probe_fn=never) == "fp32"


@pytest.mark.real_probe
def test_the_real_probe_times_both_precisions(monkeypatch: pytest.MonkeyPatch) -> None:
    result = precision.probe(precision.Shape((8, 16, 3), 32, 2))
    assert result.fp32_s > 0 and result.bf16_s > 0
    for bar, pick in ((0.0, "bf16"), (float("inf"), "fp32")):  # the pick: the timed gain against MIN_GAIN
        monkeypatch.setattr(precision, "MIN_GAIN", bar)
        assert precision.probe(precision.Shape((8, 16, 3), 32, 2)).pick == pick
    cpu = precision.cpu_description()
    assert cpu["model"] and cpu["bf16_flags"]


def test_auto_must_be_resolved_before_training() -> None:
    with pytest.raises(ValueError, match="must be resolved before training"):
        RunConfig(precision="auto").train(epochs=1, device="cpu")
    assert RunConfig(precision="auto").train(epochs=1, device="cpu", precision="bf16").precision == "bf16"
    assert RunConfig(precision="fp32").train(epochs=1, device="cpu").precision == "fp32"


def test_a_stack_compiles_where_its_members_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []

    def spy(fn: object, **_: object) -> object:
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", spy)
    x, y = np.zeros((64, 8), np.float32), np.zeros(64, np.int64)
    data = [TensorData.from_numpy(x, y, x, y)]
    model = ModelConfig(hidden=(8,), n_features=8, n_outputs=2)
    for flag, want in ((False, 0), (True, 1)):
        train = TrainConfig(epochs=1, batch_size=32, precision="bf16", compile=flag)
        members = [stacked.Member(model, OptimConfig(), train, 0)] * 2
        stacked.fit_stacked(members, data, task=Classification(("a", "b")))
        assert len(compiled) == want
