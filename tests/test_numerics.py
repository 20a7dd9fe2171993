"""A pipeline's numerics (precision, compile) are decided once, stored, and read back by every
worker and resume; what a storage hands on cannot choose the code that runs.

The probes' outcomes are forced here (the timing itself: tests/test_precision.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

from hpo import cli
from hpo.families.mlp import stacked
from hpo.pipeline import Pipeline
from hpo.settings import ModelConfig
from hpo.training import precision
from hpo.tuning import numerics, records

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


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line a failed command printed."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hpo: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _study(tmp_path: Path) -> Path:
    cfg = tmp_path / "auto.toml"
    cfg.write_text(STUDY)
    return cfg


def _forced(
    pick: precision.Resolved, calls: list[precision.Shape]
) -> Callable[[precision.Shape], precision.Probe]:
    def fake(shape: precision.Shape) -> precision.Probe:
        calls.append(shape)
        gain = 2.0 if pick == "bf16" else 0.5
        return precision.Probe(1.0, 1.0 / gain, pick, gain)

    return fake


def _compile_probe(widths: list[int], gain: float) -> Callable[..., precision.Timing]:
    def fake(model: ModelConfig, *, batch: int, width: int, task: object) -> precision.Timing:
        widths.append(width)
        return precision.Timing(gain, 1.0, gain)

    return fake


def _trains(db: str, stage: str) -> list[dict[str, object]]:
    study = optuna.load_study(study_name=f"auto.{stage}", storage=db)
    return [t.user_attrs[records.TRAIN] for t in study.trials]


def test_a_pipeline_decides_its_numerics_once_and_every_trial_trains_in_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _study(tmp_path)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    calls: list[precision.Shape] = []
    widths: list[int] = []
    monkeypatch.setattr(precision, "probe", _forced("bf16", calls))
    monkeypatch.setattr(precision, "has_bf16", lambda: True)  # the decision, whatever CPU runs the test
    monkeypatch.setattr(stacked, "measure_compile", _compile_probe(widths, 1.0))
    Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a", data_dir=tmp_path / "d1").run()
    # one probe for the whole pipeline, at its widest stage's stack (the sweep's 2 choices)
    assert [s.width for s in calls] == [2] and widths == [2]
    for stage in ("lr_range", "init", "final"):  # one model alone and a stack of two alike
        assert {(t["precision"], t["compile"]) for t in _trains(db, stage)} == {("bf16", False)}, stage
        study = optuna.load_study(study_name=f"auto.{stage}", storage=db)
        carried = study.user_attrs[records.SETTINGS]["carried_in"]
        assert carried["precision"] == "auto" and "compile" not in carried  # old fingerprints match
    decided = numerics.stored(optuna.storages.RDBStorage(db), "auto")
    assert decided is not None and (decided.precision, decided.compile) == ("bf16", False)
    assert decided.source == {"precision": "measured", "compile": "measured"}
    assert decided.measured["bf16_gain"] == 2.0 and decided.measured["compile_gain"] == 1.0
    assert cli.main(["status", "--config", str(cfg), "--storage", db]) == 0
    assert "numerics: bf16, eager (measured on" in capsys.readouterr().out

    # another worker, another CPU, an empty data directory: it reads the stored numerics
    monkeypatch.setattr(precision, "probe", _forced("fp32", calls))
    monkeypatch.setattr(precision, "machine_key", lambda: "another CPU")
    again = Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a", data_dir=tmp_path / "d2")
    again.run_stage("init", force=True)
    assert len(calls) == 1 and widths == [2]  # nothing probed again
    assert {t["precision"] for t in _trains(db, "init")} == {"bf16"}


def test_a_measured_compile_gain_compiles_every_stack_of_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    monkeypatch.setattr(precision, "probe", _forced("bf16", []))
    monkeypatch.setattr(precision, "has_bf16", lambda: True)  # the decision, whatever CPU runs the test
    monkeypatch.setattr(stacked, "measure_compile", _compile_probe([], stacked.COMPILE_MIN_GAIN))
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # the decision, not the compiler
    pipe = Pipeline.load(_study(tmp_path), storage=db, artifacts=tmp_path / "a", data_dir=tmp_path / "d")
    pipe.run_stage("lr_range")
    pipe.run_stage("init")
    assert {t["compile"] for t in _trains(db, "init")} == {True}
    # just under the bar (a dead band): eager
    db2 = f"sqlite:///{tmp_path / 'hpo2.db'}"
    monkeypatch.setattr(stacked, "measure_compile", _compile_probe([], stacked.COMPILE_MIN_GAIN - 0.01))
    Pipeline.load(
        _study(tmp_path), storage=db2, artifacts=tmp_path / "a", data_dir=tmp_path / "d2"
    ).run_stage("lr_range")
    decided = numerics.stored(optuna.storages.RDBStorage(db2), "auto")
    assert decided is not None and decided.compile is False


def test_pinned_numerics_probe_nothing_and_enter_the_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(*args: object, **kwargs: object) -> precision.Probe:
        raise AssertionError("probed")

    monkeypatch.setattr(precision, "probe", never)
    monkeypatch.setattr(stacked, "measure_compile", never)
    cfg = _study(tmp_path)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    pins = ["defaults.precision=fp32", "defaults.compile=false"]
    pipe = Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a", overrides=pins)
    pipe.run_stage("lr_range")
    decided = numerics.stored(pipe.ctx.storage, "auto")
    assert decided is not None and decided.source == {"precision": "study file", "compile": "study file"}
    study = optuna.load_study(study_name="auto.lr_range", storage=db)
    assert study.user_attrs[records.SETTINGS]["defaults"]["compile"] is False
    # pinning compile otherwise is drift, refused in one line
    code = cli.main(["-q", "run", "--config", str(cfg), "--storage", db, "--set", "defaults.precision=fp32"])
    assert code == 2 and "compile" in _error(capsys)


def test_a_worker_without_bf16_instructions_refuses_measured_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _study(tmp_path)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    monkeypatch.setattr(precision, "probe", _forced("bf16", []))
    monkeypatch.setattr(precision, "has_bf16", lambda: True)  # the worker that measured it had them
    Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a").run_stage("lr_range")
    monkeypatch.setattr(precision, "has_bf16", lambda: False)
    assert (
        cli.main(["-q", "run", "--config", str(cfg), "--storage", db, "--artifacts", str(tmp_path / "a")])
        == 2
    )
    err = _error(capsys)
    assert "no bf16 instructions" in err and "defaults.precision=fp32" in err
    with pytest.raises(KeyError):  # it claimed nothing: the next stage's study was never made
        optuna.load_study(study_name="auto.init", storage=db)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workers_starting_together_decide_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    measured: list[int] = []

    def measure() -> numerics.Numerics:
        measured.append(1)
        time.sleep(0.3)  # long enough for every other worker to arrive meanwhile
        return numerics.Numerics("bf16", True, {"precision": "measured", "compile": "measured"})

    results: list[numerics.Numerics] = []
    optuna.storages.RDBStorage(url)  # the schema, made once (as `hpo init` does)

    def worker() -> None:
        storage = optuna.storages.RDBStorage(url)  # each worker its own engine and connections
        results.append(numerics.decide(storage, "p", measure))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(measured) == 1 and len(results) == 4
    assert {(r.precision, r.compile, r.decided_at) for r in results} == {
        ("bf16", True, results[0].decided_at)
    }


def test_the_probe_cache_ignores_the_thread_count_and_keeps_concurrent_entries(tmp_path: Path) -> None:
    key = precision.machine_key()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1 if threads_before > 1 else 2)
    try:
        assert precision.machine_key() == key
    finally:
        torch.set_num_threads(threads_before)

    def remember(k: int) -> None:
        for i in range(25):
            precision.remember(tmp_path, f"shape {k}/{i}", {"pick": "fp32"})

    writers = [threading.Thread(target=remember, args=(k,)) for k in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    cached = json.loads((tmp_path / precision.CACHE_FILE).read_text())[key]
    assert len(cached) == 100  # no writer lost another's entries


def test_a_stored_selection_naming_other_code_is_refused_importing_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _study(tmp_path)
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    artifacts = ["--artifacts", str(tmp_path / "a")]
    Pipeline.load(cfg, storage=db, artifacts=tmp_path / "a").run_stage("lr_range")
    marker = tmp_path / "imported"
    evil = tmp_path / "elsewhere" / "evil.py"
    evil.parent.mkdir()
    evil.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import torch\n"
        "def make(n_features, n_outputs):\n    return torch.nn.Linear(n_features, n_outputs)\n"
    )
    study = optuna.load_study(study_name="auto.lr_range", storage=db)
    chosen = {"family": "torch", "module": f"{evil}:make", "params": {}, "lr": 0.01}
    selection = dict(study.user_attrs[records.SELECTION])
    selection["config_out"] = chosen
    study.set_user_attr(records.SELECTION, selection)
    with sqlite3.connect(tmp_path / "hpo.db") as conn:  # finished trials: as an attacker would
        conn.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE key = ?",
            (json.dumps(chosen), records.CONFIG),
        )
    assert cli.main(["-q", "run", "--config", str(cfg), "--storage", db, *artifacts]) == 2
    err = _error(capsys)
    assert "family = 'torch'" in err and "a storage does not choose what runs" in err
    assert not marker.exists()
    # a value that is not the setting's type is refused the same way
    selection["config_out"] = {**study.user_attrs[records.CARRIED_IN], "lr": "0.01; import os"}
    study.set_user_attr(records.SELECTION, selection)
    assert cli.main(["-q", "run", "--config", str(cfg), "--storage", db, *artifacts]) == 2
    assert "hands on lr = '0.01; import os'" in _error(capsys)


def test_what_a_stage_hands_on_is_rebuilt_from_the_study_file(tmp_path: Path) -> None:
    """The tuned settings come from the storage; the untuned ones (seed, precision, device) from
    the study file, whatever the storage says."""
    db = f"sqlite:///{tmp_path / 'hpo.db'}"
    pipe = Pipeline.load(_study(tmp_path), storage=db, artifacts=tmp_path / "a")
    pipe.run_stage("lr_range")
    study = optuna.load_study(study_name="auto.lr_range", storage=db)
    selection = dict(study.user_attrs[records.SELECTION])
    selection["config_out"] = {**selection["config_out"], "lr": 0.0123, "seed": 7, "precision": "bf16"}
    study.set_user_attr(records.SELECTION, selection)
    cfg = pipe.input_config(pipe.plan.stage("init"))
    assert (cfg.lr, cfg.seed, cfg.precision) == (0.0123, 42, "auto")
