from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo import models
from hpo.errors import ConfigError


@pytest.mark.parametrize(
    ("hidden", "count"), [((128, 128), 29_450), ((256, 256), 91_658), ((256, 128, 64), 65_098)]
)
def test_write_up_parameter_counts(hidden: tuple[int, ...], count: int) -> None:
    assert models.count_parameters(models.build_model(models.ModelConfig(hidden=hidden), seed=0)) == count


@pytest.mark.parametrize(("norm", "cls"), [("batchnorm", nn.BatchNorm1d), ("layernorm", nn.LayerNorm)])
def test_norm_sits_between_linear_and_activation(norm: models.Norm, cls: type[nn.Module]) -> None:
    model = models.build_model(models.ModelConfig(hidden=(32, 16), norm=norm, activation="gelu"), seed=0)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, cls, nn.GELU, nn.Linear, cls, nn.GELU, nn.Linear]


def test_activations_and_no_norm() -> None:
    for name, cls in [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU)]:
        model = models.build_model(models.ModelConfig(hidden=(8,), activation=name), seed=0)  # type: ignore[arg-type]
        assert [type(m) for m in model] == [nn.Linear, cls, nn.Linear]


def _first(model: nn.Module) -> nn.Linear:
    layer = next(iter(model.children()))
    assert isinstance(layer, nn.Linear)
    return layer


def test_inits_differ_and_are_seeded() -> None:
    weights = {}
    for init in models.INITS:
        a = models.build_model(models.ModelConfig(init=init), seed=1)  # type: ignore[arg-type]
        b = models.build_model(models.ModelConfig(init=init), seed=1)  # type: ignore[arg-type]
        assert torch.equal(_first(a).weight, _first(b).weight)
        weights[init] = _first(a).weight
    assert not torch.equal(weights["default"], weights["xavier_uniform"])
    std = weights["kaiming_normal"].std().item()
    assert std == pytest.approx((2 / 90) ** 0.5, rel=0.05)
    bound = (6 / (90 + 256)) ** 0.5
    assert weights["xavier_uniform"].abs().max().item() <= bound
    xavier = _first(models.build_model(models.ModelConfig(init="xavier_uniform"), seed=1))
    assert torch.count_nonzero(xavier.bias) == 0


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_model(models.ModelConfig(), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_optimizers() -> None:
    params = list(nn.Linear(3, 2).parameters())
    adam = models.build_optimizer(params, models.OptimConfig(name="adam", lr=0.01, weight_decay=1e-4))
    sgd = models.build_optimizer(params, models.OptimConfig(name="sgd", lr=0.1))
    rms = models.build_optimizer(params, models.OptimConfig(name="rmsprop", lr=0.001))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 1e-4
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(rms, torch.optim.RMSprop)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"activation": "tanh"}, "activation = 'tanh' is not supported; use one of: relu, leaky_relu, gelu"),
        ({"norm": "groupnorm"}, "norm = 'groupnorm'"),
        ({"init": "orthogonal"}, "init = 'orthogonal'"),
        ({"hidden": ()}, "hidden"),
    ],
)
def test_bad_model_config(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        models.ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_optim_config() -> None:
    with pytest.raises(ConfigError, match="optimizer = 'adamw'"):
        models.OptimConfig(name="adamw")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lr = 0"):
        models.OptimConfig(lr=0)


def test_config_round_trip() -> None:
    cfg = models.ModelConfig(
        hidden=(256, 128, 64), activation="gelu", norm="layernorm", init="kaiming_normal"
    )
    assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    opt = models.OptimConfig(name="rmsprop", lr=3e-4, weight_decay=1e-5)
    assert models.OptimConfig.from_dict(opt.to_dict()) == opt
