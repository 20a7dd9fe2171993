"""Stages of another family in one pipeline (tracks): a stage naming its own ``family`` starts
from that family's defaults, hands its selection on only to later stages of the same family, and
a greedy final draws its library across tracks; the ensemble of an MLP and gradient boosting is one
model file that ``hpo predict`` and one ONNX graph compute alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import onnx_agrees_with_predict, predict_test_rows, storage_args

from hpo import cli, plan
from hpo.errors import ConfigError, HpoError
from hpo.pipeline import Pipeline
from hpo.tuning import records

HGB = "sklearn.ensemble.HistGradientBoostingClassifier"


def _study(tmp_path: Path, *, final: str | None = None, extra: str = "") -> Path:
    from sklearn.datasets import load_digits

    table = tmp_path / "table.csv"
    if not table.exists():
        load_digits(as_frame=True).frame.to_csv(table, index=False)
    final = final or 'ensemble = "greedy"\nmembers_from = ["search", "hgb"]\ncandidates = 3\nmax_members = 6'
    cfg = tmp_path / "tracks.toml"
    cfg.write_text(
        f'[pipeline]\nname = "tracks"\n\n[data]\nsource = "csv"\npath = "{table}"\ntarget = "target"\n'
        "seed = 42\n\n[defaults]\nhidden = [32]\nbatch_size = 64\nseed = 7\n\n"
        '[stages.search]\nkind = "search"\nsampler = "random"\npruner = "none"\nn_trials = 3\nbatch = 3\n'
        "epochs = 4\n\n[stages.search.space]\nlr = { low = 1e-3, high = 1e-2, log = true }\n\n"
        f'[stages.hgb_rate]\nkind = "grid"\nfamily = "sklearn"\nestimator = "{HGB}"\n'
        "params = { max_iter = 15, early_stopping = false }\n"
        "grid = { learning_rate = [0.05, 0.2] }\n\n"
        f'[stages.hgb]\nkind = "search"\nfamily = "sklearn"\nestimator = "{HGB}"\n'
        "params = { max_iter = 15, early_stopping = false }\n"
        'sampler = "random"\npruner = "none"\nn_trials = 3\nbatch = 3\n'
        "space = { max_leaf_nodes = { low = 7, high = 31, log = true } }\n\n"
        f'{extra}[stages.final]\nkind = "final"\nepochs = 4\n{final}\n'
    )
    return cfg


def test_a_stage_of_another_family_starts_its_own_track(tmp_path: Path) -> None:
    p = plan.load(_study(tmp_path))
    assert list(p.tracks().values()) == [["search", "final"], ["hgb_rate", "hgb"]]
    # each stage follows the previous one of its own track; a track starts from its family's
    # defaults, with [defaults]' seed
    assert p.requires["hgb_rate"] == () and p.requires["hgb"] == ("hgb_rate",)
    # the final follows its own track's search, and waits for every stage of its library
    assert p.requires["final"] == ("search", "hgb") and p.input_stage("final") == "search"
    base = p.base("hgb")
    assert base.family == "sklearn" and base.estimator == HGB and base.seed == 7
    assert base.params == {"max_iter": 15, "early_stopping": False} and p.base("search") is p.defaults
    # what a track's first stage depends on is its own base, not [defaults]
    material = p.fingerprint_material(p.stage("hgb_rate"))
    assert material["defaults"]["estimator"] == HGB and material["stage"]["family"] == "sklearn"
    assert "family" not in p.fingerprint_material(p.stage("search"))["stage"]
    # a required stage of another track is waited for, not started from
    q = plan.load(_study(tmp_path), overrides=['stages.final.requires=["search", "hgb"]'])
    assert q.input_stage("final") == "search"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('stages.hgb.family="torch"', 'stages.hgb: module is required for family = "torch"'),
        ("stages.hgb.family=", "stages.hgb: estimator, params belong to a stage's own family"),
        ('stages.hgb.estimator="sklearn.nope.Thing"', "stages.hgb.estimator = 'sklearn.nope.Thing'"),
        ("stages.hgb.params.nope=3", "unexpected keyword argument 'nope'"),
        (
            "stages.hgb.space.hidden={ choices = [[8]] }",
            "stages.hgb.space.hidden: is not a setting of family",
        ),
    ],
)
def test_a_bad_track_is_one_line_naming_its_stage(tmp_path: Path, override: str, message: str) -> None:
    cfg = _study(tmp_path)
    if override.endswith("family="):  # the family key taken out of the table
        cfg.write_text(
            cfg.read_text().replace(
                '[stages.hgb]\nkind = "search"\nfamily = "sklearn"\n', '[stages.hgb]\nkind = "search"\n'
            )
        )
        overrides: list[str] = []
    else:
        overrides = [override]
    with pytest.raises(ConfigError) as err:
        plan.load(cfg, overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (
        cli.main(
            ["-q", "run", "--config", str(cfg), *[f"--set={o}" for o in overrides], *storage_args(tmp_path)]
        )
        == 2
    )
    assert not (tmp_path / "hpo.db").exists()


def test_a_greedy_ensemble_across_tracks_predicts_and_exports_as_one_model(tmp_path: Path) -> None:

    cfg = _study(tmp_path)
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    pipe.run()
    # the hgb search started from hgb_rate's selection, not from [defaults]
    rate = pipe.ctx.find_study(pipe.ctx.study_name("hgb_rate"))
    assert rate is not None
    chosen = records.read_selection(rate.user_attrs)
    assert chosen is not None
    hgb = pipe.ctx.find_study(pipe.ctx.study_name("hgb"))
    assert hgb is not None
    for t in hgb.get_trials():
        stored = records.read_config(t.user_attrs)
        assert (
            stored.estimator == HGB
            and stored.params["learning_rate"] == chosen.config_out.params["learning_rate"]
        )
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == "greedy"
    (trial,) = pipe.final_study().get_trials()
    members = trial.user_attrs[records.MEMBERS]["members"]
    families = {x["family"].split()[1] for x in members}
    assert families == {'"mlp"', '"sklearn"'}, members  # the selection took both families
    model = pipe.final_model()
    assert {c.family for c in model.configs()} == {"mlp", "sklearn"}
    # hpo predict on exactly the test rows gives the stored test accuracy
    split = pipe.dataset().split.test
    _, _, accuracy = predict_test_rows(
        cfg, tmp_path / "table.csv", split, tmp_path, args=storage_args(tmp_path)
    )
    assert accuracy == pytest.approx(m["accuracy"], abs=1e-12)
    # status names each stage's track; the report lists each member's family
    status = pipe.status()
    assert [s.track for s in status.stages][1:3] == [f'family "sklearn" ({HGB})'] * 2
    from hpo.cli._render import _render_status

    text = _render_status(status.to_dict())
    assert f'[family "sklearn" ({HGB})]' in text
    from hpo.present import report

    tables = [b for b in report.result_section(pipe).blocks if b.get("kind") == "table"]
    assert any("family" in (t["head"] or []) for t in tables), tables
    # one ONNX graph: the MLP members and the trees, weighted, as predict computes them
    onnx_agrees_with_predict(cfg, tmp_path, tmp_path / "table.csv")
    # a model file naming an estimator no track of the study file names is refused
    with pytest.raises(HpoError, match="which the study file does not"):
        model.models(trusted=[e for e in pipe.trusted() if e != HGB])


def test_tracks_are_keyed_as_completed_labelled_apart_and_defaults_only_where_used(tmp_path: Path) -> None:
    from hpo.families.sklearn_api import data_encoding

    # a stage repeating [defaults]' own torch module is on [defaults]' track (the factory's
    # default arguments written out on both sides)
    module = Path(__file__).resolve().parents[1] / "examples" / "residual_mlp.py"
    cfg = tmp_path / "torch.toml"
    cfg.write_text(
        '[pipeline]\nname = "t"\n\n[data]\nsource = "synthetic"\nrows = 2000\n\n'
        f'[defaults]\nfamily = "torch"\nmodule = "{module}:make"\nlr = 3e-3\n\n'
        '[stages.a]\nkind = "sweep"\nchoices = { weight_decay = [0.0, 1e-4] }\n\n'
        f'[stages.b]\nkind = "sweep"\nfamily = "torch"\nmodule = "{module}:make"\n'
        "choices = { lr = [1e-3, 3e-3] }\n\n"
        '[stages.final]\nkind = "final"\n'
    )
    p = plan.load(cfg)
    assert p.base("b") is p.defaults and p.requires["b"] == ("a",) and len(p.track_bases()) == 1
    # two gradient-boosting tracks and no stage on [defaults]: the MLP of [defaults] is no track
    # (the pipeline keeps the native encoding); tracks apart only by params are labelled apart
    both = _study(tmp_path).read_text()
    both = both.replace(
        '[stages.search]\nkind = "search"\n',
        f'[stages.search]\nkind = "search"\nfamily = "sklearn"\nestimator = "{HGB}"\n',
    )
    both = both.replace(
        "lr = { low = 1e-3, high = 1e-2, log = true }", "learning_rate = { low = 0.05, high = 0.3 }"
    )
    both = both.replace(
        '[stages.final]\nkind = "final"\n',
        f'[stages.final]\nkind = "final"\nfamily = "sklearn"\nestimator = "{HGB}"\n',
    )
    (tmp_path / "hgb2.toml").write_text(both)
    q = plan.load(tmp_path / "hgb2.toml")
    assert all(b.family == "sklearn" for b in q.track_bases()) and len(q.track_bases()) == 2
    assert data_encoding(*q.track_bases()) == "native"
    labels = {q.track_of(n) for n in ("search", "hgb")}
    assert len(labels) == 2 and any("max_iter" in label for label in labels)
    # a greedy final waits for its library's stages, whatever their track
    assert set(q.requires["final"]) == {"search", "hgb"}


@pytest.mark.slow
def test_trees_beside_another_estimator_export_one_graph(tmp_path: Path) -> None:
    """A greedy ensemble of HistGradientBoosting and LogisticRegression members: the trees written
    by hpo, the other estimator by skl2onnx, their means weighted by the member counts."""
    from conftest import require_module

    require_module("onnxruntime", "HPO_REQUIRE_ONNX")
    require_module("onnxscript", "HPO_REQUIRE_ONNX")
    require_module("skl2onnx", "HPO_REQUIRE_ONNX")
    logistic = "sklearn.linear_model.LogisticRegression"
    text = _study(tmp_path).read_text()
    text = text.replace(
        '[stages.search]\nkind = "search"\n',
        f'[stages.search]\nkind = "search"\nfamily = "sklearn"\nestimator = "{logistic}"\n'
        "params = { max_iter = 300 }\n",
    )
    text = text.replace(
        "lr = { low = 1e-3, high = 1e-2, log = true }", "C = { low = 0.01, high = 1.0, log = true }"
    )
    text = text.replace(
        '[stages.final]\nkind = "final"\n',
        f'[stages.final]\nkind = "final"\nfamily = "sklearn"\nestimator = "{logistic}"\n'
        "params = { max_iter = 300 }\n",
    )
    cfg = tmp_path / "estimators.toml"
    cfg.write_text(text)
    assert cli.main(["-q", "run", "--config", str(cfg), *storage_args(tmp_path)]) == 0
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    model = pipe.final_model()
    assert {c.estimator for c in model.configs()} == {logistic, HGB}
    onnx_agrees_with_predict(cfg, tmp_path, tmp_path / "table.csv")
