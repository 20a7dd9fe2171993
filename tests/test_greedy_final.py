"""A greedy final (``[stages.final] ensemble = "greedy"``): the library stages store each trial's
validation outputs, the final selects on them, retrains the chosen configurations, tests the
ensemble once per member and saves it as one model file that ``hpo predict`` and
``export-model`` read; a study file that cannot make one is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import onnx_agrees_with_predict, predict_test_rows, refused_in_one_line, storage_args

from hpo import cli
from hpo.errors import DataFileError
from hpo.model_file import load_model_file, read_model_artifact
from hpo.pipeline import Pipeline
from hpo.stages import FinalSettings
from hpo.stages._scoring import read_outputs
from hpo.tuning import records

GREEDY = 'ensemble = "greedy"\nmembers_from = ["search"]\ncandidates = 4\nmax_members = 6'


def _study(tmp_path: Path, final: str = GREEDY, *, name: str = "greedy") -> Path:
    from sklearn.datasets import load_digits

    table = tmp_path / "table.csv"
    if not table.exists():
        load_digits(as_frame=True).frame.to_csv(table, index=False)
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f'[pipeline]\nname = "greedy"\n\n[data]\nsource = "csv"\npath = "{table}"\ntarget = "target"\n'
        "seed = 42\n\n[defaults]\nhidden = [32]\nbatch_size = 64\n\n"
        '[stages.search]\nkind = "search"\nsampler = "random"\npruner = "none"\nn_trials = 4\nbatch = 4\n'
        "epochs = 3\n\n[stages.search.space]\nlr = { low = 1e-3, high = 1e-2, log = true }\n"
        "hidden = { choices = [[32], [64]] }\n\n"
        f'[stages.final]\nkind = "final"\nepochs = 3\n{final}\n'
    )
    return cfg


def test_a_greedy_final_selects_retrains_tests_and_saves_the_weighted_members(tmp_path: Path) -> None:
    cfg = _study(tmp_path)
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    pipe.run()
    search = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert search is not None
    n_val = pipe.ctx.data().train_val().y_val.shape[0]
    for t in search.get_trials():  # every trial of the library stage stored its outputs
        outputs = read_outputs(pipe.ctx.artifacts, t.user_attrs[records.VAL_OUTPUTS])
        assert outputs.shape == (n_val, 10) and outputs.dtype == np.float32
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == "greedy"
    (trial,) = pipe.final_study().get_trials()
    ens = trial.user_attrs[records.MEMBERS]
    weights = [x["weight"] for x in ens["members"]]
    assert len(ens["path"]) == 6 and m["members"] == len(weights)
    # the nested ensemble with the lowest validation loss is kept (Caruana et al. 2004)
    assert sum(weights) == ens["path"].index(min(ens["path"])) + 1
    assert {(x["stage"], x["trial"]) for x in ens["members"]} <= {
        (x["stage"], x["trial"]) for x in ens["library"]
    }
    assert ens["evidence"]["metric"] == "accuracy" and ens["evidence"]["n"] == n_val
    # the model file holds each member as often as it was chosen, with its own configuration
    model = pipe.final_model()
    assert len(model.payloads) == sum(weights) and model.member_configs is not None
    hidden = [c.hidden for c in model.configs()]
    want = [x["config"]["hidden"] for x in ens["members"] for _ in range(x["weight"])]
    assert [list(h) for h in hidden] == want
    # hpo predict on exactly the test rows gives the stored test accuracy
    split = pipe.dataset().split.test
    _, _, accuracy = predict_test_rows(
        cfg, tmp_path / "table.csv", split, tmp_path, args=storage_args(tmp_path)
    )
    assert accuracy == pytest.approx(m["accuracy"], abs=1e-12)
    # status and report say what the figures are
    line = cli._test_line(m)
    assert f"a greedy ensemble of {m['members']} models (its best single member: accuracy" in line
    from hpo.present import report

    text = " ".join(str(b.get("text", "")) for b in report.result_section(pipe).blocks)
    assert "greedy ensemble" in text


def test_a_greedy_ensemble_exports_to_onnx_as_predict_computes_it(tmp_path: Path) -> None:
    from conftest import require_module

    require_module("onnxruntime", "HPO_REQUIRE_ONNX")
    require_module("onnxscript", "HPO_REQUIRE_ONNX")
    cfg = _study(tmp_path, GREEDY.replace("max_members = 6", "max_members = 3"))
    assert cli.main(["-q", "run", "--config", str(cfg), *storage_args(tmp_path)]) == 0
    onnx_agrees_with_predict(cfg, tmp_path, tmp_path / "table.csv")


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (
            'ensemble = "greedy"\nmembers_from = ["nope"]',
            "stages.final.members_from: names 'nope', which is not a stage",
        ),
        ('ensemble = "greedy"', 'ensemble = "greedy" needs members_from'),
        ('ensemble = "greedy"\nmembers_from = ["search"]\nmax_members = 0', "stages.final.max_members = 0"),
        ('members_from = ["search"]', "members_from belongs to a greedy ensemble"),
    ],
)
def test_a_greedy_final_that_cannot_be_made_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], final: str, message: str
) -> None:
    cfg = _study(tmp_path, final)
    assert message in refused_in_one_line(
        ["-q", "run", "--config", str(cfg), *storage_args(tmp_path)], capsys
    )
    assert not (tmp_path / "hpo.db").exists() and not (tmp_path / "artifacts").exists()


def test_a_cross_validated_stage_cannot_feed_the_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _study(tmp_path)
    text = cfg.read_text().replace('pruner = "none"', 'pruner = "none"\ncv = 3')
    cfg.write_text(text)
    line = refused_in_one_line(["-q", "run", "--config", str(cfg), *storage_args(tmp_path)], capsys)
    assert "leave no validation outputs" in line
    assert not (tmp_path / "hpo.db").exists()


def test_a_library_stage_run_before_the_greedy_final_named_it_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _study(tmp_path, "", name="plain")
    assert cli.main(["-q", "run-stage", "search", "--config", str(plain), *storage_args(tmp_path)]) == 0
    pipe = Pipeline.load(plain, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    search = pipe.ctx.find_study(pipe.ctx.study_name("search"))
    assert search is not None and all(records.VAL_OUTPUTS not in t.user_attrs for t in search.get_trials())
    capsys.readouterr()
    line = refused_in_one_line(
        ["-q", "run", "--config", str(_study(tmp_path)), *storage_args(tmp_path)], capsys
    )
    assert "stored no validation outputs" in line and "hpo run-stage search --force" in line
    assert pipe.ctx.find_study(pipe.ctx.study_name("final")) is None  # nothing written for the final


def test_the_greedy_keys_leave_a_plain_final_fingerprint_as_it_was() -> None:
    assert FinalSettings().model_dump(mode="json") == {
        "kind": "final", "requires": None, "epochs": 15, "patience": 5, "seeds": 1, "ensemble": False,
    }  # fmt: skip
    greedy = FinalSettings(ensemble="greedy", members_from=["search"]).model_dump(mode="json")
    assert greedy["ensemble"] == "greedy" and greedy["members_from"] == ["search"] and "bags" not in greedy


def test_a_model_file_whose_member_configurations_do_not_match_its_members_is_one_line(
    tmp_path: Path,
) -> None:
    cfg = _study(tmp_path, GREEDY.replace("max_members = 6", "max_members = 2"))
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    pipe.run()
    path = tmp_path / "model.pt"
    read_model_artifact(pipe.ctx.artifacts, pipe.final_model_artifact(), path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "hpo-model/6" and len(raw["member_configs"]) == len(raw["payloads"]) >= 1
    raw["member_configs"] = raw["member_configs"] * 2 + raw["member_configs"][:1]
    torch.save(raw, path)
    with pytest.raises(DataFileError, match="'member_configs' is not one configuration per member"):
        load_model_file(path)


def test_a_greedy_member_may_train_several_seeds(tmp_path: Path) -> None:
    cfg = _study(tmp_path, GREEDY.replace("max_members = 6", "max_members = 2") + "\nseeds = 2")
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'hpo.db'}", artifacts=tmp_path / "artifacts")
    pipe.run()
    m = pipe.status().test_metrics
    assert m is not None and m["ensemble"] == "greedy"
    model = pipe.final_model()
    (trial,) = pipe.final_study().get_trials()
    chosen = sum(x["weight"] for x in trial.user_attrs[records.MEMBERS]["members"])
    assert len(model.payloads) == 2 * chosen  # each selection's 2 seeds, whatever the members
    assert len(pipe.ctx.data().test_reads) == 2 * m["members"]  # the test rows read once per model
