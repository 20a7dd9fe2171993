"""precision = "auto": the probe's pick, its cache per machine, the resolved precision stored on
every trial and shown by status, and the stage fingerprint keeping "auto" (a resume on another
CPU, whose probe picks otherwise, is not refused). The probe's outcome is forced here; the real
probe runs once on a tiny shape (its figures are the benchmark's business, not a test's)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from hpo import cli
from hpo.families.mlp import stacked
from hpo.pipeline import Pipeline
from hpo.settings import ModelConfig, OptimConfig, RunConfig, TrainConfig
from hpo.stages import StageContext
from hpo.tasks import Classification
from hpo.training import TensorData, precision
from hpo.tuning import records

SHAPE = precision.Shape((90, 256, 256, 10), 128, 3)


def _forced(
    pick: precision.Resolved, calls: list[precision.Shape]
) -> Callable[[precision.Shape], precision.Probe]:
    def fake(shape: precision.Shape) -> precision.Probe:
        calls.append(shape)
        return precision.Probe(1.0, 0.5 if pick == "bf16" else 2.0, pick)

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


STUDY = """
[pipeline]
name = "auto"

[data]
source = "synthetic"
rows = 2000
seed = 42

[defaults]
hidden = [16, 16]
precision = "auto"

[stages.lr_range]
kind = "lr_range"
num_iter = 20
verify_epochs = 1

[stages.init]
kind = "sweep"
choices = { init = ["default", "xavier_uniform"] }
epochs = 1

[stages.final]
kind = "final"
epochs = 1
"""


def test_a_pipeline_stores_the_resolved_precision_and_fingerprints_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "auto.toml"
    cfg.write_text(STUDY)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    calls: list[precision.Shape] = []
    monkeypatch.setattr(precision, "probe", _forced("bf16", calls))
    compiles: list[int] = []

    def no_gain(model: ModelConfig, *, batch: int, width: int, task: object) -> tuple[float, float]:
        compiles.append(width)
        return 1.0, 1.0

    monkeypatch.setattr(stacked, "measure_compile", no_gain)
    pipe = Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a")
    pipe.run()
    assert compiles == [2]  # the bf16 sweep's 2-wide stack is the one candidate; measured once, no gain
    widths = sorted({s.width for s in calls})
    assert calls and widths == [1, 2]  # one model (range test, verification, final); the 2-wide sweep
    for stage in ("lr_range", "init", "final"):
        study = optuna.load_study(study_name=f"auto.{stage}", storage=db)
        assert all(t.user_attrs[records.TRAIN]["precision"] == "bf16" for t in study.trials), stage
        assert all(t.user_attrs[records.TRAIN]["compile"] is False for t in study.trials), stage
        assert study.user_attrs[records.SETTINGS]["carried_in"]["precision"] == "auto"
    assert cli.main(["status", "--config", str(cfg), "--storage", db]) == 0
    assert "(bf16)" in capsys.readouterr().out
    # on another CPU the probe says fp32: the stored stages are complete and not refused as drifted
    monkeypatch.setattr(precision, "probe", _forced("fp32", calls))
    monkeypatch.setattr(precision, "machine_key", lambda: "another CPU")
    result = Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a").run()
    assert {r.status for r in result.runs} == {"already complete"}


def _ctx(tmp_path: Path) -> StageContext:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    pipe = Pipeline.load(
        _study_file(tmp_path),
        storage=db,
        artifacts=tmp_path / "a",
        data_dir=tmp_path,
    )
    return pipe.ctx


def _study_file(tmp_path: Path) -> Path:
    cfg = tmp_path / "auto.toml"
    cfg.write_text(STUDY)
    return cfg


def test_compile_auto_takes_the_measured_pick_and_caches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _ctx(tmp_path)
    normed = RunConfig(hidden=(16, 16), norm="layernorm")
    timed: list[tuple[str, int]] = []

    def fake(model: ModelConfig, *, batch: int, width: int, task: object) -> tuple[float, float]:
        timed.append((model.norm, width))
        return (1.5, 1.0) if model.norm == "layernorm" else (1.0, 1.0)

    monkeypatch.setattr(stacked, "measure_compile", fake)
    assert ctx.compile(normed, 25, "bf16") and not ctx.compile(RunConfig(hidden=(16, 16)), 3, "bf16")
    assert ctx.compile(normed, 12, "bf16")  # width capped at the probe's 8: the cached pick
    assert timed == [("layernorm", 8), ("none", 3)]
    cached = json.loads((tmp_path / precision.CACHE_FILE).read_text())[precision.machine_key()]
    assert [v["pick"] for k, v in sorted(cached.items()) if k.startswith("compile ")] == [True, False]
    # never a candidate: fp32 (stays equal to the one-model trainer), one model, another family
    assert not ctx.compile(normed, 25, "fp32") and not ctx.compile(normed, 1, "bf16")
    torch_family = RunConfig(family="torch", module="torch.nn:Identity")
    assert not ctx.compile(torch_family, 25, "bf16")
    assert len(timed) == 2


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
