"""The search kind: batched, pruned, stacked trials against the same trials run one at a time."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.pipeline import Pipeline
from hpo.tuning import records

SEARCH = """
[pipeline]
name = "s"

[data]
source = "synthetic"
rows = 4000
seed = 42

[defaults]
hidden = [32, 32]
batch_size = 64

[stages.search]
kind = "search"
n_trials = 8
batch = 4
sampler = "tpe"
pruner = "successive_halving"
epochs = 4
min_epochs = 1
STACK
[stages.search.space]
lr = { low = 1e-4, high = 3e-3, log = true }
dropout = { low = 0.0, high = 0.4 }
hidden = { choices = [[32, 32], [64, 32]] }
"""


def _run(root: Path, stack: bool) -> list[optuna.trial.FrozenTrial]:
    root.mkdir()
    cfg = root / "s.toml"
    cfg.write_text(SEARCH.replace("STACK", f"stack = {'true' if stack else 'false'}"))
    pipe = Pipeline.load(
        cfg,
        storage=f"sqlite:///{root / 'hpo.db'}",
        artifacts=root / "a",
        data_dir=Path(os.environ["HPO_DATA_DIR"]),
    )
    pipe.run()
    study = optuna.load_study(study_name="s.search", storage=pipe.ctx.storage)
    return sorted(study.get_trials(), key=lambda t: t.number)


@pytest.mark.slow
def test_batched_stacked_trials_equal_the_same_trials_one_at_a_time(tmp_path: Path) -> None:
    stacked, alone = _run(tmp_path / "stacked", True), _run(tmp_path / "alone", False)
    assert len(stacked) == len(alone) == 8
    assert [t.params for t in stacked] == [t.params for t in alone]  # same suggestions
    assert [t.state for t in stacked] == [t.state for t in alone]  # same pruning decisions
    assert {t.state for t in stacked} == {TrialState.COMPLETE, TrialState.PRUNED}  # the pruner did act
    for a, b in zip(stacked, alone, strict=True):
        assert a.intermediate_values.keys() == b.intermediate_values.keys()
        for step, value in a.intermediate_values.items():
            assert value == pytest.approx(
                b.intermediate_values[step], abs=3 / 600
            )  # a borderline row or three
        if a.state == TrialState.COMPLETE:
            assert a.value == pytest.approx(b.value, abs=3 / 600)
    pruned = [t for t in stacked if t.state == TrialState.PRUNED]
    assert all(len(t.user_attrs[records.HISTORY]) < 4 for t in pruned)  # it left the stack early
    assert all(len(t.intermediate_values) == 4 for t in stacked if t.state == TrialState.COMPLETE)


@pytest.mark.parametrize(
    ("sampler", "problem"),
    [
        ("GridSampler", "sampler 'GridSampler' needs search_space, which hpo does not give it"),
        ("PartialFixedSampler", "sampler 'PartialFixedSampler' needs fixed_params, base_sampler"),
        ("BaseSampler", "sampler 'BaseSampler' is not an Optuna sampler; use tpe, random"),
        ("nsgaii", "sampler 'nsgaii' is not an Optuna sampler"),  # a submodule of optuna.samplers
        ("_base", "sampler '_base' is not an Optuna sampler"),
        ("cmaes", "sampler 'cmaes' needs the package cmaes, which is not installed; install it"),
    ],
)
def test_a_sampler_that_would_fail_later_is_one_line_when_the_study_file_is_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sampler: str,
    problem: str,
) -> None:
    """Names of optuna.samplers that are not samplers, samplers that need arguments hpo does not
    give, and samplers whose package is missing: refused by `hpo validate`, exit 2."""
    import importlib.util

    from hpo import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a)
    )
    cfg = tmp_path / "s.toml"
    cfg.write_text(SEARCH.replace("STACK", "").replace('sampler = "tpe"', f'sampler = "{sampler}"'))
    assert cli.main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hpo: error: {cfg}: stages.search: {problem}"), err


@pytest.mark.parametrize("sampler", ["tpe", "random", "BruteForceSampler", "TPESampler", "NSGAIIISampler"])
def test_a_valid_sampler_is_built_as_validated(tmp_path: Path, sampler: str) -> None:
    from hpo import plan
    from hpo.stages.search import Search, sampler_class

    cfg = tmp_path / "s.toml"
    cfg.write_text(SEARCH.replace("STACK", "").replace('sampler = "tpe"', f'sampler = "{sampler}"'))
    stage = plan.load(cfg).stage("search")
    assert isinstance(stage, Search)
    assert type(stage.sampler(seed=3)) is sampler_class(sampler)
