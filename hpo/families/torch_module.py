"""Family ``torch``: your own ``nn.Module``, built by a factory and trained by hpo's trainer.

``module = "my_net.py:make"`` (a file, relative to the working directory) or
``"package.module:make"``; hpo calls ``make(n_features, n_outputs, **params)`` and trains the
module it returns on standardised feature rows: its output is ``[N, n_outputs]`` (logits for a
classifier, one value for a regressor). The factory's keyword arguments are the family's own
settings: their defaults in ``[defaults] params``, tunable by their plain names. hpo's training
settings apply (optimizer, lr, weight_decay, batch_size, label_smoothing, class_weight, seed,
precision, device), and so do the LR range test, early stopping and the final test discipline.

Each model is built and trained inside a forked RNG seeded with its seed, so initialisation and
dropout (which draw from PyTorch's global generator in a user's module) are reproducible and the
caller's generator is left alone. Models train one after another (no stacking: a module of any
structure cannot be stacked as the MLP is; ``torch.func`` stacking needs identical modules and
was not measured here).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from hpo.errors import first_line
from hpo.families._imports import load_object
from hpo.families._protocol import Fitting, ModelFamily
from hpo.settings import TRAINING_SETTINGS, RunConfig, check_setting, is_json_value
from hpo.training import FitResult, fit, predict_outputs
from hpo.training.seeding import seeded


def factory(cfg: RunConfig) -> Any:
    """The factory ``cfg.module`` names (ValueError if it cannot be imported or called)."""
    assert cfg.module is not None
    make = load_object(cfg.module)
    if not callable(make):
        raise ValueError(f"{cfg.module} is a {type(make).__name__}, not callable; name a function or class")
    return make


def _signature(make: Any, spec: str) -> inspect.Signature:
    try:
        return inspect.signature(make)
    except (TypeError, ValueError):
        raise ValueError(
            f"{spec}: its signature cannot be read; define it as def make(n_features, n_outputs, ...)"
        ) from None


class TorchFamily(ModelFamily):
    name: ClassVar[str] = "torch"

    def own_params(self, cfg: RunConfig) -> Mapping[str, Any] | None:
        assert cfg.module is not None
        sig = _signature(factory(cfg), cfg.module)
        params = list(sig.parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        named = [p for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return {p.name: (None if p.default is p.empty else p.default) for p in named}

    def complete(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the factory's defaults written into ``params`` (those JSON can hold), so
        stored configurations and model files say how the module was built even if the factory's
        defaults change later."""
        assert cfg.module is not None
        sig = _signature(factory(cfg), cfg.module)
        defaults = {
            p.name: p.default
            for p in list(sig.parameters.values())[2:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not p.empty
            and p.name not in cfg.params
            and is_json_value(p.default)
        }
        return cfg.with_point(defaults) if defaults else cfg

    def check(self, cfg: RunConfig, task: str) -> None:
        assert cfg.module is not None
        make = factory(cfg)
        sig = _signature(make, cfg.module)
        try:
            sig.bind(1, 1, **cfg.params)
        except TypeError as exc:
            raise ValueError(
                f"{cfg.module} cannot be called as make(n_features, n_outputs, **params) with params "
                f"{sorted(cfg.params)} ({exc}); give it those parameters or change params"
            ) from None
        names = [p.name for p in sig.parameters.values()][2:]
        clash = sorted(set(names) & set(TRAINING_SETTINGS))
        if clash:
            raise ValueError(
                f"{cfg.module} takes {clash[0]!r}, which is one of hpo's training settings; "
                "rename that parameter (hpo sets it for the optimizer and trainer)"
            )

    def check_value(self, cfg: RunConfig, name: str, value: Any) -> Any:
        if name in cfg.own:  # hpo's training settings (optimizer, lr, weight_decay, ...): every torch model's
            return check_setting(name, value)
        own = self.own_params(cfg)
        if own is not None and name not in own:
            raise ValueError(f"not a parameter of {cfg.module}; its parameters are: {', '.join(sorted(own))}")
        return value

    def check_model(self, cfg: RunConfig, *, n_features: int, n_outputs: int) -> None:
        model = self.build(cfg, n_features=n_features, n_outputs=n_outputs, seed=0)
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, n_features))
        except Exception as exc:
            raise ValueError(
                f"the module that {cfg.module} returns fails on a batch of shape [2, {n_features}] "
                f"({type(exc).__name__}: {first_line(exc, 160)}); it must map feature rows to outputs"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the module that {cfg.module} returns maps a batch of shape [2, {n_features}] to {shape}; "
                f"it must return [2, {n_outputs}] (n_outputs = {n_outputs})"
            )

    def group_key(self, cfg: RunConfig) -> tuple[object, ...]:
        return ()

    def build(self, cfg: RunConfig, *, n_features: int, n_outputs: int, seed: int) -> nn.Module:
        with seeded(seed):
            return self._make(cfg, n_features, n_outputs)

    def _make(self, cfg: RunConfig, n_features: int, n_outputs: int) -> nn.Module:
        make = factory(cfg)
        try:
            model = make(n_features, n_outputs, **cfg.params)
        except Exception as exc:
            raise ValueError(
                f"{cfg.module}({n_features}, {n_outputs}, **{cfg.params}) raised "
                f"{type(exc).__name__}: {first_line(exc, 160)}"
            ) from None
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{cfg.module} returned a {type(model).__name__}, not a torch.nn.Module; return the module"
            )
        return model

    def fit_many(self, fitting: Fitting) -> list[FitResult]:
        out = []
        for job, data, cbs in fitting.each():
            with seeded(job.train.seed):  # initialisation, then dropout, as drawn alone
                model = self._make(job.config, fitting.n_features, fitting.task.n_outputs)
                out.append(fit(model, job.config.optim(), job.train, data, task=fitting.task, callbacks=cbs))
        return out

    def outputs(self, model: Any, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
        return predict_outputs(model, x).cpu()

    def payload(self, model: Any) -> dict[str, Any]:
        assert isinstance(model, nn.Module)
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    def _rebuild(self, payload: Mapping[str, Any], cfg: RunConfig, n_features: int, n_outputs: int) -> Any:
        model = self.build(cfg, n_features=n_features, n_outputs=n_outputs, seed=0)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise ValueError(
                f"the saved weights do not fit the module {cfg.module} builds now ({first_line(exc, 160)}); "
                "restore the factory as it was when the model was trained"
            ) from None
        model.eval()
        return model
