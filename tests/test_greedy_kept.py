"""A greedy final that keeps its members as trained (``retrain = false``): the library stages store
each trial's trained models beside those models' own validation outputs, the final selects on
them, restores the chosen models (``weights_only``, by the family of their stage's track), trains
nothing, tests them once per model and saves them as one model file; what cannot be kept is one
line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import predict_test_rows, refused_in_one_line, storage_args

from hpo import cli
from hpo.errors import ConfigError
from hpo.families import family_of, rebuilt
from hpo.pipeline import Pipeline
from hpo.stages._scoring import read_models, read_outputs
from hpo.tuning import records

HGB = "sklearn.ensemble.HistGradientBoostingClassifier"
KEPT = (
    'ensemble = "greedy"\nmembers_from = ["search", "hgb"]\ncandidates = 3\nmax_members = 6\nretrain = false'
)


def _study(tmp_path: Path, final: str = KEPT, *, name: str = "kept", search: str = "") -> Path:
    from sklearn.datasets import load_digits

    table = tmp_path / "table.csv"
    if not table.exists():
        load_digits(as_frame=True).frame.to_csv(table, index=False)
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f'[pipeline]\nname = "kept"\n\n[data]\nsource = "csv"\npath = "{table}"\ntarget = "target"\n'
        "seed = 42\n\n[defaults]\nhidden = [32]\nbatch_size = 64\n\n"
        '[stages.search]\nkind = "search"\nsampler = "random"\npruner = "none"\nn_trials = 3\nbatch = 3\n'
        f"epochs = 3\n{search}\n[stages.search.space]\nlr = {{ low = 1e-3, high = 1e-2, log = true }}\n"
        "dropout = { low = 0.0, high = 0.3 }\n\n"
        f'[stages.hgb]\nkind = "search"\nfamily = "sklearn"\nestimator = "{HGB}"\n'
        "params = { max_iter = 10, early_stopping = false }\n"
        'sampler = "random"\npruner = "none"\nn_trials = 2\nbatch = 2\n'
        "space = { max_leaf_nodes = { low = 7, high = 31, log = true } }\n\n"
        f'[stages.final]\nkind = "final"\n{final}\n'
    )
    return cfg


def _load(cfg: Path, tmp_path: Path) -> Pipeline:
    return Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")


def test_a_kept_ensemble_is_the_library_trials_own_models_tested_once(tmp_path: Path) -> None:
    cfg = _study(tmp_path)
    pipe = _load(cfg, tmp_path)
    assert pipe.plan.kept() == {"search", "hgb"}
    pipe.run()
    data = pipe.ctx.data()
    tv = data.train_val()
    task = data.task
    # every library trial stored its models, and outputs that are exactly those models' own
    for stage in ("search", "hgb"):
        study = pipe.ctx.find_study(pipe.ctx.study_name(stage))
        assert study is not None
        for t in study.get_trials():
            # rebuilt on the stage's track, as the final restores it
            cfg_t = rebuilt(pipe.ctx.bases[stage], records.read_config(t.user_attrs), where="", fix="")
            payloads = read_models(pipe.ctx.artifacts, t.user_attrs[records.TRIAL_MODELS])
            stored = read_outputs(pipe.ctx.artifacts, t.user_attrs[records.VAL_OUTPUTS])
            family = family_of(cfg_t)
            model = family.restore(
                payloads[0],
                cfg_t,
                n_features=int(tv.x_train.shape[1]),
                n_outputs=task.n_outputs,
                trusted=[HGB],
            )
            mine = family.outputs(model, tv.x_val, task.n_outputs).float().numpy()
            np.testing.assert_allclose(mine, stored, rtol=0, atol=1e-6)
    (trial,) = pipe.final_study().get_trials()
    assert records.TRAIN not in trial.user_attrs  # the final trained nothing
    ens = trial.user_attrs[records.MEMBERS]
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == "greedy"
    assert len(data.test_reads) == m["members"]  # the test rows read once per model
    # each member of the model file is its library trial's stored model, as often as chosen
    model_file = pipe.final_model()
    want = []
    for x in ens["members"]:
        study = pipe.ctx.find_study(pipe.ctx.study_name(x["stage"]))
        assert study is not None
        t = study.trials[x["trial"]]
        want += read_models(pipe.ctx.artifacts, t.user_attrs[records.TRIAL_MODELS]) * x["weight"]
    assert len(model_file.payloads) == len(want)
    for got, stored_payload in zip(model_file.payloads, want, strict=True):
        if "state_dict" in stored_payload:
            for key, value in stored_payload["state_dict"].items():
                assert torch.equal(got["state_dict"][key], value)
        else:
            assert got == stored_payload
    # hpo predict on exactly the test rows gives the stored test accuracy
    split = pipe.dataset().split.test
    _, _, accuracy = predict_test_rows(
        cfg, tmp_path / "table.csv", split, tmp_path, args=storage_args(tmp_path)
    )
    assert accuracy == pytest.approx(m["accuracy"], abs=1e-12)
    selection = pipe.status().stages[-1].selection
    assert selection is not None and "restored (not retrained)" in selection["reason"]


def test_a_kept_member_of_several_seeds_is_their_mean(tmp_path: Path) -> None:
    cfg = _study(tmp_path, KEPT.replace('["search", "hgb"]', '["search"]'), search="seeds = 2\n")
    pipe = _load(cfg, tmp_path)
    pipe.run()
    study = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert study is not None
    for t in study.get_trials():
        assert len(read_models(pipe.ctx.artifacts, t.user_attrs[records.TRIAL_MODELS])) == 2
    (trial,) = pipe.final_study().get_trials()
    chosen = sum(x["weight"] for x in trial.user_attrs[records.MEMBERS]["members"])
    assert len(pipe.final_model().payloads) == 2 * chosen


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (KEPT + "\nepochs = 4", "epochs set with retrain = false"),
        (KEPT + "\nseeds = 2\npatience = 3", "patience, seeds set with retrain = false"),
        ("retrain = false", "retrain belongs to a greedy ensemble"),
    ],
)
def test_a_kept_final_that_trains_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], final: str, message: str
) -> None:
    line = refused_in_one_line(
        ["-q", "run", "--config", str(_study(tmp_path, final)), *storage_args(tmp_path)], capsys
    )
    assert message in line
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "artifacts").exists()


def test_a_library_stage_that_kept_no_models_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retrained = _study(tmp_path, KEPT.replace("\nretrain = false", ""), name="retrained")
    for stage in ("search", "hgb"):
        assert cli.main(["-q", "run-stage", stage, "--config", str(retrained), *storage_args(tmp_path)]) == 0
    capsys.readouterr()
    line = refused_in_one_line(
        ["-q", "run", "--config", str(_study(tmp_path)), *storage_args(tmp_path)], capsys
    )
    assert "stored no trained models" in line and "hpo run-stage search --force" in line
    pipe = _load(_study(tmp_path), tmp_path)
    assert pipe.ctx.find_study(pipe.ctx.study_name("final")) is None  # nothing written for the final


def test_kept_models_that_are_not_payloads_are_one_line_naming_the_trial(tmp_path: Path) -> None:
    cfg = _study(tmp_path, KEPT.replace('["search", "hgb"]', '["search"]').replace("6", "1"))
    pipe = _load(cfg, tmp_path)
    pipe.run_stage("search")
    study = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert study is not None
    for t in study.get_trials():  # pickled bytes in place of every trial's models
        path = tmp_path / "artifacts" / str(t.user_attrs[records.TRIAL_MODELS])
        path.write_bytes(b"\x80\x04\x95not a model file")
    with pytest.raises(ConfigError, match=r"trial \d of stage 'search' .* cannot be restored .* --force"):
        pipe.run_stage("final")
