from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hpo.families.mlp import components
from hpo.families.mlp import model as models
from hpo.settings import ACTIVATIONS, INITS, NORMS, OPTIMIZERS, ModelConfig, Norm, OptimConfig
from hpo.training import optim


@pytest.mark.parametrize(
    ("hidden", "count"), [((128, 128), 29_450), ((256, 256), 91_658), ((256, 128, 64), 65_098)]
)
def test_write_up_parameter_counts(hidden: tuple[int, ...], count: int) -> None:
    assert models.count_parameters(models.build_model(ModelConfig(hidden=hidden), seed=0)) == count


@pytest.mark.parametrize(("norm", "cls"), [("batchnorm", nn.BatchNorm1d), ("layernorm", nn.LayerNorm)])
def test_norm_sits_between_linear_and_activation(norm: Norm, cls: type[nn.Module]) -> None:
    model = models.build_model(ModelConfig(hidden=(32, 16), norm=norm, activation="gelu"), seed=0)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, cls, nn.GELU, nn.Linear, cls, nn.GELU, nn.Linear]


def test_activations_and_no_norm() -> None:
    for name, cls in [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU)]:
        model = models.build_model(ModelConfig(hidden=(8,), activation=name), seed=0)  # type: ignore[arg-type]
        assert [type(m) for m in model] == [nn.Linear, cls, nn.Linear]


def _first(model: nn.Module) -> nn.Linear:
    layer = next(iter(model.children()))
    assert isinstance(layer, nn.Linear)
    return layer


def test_inits_differ_and_are_seeded() -> None:
    weights = {}
    for init in INITS:
        a = models.build_model(ModelConfig(init=init), seed=1)  # type: ignore[arg-type]
        b = models.build_model(ModelConfig(init=init), seed=1)  # type: ignore[arg-type]
        assert torch.equal(_first(a).weight, _first(b).weight)
        weights[init] = _first(a).weight
    assert not torch.equal(weights["default"], weights["xavier_uniform"])
    std = weights["kaiming_normal"].std().item()
    assert std == pytest.approx((2 / 90) ** 0.5, rel=0.05)
    bound = (6 / (90 + 256)) ** 0.5
    assert weights["xavier_uniform"].abs().max().item() <= bound
    xavier = _first(models.build_model(ModelConfig(init="xavier_uniform"), seed=1))
    assert torch.count_nonzero(xavier.bias) == 0


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_model(ModelConfig(), seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_optimizers() -> None:
    params = list(nn.Linear(3, 2).parameters())
    adam = optim.build_optimizer(params, OptimConfig(name="adam", lr=0.01, weight_decay=1e-4))
    adamw = optim.build_optimizer(params, OptimConfig(name="adamw", lr=0.01, weight_decay=1e-2))
    sgd = optim.build_optimizer(params, OptimConfig(name="sgd", lr=0.1))
    rms = optim.build_optimizer(params, OptimConfig(name="rmsprop", lr=0.001))
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 1e-4
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 1e-2
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert isinstance(rms, torch.optim.RMSprop)
    assert [n for n, spec in optim.OPTIMIZERS.items() if spec.decoupled] == ["adamw"]


@pytest.mark.parametrize(
    ("table", "literal", "lookup"),
    [
        (components.ACTIVATIONS, ACTIVATIONS, components.activation),
        (components.NORMS, NORMS, components.norm),
        (components.INITS, INITS, components.init),
        (optim.OPTIMIZERS, OPTIMIZERS, optim.optimizer_spec),
    ],
    ids=["activation", "norm", "init", "optimizer"],
)
def test_every_component_value_has_its_table_entry_and_an_unknown_name_raises(
    table: dict[str, object], literal: tuple[str, ...], lookup: Callable[[str], object]
) -> None:
    """One table per component, keyed by the setting's literal values: no value without an
    entry, no entry without a value, and no silent fallback for a name outside them."""
    assert tuple(table) == literal
    for name in literal:
        assert lookup(name) is table[name]
    with pytest.raises(ValueError, match=r"unknown \w+ 'swish'; \w+s are: "):
        lookup("swish")


def test_the_mlp_and_the_stack_take_their_components_from_the_same_tables() -> None:
    """Each activation and norm the MLP builds is the table's; the stacked trainer applies the
    table's functions (a stack of one member equals the MLP: tests/test_stacked.py)."""
    for act, spec in components.ACTIVATIONS.items():
        for norm, norm_spec in components.NORMS.items():
            model = models.build_model(ModelConfig(hidden=(8,), activation=act, norm=norm), seed=0)  # type: ignore[arg-type]
            kinds = [type(m) for m in model]
            assert type(spec.module()) in kinds
            built_norm = [k for k in kinds if k in (nn.BatchNorm1d, nn.LayerNorm)]
            assert built_norm == ([] if norm_spec.module is None else [type(norm_spec.module(8))])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"activation": "tanh"}, "activation"),
        ({"norm": "groupnorm"}, "norm"),
        ({"init": "orthogonal"}, "init"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (0, 256)}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_model_config(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_optim_config() -> None:
    with pytest.raises(ValidationError, match="name"):
        OptimConfig(name="lamb")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="lr"):
        OptimConfig(lr=0)
    with pytest.raises(ValidationError, match="lr"):
        OptimConfig(lr=float("nan"))


def test_dropout_is_seeded_and_off_in_eval() -> None:
    cfg = ModelConfig(hidden=(16, 16), dropout=0.5)
    a, b = models.build_model(cfg, seed=3), models.build_model(cfg, seed=3)
    x = torch.randn(8, 90)
    assert torch.equal(a(x), b(x))  # the same masks from the same seed
    assert not torch.equal(a(x), a(x))  # new masks at each call
    a.eval()
    assert torch.equal(a(x), a(x))
    kinds = [type(m).__name__ for m in models.build_model(cfg, seed=0)]
    assert kinds == ["Linear", "ReLU", "SeededDropout", "Linear", "ReLU", "SeededDropout", "Linear"]
