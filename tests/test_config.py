from __future__ import annotations

from pathlib import Path

import pytest

from hpo import config
from hpo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["msd_decade.toml", "quick.toml"])
def test_shipped_study_files_load(name: str) -> None:
    cfg = config.load(REPO / "studies" / name)
    assert cfg.requires("final") == ["components"]


def test_faithful_protocol_numbers() -> None:
    cfg = config.load(REPO / "studies" / "msd_decade.toml")
    assert cfg.baseline.architectures == [[128, 128], [256, 256], [256, 128, 64]]
    assert (cfg.baseline.max_batches, cfg.baseline.eval_every) == (15, 5)
    assert (cfg.lr_range.end_lr, cfg.lr_range.verify_epochs) == (1.0, 5)
    assert cfg.weight_decay.grid == [0.0, 1e-5, 1e-4, 1e-3, 1e-2]
    assert (cfg.weight_decay.folds, cfg.weight_decay.epochs) == (5, 10)
    assert cfg.components.epochs == 15
    assert (cfg.final.epochs, cfg.final.patience) == (15, 5)
    assert (cfg.defaults.batch_size, cfg.defaults.seed, cfg.defaults.lr) == (128, 42, 1e-3)
    assert cfg.data.rows is None and cfg.data.split == "stratified"
    # speed levers, each tested elsewhere to reproduce (stacking) or stay within noise (bf16)
    assert (cfg.weight_decay.stack, cfg.components.stack, cfg.defaults.precision) == (5, 3, "bf16")


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text('[pipeline]\nname = "t"\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[stages.weight_decay]\ngird = [0.0]\n", "unknown key stages.weight_decay.gird; known keys:"),
        ("[stages.weight_decay]\nfolds = 'five'\n", "stages.weight_decay.folds = 'five' must be of type int"),
        (
            "[stages.final]\nrequires = ['tuning']\n",
            "stages.final.requires names 'tuning', which is not a stage",
        ),
        (
            "[stages.baseline]\nrequires = ['final']\n",
            "stages.baseline.requires names 'final', which runs after it",
        ),
        ("[stages.warmup]\nepochs = 1\n", "unknown stage stages.warmup"),
        ("[defaults]\nactivation = 'tanh'\n", "defaults.activation has 'tanh'"),
        ("[stages.components]\nnorm = ['groupnorm']\n", "stages.components.norm has 'groupnorm'"),
        ("[data]\nsource = 'kaggle'\n", "data.source = 'kaggle'"),
        ("[data]\nrows = true\n", "data.rows = True must be of type int | None"),
        ("[extra]\nx = 1\n", "unknown key extra"),
        ("[stages.baseline]\narchitectures = [[128, 0]]\n", "stages.baseline.architectures"),
        ("[defaults]\nprecision = 'fp16'\n", "defaults.precision = 'fp16'; use 'fp32' or 'bf16'"),
        ("[stages.weight_decay]\nstack = 0\n", "stages.weight_decay.stack must be at least 1"),
        ("[stages.components]\nstack = -2\n", "stages.components.stack must be at least 1"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert needle in str(err.value)


def test_missing_name_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[data]\nseed = 1\n")
    with pytest.raises(ConfigError, match=r"pipeline\.name is required"):
        config.load(path)
    path.write_text("[pipeline\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)
    with pytest.raises(ConfigError, match="no such study file"):
        config.load(tmp_path / "nope.toml")
