"""One evaluation for every kind: ``grid`` scored on the validation rows or by k-fold CV (``cv``),
``grid_cv`` as its alias, ``sweep`` and ``search`` with ``cv``."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from hpo import cli
from hpo.pipeline import Pipeline
from hpo.tuning import records

HEAD = """
[pipeline]
name = "ev"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [16, 16]
"""


def _run(tmp_path: Path, text: str) -> optuna.storages.BaseStorage:
    tmp_path.mkdir(exist_ok=True)
    cfg = tmp_path / "ev.toml"
    cfg.write_text(HEAD + text)
    Pipeline.load(
        cfg,
        storage=f"sqlite:///{tmp_path / 'hpo.db'}",
        artifacts=tmp_path / "artifacts",
        data_dir=Path(os.environ["HPO_DATA_DIR"]),
    ).run()
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hpo.db'}")


def _trials(storage: optuna.storages.BaseStorage, stage: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=f"ev.{stage}", storage=storage)
    return {records.point_key(t.params): t for t in study.get_trials()}


def _selection(storage: optuna.storages.BaseStorage, stage: str) -> records.Selection:
    study = optuna.load_study(study_name=f"ev.{stage}", storage=storage)
    selection = records.read_selection(study.user_attrs)
    assert selection is not None
    return selection


def test_grid_with_cv_is_grid_cv_under_the_general_kind(tmp_path: Path) -> None:
    """The same grid scored by ``kind = "grid"`` with ``cv = 2`` and by ``grid_cv`` with
    ``folds = 2``: the same folds, models and scores, trial by trial, and the same selection."""
    grid = "grid = { weight_decay = [1e-4, 1e-2], dropout = [0.0, 0.3] }\nepochs = 2\n"
    general = _run(tmp_path / "a", f'[stages.wd]\nkind = "grid"\ncv = 2\n{grid}')
    alias = _run(tmp_path / "b", f'[stages.wd]\nkind = "grid_cv"\nfolds = 2\nstack = 3\n{grid}')
    a, b = _trials(general, "wd"), _trials(alias, "wd")
    assert len(a) == 4 and set(a) == set(b)
    for key, trial in a.items():
        assert len(trial.user_attrs[records.FOLD_SCORES]) == 2
        assert trial.user_attrs[records.FOLD_SCORES] == pytest.approx(b[key].user_attrs[records.FOLD_SCORES])
    sa, sb = _selection(general, "wd"), _selection(alias, "wd")
    assert sa.selected == pytest.approx(sb.selected) and "2-fold" in sa.reason
    assert set(sa.selected) >= {"weight_decay", "dropout", "cv_mean_accuracy", "cv_std_accuracy"}


def test_grid_on_the_validation_rows_retunes_a_nuisance_setting(tmp_path: Path) -> None:
    """Hold-out (no ``cv``): each point's peak validation score; with ``retune`` a point is
    represented by its best nuisance value, which is carried forward with it."""
    storage = _run(
        tmp_path,
        '[stages.g]\nkind = "grid"\ngrid = { dropout = [0.0, 0.3] }\nretune = { lr = [1e-4, 3e-3] }\n'
        "epochs = 2\n",
    )
    trials = _trials(storage, "g")
    assert len(trials) == 4 and all(records.FOLD_SCORES not in t.user_attrs for t in trials.values())
    selection = _selection(storage, "g")
    chosen = selection.selected["dropout"]
    mine = [t for t in trials.values() if t.params["dropout"] == chosen]
    best = max(mine, key=lambda t: float(t.value or 0.0))
    assert selection.selected["lr"] == best.params["lr"] == selection.config_out.lr
    assert selection.selected["peak_val_accuracy"] == pytest.approx(best.value)
    assert "peak validation accuracy over 2 epochs at its best lr" in selection.reason


def test_sweep_and_search_take_cv(tmp_path: Path) -> None:
    storage = _run(
        tmp_path,
        '[stages.s]\nkind = "sweep"\nchoices = { activation = ["relu", "gelu"] }\ncv = 2\nepochs = 1\n'
        '[stages.q]\nkind = "search"\ncv = 2\npruner = "none"\nn_trials = 2\nbatch = 2\nepochs = 1\n'
        "space = { lr = { low = 1e-4, high = 1e-2, log = true } }\n",
    )
    for stage in ("s", "q"):
        trials = _trials(storage, stage)
        assert len(trials) == 2
        for t in trials.values():
            assert len(t.user_attrs[records.FOLD_SCORES]) == 2
            assert t.value == pytest.approx(sum(t.user_attrs[records.FOLD_SCORES]) / 2)
        assert "2-fold" in _selection(storage, stage).reason


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            'kind = "search"\ncv = 2\nspace = { lr = { low = 1e-4, high = 1e-2 } }\n',
            'stages.s: cv = 2 with pruner = "hyperband": a cross-validated trial is compared fold by fold',
        ),
        ('kind = "grid_cv"\ngrid = { lr = [1e-3] }\ncv = 3\n', "stages.s: cv = 3: grid_cv takes folds = k"),
        (
            'kind = "grid"\ngrid = { lr = [1e-3] }\ncv = 1\n',
            "stages.s.cv = 1: must be greater than or equal to 2",
        ),
        (
            'kind = "grid"\ngrid = { lr = [1e-3] }\nretune = { lr = [1e-2] }\n',
            "stages.s: retune names the studied setting 'lr'; retune the others",
        ),
    ],
)
def test_bad_evaluation_settings_are_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stage: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "ev.toml"
    cfg.write_text(HEAD + "[stages.s]\n" + stage)
    assert cli.main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "hpo.db").exists()
