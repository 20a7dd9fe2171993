"""Real tables (issue 29): column types read from the file, missing cells, dates, identifiers left
out, rows with an empty target dropped and counted; the preprocessing fit on training rows only
(per split and per fold), byte-identical to the scaler on a numeric complete table, and leaking
nothing from validation rows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpo import data
from hpo.data import preprocess as pp
from hpo.data.preprocess import MATRIX, NATIVE, ONEHOT, TARGET, Preprocessor
from hpo.sections import DataSettings
from hpo.stages._context import StageData


def mixed(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps, a string and a boolean categorical, an integer-coded one, a 60-level
    one, dates as ISO text, an identifier, a target with some empty cells."""
    r = np.random.default_rng(seed)
    x = r.normal(size=rows)
    colour = r.choice(["red", "green", "blue"], rows)
    score = x + (colour == "red") * 1.5 - (colour == "blue")
    frame = pd.DataFrame(
        {
            "x": np.where(r.random(rows) < 0.05, np.nan, x),
            "n": r.integers(0, 100, rows),
            "colour": pd.Series(colour).where(r.random(rows) >= 0.04, None),
            "flag": r.random(rows) < 0.3,
            "zip": r.choice([94103, 10001, 60601], rows),
            "city": [f"c{v}" for v in r.integers(0, 60, rows)],
            "when": pd.date_range("2021-01-01", periods=rows, freq="13h").strftime("%Y-%m-%dT%H:%M:%S"),
            "id": [f"row-{i:05d}" for i in range(rows)],
            "y": np.where(score > 0.7, "hi", np.where(score < -0.5, "lo", "mid")),
        }
    )
    frame.loc[[i for i in (5, 17, 99) if i < rows], "y"] = None
    return frame


def _prepare(tmp_path: Path, frame: pd.DataFrame | None = None, **settings: Any) -> data.Prepared:
    path = tmp_path / "t.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    base: dict[str, Any] = {"source": "csv", "path": str(path), "target": "y"}
    return data.prepare(DataSettings(**{**base, **settings}), data_dir=tmp_path / "cache", progressbar=False)


# --------------------------------------------------------------------------- reading and typing


def test_every_column_typed_and_missing_cells_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        p = _prepare(tmp_path, mixed(), categorical=["zip"])
    kinds = {c.name: c.kind for c in p.columns}
    assert kinds == {
        "x": "numeric",
        "n": "numeric",
        "colour": "categorical",
        "flag": "categorical",
        "zip": "categorical",
        "city": "categorical",
        "when": "datetime",
    }
    assert p.meta["left_out"][0]["name"] == "id" and "identifier" in p.meta["left_out"][0]["reason"]
    assert any("column 'id' left out" in r.getMessage() for r in caplog.records)
    assert p.dropped_target_rows == 3 and p.rows == 597
    assert data.summary(p)["dropped_target_rows"] == 3
    when = [n for n in p.feature_names if n.startswith("when.")]
    assert when == ["when.year", "when.month", "when.dayofweek", "when.dayofyear", "when.hour", "when.days"]
    assert p.codes is not None and p.codes.dtype == np.int32  # codes, not one-hot, in the cache
    assert p.codes.shape == (597, 4) and p.categorical_names == ["colour", "flag", "zip", "city"]
    assert p.vocab[1] == ["false", "true"] and p.vocab[2] == ["10001", "60601", "94103"]
    colour = p.codes[:, 0]
    assert (colour == -1).sum() == next(c.missing for c in p.columns if c.name == "colour") > 0
    assert np.isnan(p.features[:, p.feature_names.index("x")]).sum() > 0
    assert np.nanmin(p.features[:, p.feature_names.index("when.year")]) == 2021


def test_exclude_categorical_and_features_choose_columns(tmp_path: Path) -> None:
    p = _prepare(tmp_path, mixed(), exclude=["city", "when", "n"], categorical=["id"])
    assert [c.name for c in p.columns] == ["x", "colour", "flag", "zip", "id"]  # zip: numeric
    assert p.categorical_names == ["colour", "flag", "id"]  # listed: the identifier stays
    q = _prepare(tmp_path, features=["x", "colour"])
    assert [c.name for c in q.columns] == ["x", "colour"] and q.feature_names == ["x"]


def test_parquet_dictionary_and_timestamp_columns(tmp_path: Path) -> None:
    frame = mixed().drop(columns=["id"])
    frame["colour"] = frame["colour"].astype("category")
    frame["when"] = pd.to_datetime(frame["when"]).dt.tz_localize("Europe/Paris")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("colour").type)
    p = _prepare(tmp_path, source="parquet", path=str(path))
    kinds = {c.name: c.kind for c in p.columns}
    assert kinds["colour"] == "categorical" and kinds["when"] == "datetime"
    assert p.vocab[p.categorical_names.index("colour")] == ["blue", "green", "red"]
    hour = p.features[:, p.feature_names.index("when.hour")]
    assert set(np.unique(hour[~np.isnan(hour)])) <= set(range(24))  # UTC hours


def test_existing_numeric_tables_keep_their_cache_key_and_fingerprint() -> None:
    s = DataSettings(source="csv", path="t.csv", target="y")
    assert "exclude" not in s.model_dump(mode="json") and "categorical" not in s.model_dump(mode="json")
    from hpo.data.cache import cache_key

    assert cache_key(s, "0" * 64) == cache_key(DataSettings(source="csv", path="t.csv", target="y"), "0" * 64)
    assert cache_key(s, "0" * 64) != cache_key(
        DataSettings(source="csv", path="t.csv", target="y", exclude=["a"]), "0" * 64
    )


# --------------------------------------------------------------------------- preprocessing


def test_numeric_complete_table_is_byte_identical_to_the_scaler(tmp_path: Path) -> None:
    """The path every existing study file takes: the split's and each fold's features equal the
    scaler's transform exactly (the faithful study file's figures cannot move)."""
    r = np.random.default_rng(3)
    frame = pd.DataFrame(r.normal(size=(400, 6)) * [1, 10, 100, 1e3, 1e-3, 5], columns=list("abcdef"))
    frame["y"] = r.choice(["p", "q"], 400)
    p = _prepare(tmp_path, frame)
    sd = StageData(p)
    tv = sd.train_val()
    scaler = p.scaler
    s = p.split
    assert np.array_equal(tv.x_train.numpy(), scaler.transform(p.features[s.train]))
    assert np.array_equal(tv.x_val.numpy(), scaler.transform(p.features[s.val]))
    assert np.array_equal(sd.read_test_rows(reader="test")[0].numpy(), scaler.transform(p.features[s.test]))
    x = np.asarray(p.features[s.train], dtype=np.float32)
    strata = np.asarray(p.labels[s.train], dtype=np.int64)
    for fold, (fit_idx, held_idx) in zip(
        sd.cv_folds(3, 7), data.cv_folds(strata, n_splits=3, seed=7), strict=True
    ):
        old = data.Scaler.fit(x[fit_idx])
        assert np.array_equal(fold.x_train.numpy(), old.transform(x[fit_idx]))
        assert np.array_equal(fold.x_val.numpy(), old.transform(x[held_idx]))
    assert sd.preprocessor.plain and sd.n_features == 6


def _fit(x: np.ndarray, codes: np.ndarray, y: np.ndarray, **kw: Any) -> tuple[Preprocessor, np.ndarray]:
    n_cat = codes.shape[1]
    vocab = kw.pop("vocab", [[f"v{i}" for i in range(int(codes[:, j].max()) + 1)] for j in range(n_cat)])
    return Preprocessor.fit(
        x,
        codes,
        y,
        numeric_names=[f"x{j}" for j in range(x.shape[1])],
        categorical_names=[f"c{j}" for j in range(n_cat)],
        vocab=vocab,
        n_classes=int(y.max()) + 1,
        **kw,
    )


def test_validation_values_do_not_move_the_imputer_or_the_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held-out invariance: overwrite every held-out row (new levels, empty cells, huge values,
    shuffled targets); the fit on the training rows stays byte-identical."""
    monkeypatch.setattr(pp, "ONEHOT_CELLS", 0)  # the 40-level column target encoded
    r = np.random.default_rng(0)
    n = 900
    x = r.normal(size=(n, 3)).astype(np.float32)
    x[r.random((n, 3)) < 0.1] = np.nan
    codes = np.stack([r.integers(-1, 6, n), r.integers(0, 40, n)], axis=1).astype(np.int32)
    y = r.integers(0, 3, n)
    train, held = np.arange(600), np.arange(600, n)
    a, ma = _fit(
        x[train], codes[train], y[train], vocab=[[f"a{i}" for i in range(8)], [f"b{i}" for i in range(45)]]
    )
    x2, codes2, y2 = x.copy(), codes.copy(), y.copy()
    x2[held] = 1e6
    x2[held[::2]] = np.nan
    codes2[held] = 7  # a level only the held-out rows have
    y2[held] = r.permutation(y2[held])
    b, mb = _fit(
        x2[train], codes2[train], y2[train], vocab=[[f"a{i}" for i in range(8)], [f"b{i}" for i in range(45)]]
    )
    assert np.array_equal(a.median, b.median) and np.array_equal(a.scaler.mean, b.scaler.mean)
    assert np.array_equal(ma, mb)
    assert a.categorical[0].levels == [f"a{i}" for i in range(6)]  # a6, a7 unseen in training rows
    held_slots = a.slots_of_codes(codes2[held])
    assert (held_slots[:, 0] == 1).all()  # the held-out-only level is infrequent (unknown)
    assert [c.mode for c in a.categorical] == [ONEHOT, TARGET]


def test_each_fold_knows_only_its_own_training_levels(tmp_path: Path) -> None:
    frame = mixed(rows=900)
    frame.loc[:, "colour"] = frame["colour"].where(frame.index % 50 != 0, "violet")  # 18 rows
    p = _prepare(tmp_path, frame)
    sd = StageData(p)
    sd.train_val()
    j = p.categorical_names.index("colour")
    violet = p.vocab[j].index("violet")
    rows = np.asarray(p.split.train)
    assert "violet" in sd.preprocessor.categorical[j].levels
    strata = np.asarray(p.labels[rows], dtype=np.int64)
    folds = sd.cv_folds(3, 1)
    assert len({f.x_train.shape[1] for f in folds}) == 1 == len({f.x_val.shape[1] for f in folds})
    for fit_idx, held_idx in data.cv_folds(strata, n_splits=3, seed=1):
        codes = np.asarray(p.codes)[rows]
        only = codes[:, j].copy()
        only[fit_idx[codes[fit_idx, j] == violet]] = -1  # the fold's training rows lose it
        prep, _ = Preprocessor.fit(
            np.asarray(p.features[rows[fit_idx]]),
            np.where(np.arange(codes.shape[1]) == j, only[:, None], codes)[fit_idx],
            strata[fit_idx],
            numeric_names=p.feature_names,
            categorical_names=p.categorical_names,
            vocab=p.vocab,
            n_classes=p.n_classes,
            layout=sd.preprocessor,
        )
        slot = prep.slots_of_codes(codes[held_idx])[:, j]
        assert (slot[codes[held_idx, j] == violet] == 1).all()  # unknown to this fold: infrequent
    assert all(len(r) < len(rows) for r in sd.fit_rows[1:])  # folds fit on their part only
    assert not set(sd.fit_rows[0].tolist()) & set(np.asarray(p.split.val).tolist())


def test_target_encoding_is_cross_fitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A near-unique column target encoded: the training rows' values are cross-fitted (they do
    not see their own target), so they carry ~no signal; a plain fit-then-transform would."""
    r = np.random.default_rng(1)
    n = 4000
    monkeypatch.setattr(pp, "ONEHOT_CELLS", 0)
    codes = r.integers(0, 800, n).astype(np.int32)[:, None]
    y = r.integers(0, 2, n)
    prep, m = _fit(np.empty((n, 0), np.float32), codes, y)
    assert prep.categorical[0].mode == TARGET and m.shape == (n, 1)
    cross = abs(np.corrcoef(m[:, 0], y)[0, 1])
    naive = prep.transform(np.empty((n, 0), np.float32), prep.slots_of_codes(codes))
    leaky = abs(np.corrcoef(naive[:, 0], y)[0, 1])
    assert cross < 0.05 < leaky, (cross, leaky)


def test_native_encoding_codes_levels_and_keeps_nan() -> None:
    r = np.random.default_rng(2)
    n = 4000
    x = r.normal(size=(n, 1)).astype(np.float32)
    x[::9] = np.nan
    codes = np.stack([r.integers(-1, 3, n), r.integers(0, 400, n)], axis=1).astype(np.int32)
    y = r.integers(0, 2, n)
    prep, m = _fit(x, codes, y, encoding=NATIVE)
    assert prep.categorical_columns() == (1, 2) and m.shape == (n, 3)
    assert np.isnan(m[::9, 0]).all()  # numeric NaN kept for the estimator
    assert np.isnan(m[codes[:, 0] == -1, 1]).all()  # an empty cell: NaN
    assert np.nanmax(m[:, 2]) == 254  # 254 levels kept + infrequent: HistGradientBoosting's 255
    from sklearn.ensemble import HistGradientBoostingClassifier

    est = HistGradientBoostingClassifier(max_iter=3, categorical_features=list(prep.categorical_columns()))
    est.fit(m, y)  # a 400-level column fits under its limit; raw codes would not
    with pytest.raises(ValueError, match="cardinality"):
        HistGradientBoostingClassifier(max_iter=3, categorical_features=[2]).fit(
            np.column_stack([m[:, :2], codes[:, 1]]), y
        )


def test_preprocessor_state_round_trips_through_a_model_file_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(pp, "ONEHOT_CELLS", 0)  # city (44 levels) target encoded: its table saved

    p = _prepare(tmp_path, mixed(), categorical=["zip"])
    sd = StageData(p)
    prep = sd.preprocessor
    path = tmp_path / "state.pt"
    torch.save(prep.to_state(), path)
    back = Preprocessor.from_state(torch.load(path, weights_only=True))
    rows = np.asarray(p.split.val)
    codes = np.asarray(p.codes)[rows]
    strings = [
        pa.array([p.vocab[j][c] if c >= 0 else None for c in codes[:, j]]) for j in range(codes.shape[1])
    ]
    slots = np.stack([c.slots_of_strings(s) for c, s in zip(back.categorical, strings, strict=True)], axis=1)
    assert np.array_equal(slots, prep.slots_of_codes(codes))
    assert np.array_equal(back.transform(p.features[rows], slots), sd.train_val().x_val.numpy())
    assert back.width == sd.n_features and sd.encoding == MATRIX
    assert [c.mode for c in back.categorical] == [ONEHOT, ONEHOT, ONEHOT, TARGET]


# --------------------------------------------------------------------------- shown before a run


def test_validate_lists_every_column_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpo import cli

    mixed().to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "data"))
    study = tmp_path / "t.toml"
    study.write_text(
        '[pipeline]\nname = "t"\n[data]\nsource = "csv"\npath = "t.csv"\ntarget = "y"\n'
        'categorical = ["zip"]\n[stages.final]\nkind = "final"\nepochs = 1\n'
    )
    assert cli.main(["-q", "validate", "--config", str(study)]) == 0
    out = capsys.readouterr().out
    assert "data: 597 rows (3 with an empty target left out)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "numeric" in lines["x"] and "median + an indicator column" in lines["x"]
    assert "one-hot: 3 level(s) + infrequent + empty" in lines["colour"]
    assert "one-hot: 3 level(s)" in lines["zip"] and "one-hot: 44 level(s)" in lines["city"]
    assert "parts year, month, dayofweek, dayofyear, hour, days" in lines["when"]
    assert "left out" in lines["id"] and "identifier" in lines["id"]
    assert not (tmp_path / "data").exists()  # validate writes nothing
    monkeypatch.setattr(pp, "ONEHOT_CELLS", 0)  # where its block would be too large: target encoded
    assert cli.main(["-q", "validate", "--config", str(study)]) == 0
    assert "target encoded (cross-fitted, 3 column(s)): 44 level(s)" in capsys.readouterr().out
    assert cli.main(["-q", "validate", "--config", str(study), "--set", "data.exclude=['nope']"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith(
            "data.exclude names 'nope', which is not a column; columns are: x, n, colour, "
            "flag, zip, city, when, id, y; fix data.exclude"
        )
        and "\n" not in err
    )


def test_target_encoding_keeps_groups_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``group``, the target encoding's inner folds keep each group whole: a level that is
    its group (every row of a group shares its target) cannot learn its target from its own
    group's other rows, as it would with plain inner folds."""
    monkeypatch.setattr(pp, "ONEHOT_CELLS", 0)
    r = np.random.default_rng(4)
    groups = np.repeat(np.arange(300), 8)
    y = np.repeat(r.integers(0, 2, 300), 8)
    codes = groups.astype(np.int32)[:, None]  # the level is the group
    x = np.empty((len(y), 0), np.float32)
    _, grouped = _fit(x, codes, y, groups=groups, strata=y)
    _, plain = _fit(x, codes, y)
    assert abs(np.corrcoef(grouped[:, 0], y)[0, 1]) < 0.1 < 0.9 < abs(np.corrcoef(plain[:, 0], y)[0, 1])


def test_a_row_problem_names_the_files_line_after_rows_were_dropped(tmp_path: Path) -> None:
    """Rows with an empty target are left out; a later problem still names the file's line."""
    from hpo.errors import DataFileError

    frame = pd.DataFrame({"x": np.arange(40.0), "y": np.arange(40.0) % 20})
    frame.loc[[2, 5], "y"] = np.nan
    frame.loc[30, "y"] = 500.0  # outside the bins: an error at its line
    with pytest.raises(DataFileError) as err:
        _prepare(tmp_path, frame, bins=[0, 50])
    assert ":32: " in str(err.value) and "outside the bins" in str(err.value), str(err.value)


def test_raw_rows_are_read_as_the_training_file_typed_them(tmp_path: Path) -> None:
    """``hpo predict``'s reader of a format-5 model: columns in any order, extra ones named,
    empty cells and unseen levels allowed; a cell that is not its training column's type is one
    line naming the column and the line."""
    from hpo import predict
    from hpo.errors import DataFileError
    from hpo.model_file import ModelFile

    p = _prepare(tmp_path, mixed(), categorical=["zip"])
    sd = StageData(p)
    model = ModelFile(
        family="mlp",
        payloads=[],
        run_config={},
        task={"kind": "classification", "class_names": p.class_names},
        scaler_mean=sd.preprocessor.scaler.mean,
        scaler_scale=sd.preprocessor.scaler.scale,
        feature_names=[c.name for c in p.columns],
        class_names=p.class_names,
        labeling=None,
        target="y",
        hpo_version="test",
        preprocessor=sd.preprocessor.to_state(),
        columns=[c.to_dict() for c in p.columns],
    )
    rows = mixed(rows=30, seed=9)
    rows = rows[list(reversed(rows.columns))]
    rows.loc[0, "colour"] = "mauve"  # unseen
    rows.loc[1, ["x", "colour", "when"]] = None
    rows.to_csv(tmp_path / "raw.csv", index=False)
    raw = predict._read_raw(tmp_path / "raw.csv", model)
    assert raw.extra == ["id"] and raw.numeric.shape == (30, len(p.feature_names))
    assert raw.slots[0, 0] == 1 and raw.slots[1, 0] == 0  # infrequent; empty (its own level)
    assert np.isnan(raw.numeric[1]).sum() == 1 + 6  # x, and the six parts of when
    direct = sd.preprocessor.transform(raw.numeric, raw.slots)
    assert np.isfinite(direct).all() and direct.shape == (30, sd.n_features)
    bad = rows.astype(object)
    bad.loc[4, "flag"] = "maybe"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(
        DataFileError, match=r"bad\.csv:6: column 'flag' is 'maybe', not a bool as in the training"
    ):
        predict._read_raw(tmp_path / "bad.csv", model)
    bad = rows.astype(object)
    bad.loc[7, "n"] = "many"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataFileError, match=r"bad\.csv:9: column 'n' is 'many', not a number"):
        predict._read_raw(tmp_path / "bad.csv", model)


@pytest.mark.parametrize("encoding", [MATRIX, NATIVE])
def test_the_synthetic_stand_in_goes_through_the_scaler_exactly(tmp_path: Path, encoding: str) -> None:
    """The MSD-shaped stand-in every faithful study file uses: its rows, folds and test rows are
    exactly the scaler's, whichever encoding the family takes, and its model stays format 4."""
    p = data.prepare(
        DataSettings(source="synthetic", rows=3000), data_dir=tmp_path / "cache", progressbar=False
    )
    assert p.codes is None and "columns" not in p.meta  # cached exactly as before
    sd = StageData(p, encoding)
    s, scaler = p.split, p.scaler
    tv = sd.train_val()
    assert np.array_equal(tv.x_train.numpy(), scaler.transform(p.features[s.train]))
    assert np.array_equal(tv.x_val.numpy(), scaler.transform(p.features[s.val]))
    assert np.array_equal(sd.read_test_rows(reader="t")[0].numpy(), scaler.transform(p.features[s.test]))
    x = np.asarray(p.features[s.train], dtype=np.float32)
    strata = np.asarray(p.labels[s.train], dtype=np.int64)
    for fold, (fit_idx, held_idx) in zip(
        sd.cv_folds(2, 42), data.cv_folds(strata, n_splits=2, seed=42), strict=True
    ):
        old = data.Scaler.fit(x[fit_idx])
        assert np.array_equal(fold.x_train.numpy(), old.transform(x[fit_idx]))
        assert np.array_equal(fold.x_val.numpy(), old.transform(x[held_idx]))
        assert fold.categorical == ()
    assert sd.n_features == 90 and all(c.kind == "numeric" and c.missing == 0 for c in sd.input_columns)


@pytest.mark.parametrize(
    "estimator", ["sklearn.ensemble.HistGradientBoostingClassifier", "lightgbm.LGBMClassifier"]
)
def test_native_estimators_get_their_categorical_columns(tmp_path: Path, estimator: str) -> None:
    """HistGradientBoosting gets ``categorical_features``, LightGBM ``categorical_feature`` at
    fit: each sees the coded columns as categories (and NaN as missing)."""
    import warnings

    from hpo.families import Fitting
    from hpo.families._protocol import Job
    from hpo.families.sklearn_api import SklearnFamily, data_encoding
    from hpo.settings import RunConfig

    cfg = RunConfig.model_validate({"family": "sklearn", "estimator": estimator, "params": {}})
    assert data_encoding(cfg) == NATIVE
    p = _prepare(tmp_path, mixed(), categorical=["zip"])
    sd = StageData(p, NATIVE)
    tv = sd.train_val()
    assert tv.categorical == sd.preprocessor.categorical_columns() and len(tv.categorical) == 4
    job = Job(cfg, cfg.train(epochs=1, device="cpu", seed=0, precision="fp32"), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (result,) = SklearnFamily().fit_many(Fitting([job], [tv], sd.task, [[]], stack=False))
    model = result.model
    if estimator.startswith("lightgbm"):
        infos = model.booster_.dump_model()["feature_infos"]
        assert all(infos[f"Column_{j}"]["values"] for j in tv.categorical)  # categorical splits' sets
    else:
        assert list(model.categorical_features) == list(tv.categorical)
        assert model.is_categorical_ is not None and model.is_categorical_[list(tv.categorical)].all()


def test_a_lower_max_bins_keeps_fewer_native_levels(tmp_path: Path) -> None:
    """HistGradientBoosting takes at most max_bins categories: where the study file tunes it
    below 255, the native encoding keeps fewer levels, so every trial's fit takes the codes."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from hpo import plan
    from hpo.families.sklearn_api import native_levels

    study = tmp_path / "t.toml"
    study.write_text(
        '[pipeline]\nname = "t"\n[data]\nsource = "csv"\npath = "t.csv"\ntarget = "y"\n[defaults]\n'
        'family = "sklearn"\nestimator = "sklearn.ensemble.HistGradientBoostingClassifier"\n'
        '[stages.bins]\nkind = "grid_cv"\ngrid = { max_bins = [31, 255] }\nfolds = 2\n'
        '[stages.final]\nkind = "final"\n'
    )
    p = plan.load(study)
    assert native_levels([p.defaults], p.stages) == 30
    r = np.random.default_rng(5)
    n = 3000
    codes = r.integers(0, 100, n).astype(np.int32)[:, None]
    y = r.integers(0, 2, n)
    prep, m = _fit(np.empty((n, 0), np.float32), codes, y, encoding=NATIVE, native_levels=30)
    assert len(prep.categorical[0].levels) == 30 and np.nanmax(m) == 30
    HistGradientBoostingClassifier(max_iter=2, max_bins=31, categorical_features=[0]).fit(m, y)
