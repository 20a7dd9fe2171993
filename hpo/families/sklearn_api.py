"""Family ``sklearn``: any estimator with the scikit-learn API, by import path.

``estimator = "sklearn.ensemble.HistGradientBoostingClassifier"`` (or ``...Regressor``,
``lightgbm.LGBMClassifier``, ``xgboost.XGBRegressor`` where installed, or your own class by
``"my_est.py:MyEstimator"``). Its constructor arguments are the family's settings: defaults in
``[defaults] params``, tunable by their plain names, checked against the estimator's
``get_params()`` and, where the estimator declares its constraints (scikit-learn's
``_parameter_constraints``), validated by scikit-learn before anything is written. ``seed`` sets
``random_state`` where the estimator has one. A classifier is scored from ``predict_proba``
(log-probabilities, so the loss is the same cross-entropy as a network's), a regressor from
``predict`` on the standardised target; both get one evaluation record per fit, so every stage
kind that scores records (grid_cv, sweep, search, final) works unchanged.

Saved with skops (``skops.io.dumps``), never pickle, and restored only as the estimator the study
file names: the file's top-level class must be exactly that class (not a subclass, not another
estimator skops happens to trust), else one line names both. Loading lists the file's types that
skops does not trust by default and accepts exactly these: that class, ``collections.OrderedDict``,
and the tree types (:mod:`hpo.families._trees`) only where the study file's estimator is a tree
estimator, exactly those a fit of it holds (read off ``skops.io.get_untrusted_types``). Anything
else (a function, a type of another package, a tree inside a linear model) is refused by name.
skops leaves the tree types untrusted because a crafted one can crash the process or read out of
bounds at prediction: every tree loaded is bounds-checked before it is used
(:func:`hpo.families._trees.check_trees`). Your own estimator (``"my_est.py:MyEstimator"``) is
recorded under a module name made from the path as the study file writes it
(:func:`hpo.families._imports.module_name`), so its model file loads in a copy of the project in
another directory; a file of an older hpo, recorded under its absolute path's hash, loads as the
study file's class when the class's name is the same.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import skops.io as sio
import torch
from sklearn.base import is_classifier, is_regressor
from torch import nn

from hpo.errors import first_line
from hpo.families import _trees
from hpo.families._imports import is_file_spec, legacy_module, load_object
from hpo.families._protocol import Fitting, ModelFamily
from hpo.settings import RunConfig
from hpo.tasks import task_kind
from hpo.training import EarlyStopping, EvalRecord, FitResult

#: the types (exact names) any saved estimator may hold besides its own class and those skops
#: trusts; tree estimators add their tree types (hpo.families._trees.tree_types)
TRUSTED_TYPES = ("collections.OrderedDict",)
_EPS = 1e-12


def estimator_class(cfg: RunConfig) -> type:
    """``cfg``'s estimator class, resolved once per process (the study file's check, every
    stage's validation and every fit ask for it: before, the class was imported 2 + N times and
    built 3 + 2N times at load for N tuned parameters, and again on every fit)."""
    assert cfg.estimator is not None
    if is_file_spec(cfg.estimator):  # relative to the working directory: the file's own cache
        return _checked(load_object(cfg.estimator), cfg.estimator)
    return _estimator_class(cfg.estimator)


@functools.cache
def _estimator_class(spec: str) -> type:
    return _checked(load_object(spec), spec)


def _checked(cls: Any, spec: str) -> type:
    if not isinstance(cls, type) or not all(hasattr(cls, a) for a in ("fit", "get_params", "set_params")):
        raise ValueError(
            f"{spec} is not a scikit-learn estimator class (it needs fit, get_params and "
            "set_params); name the class, e.g. sklearn.ensemble.HistGradientBoostingClassifier"
        )
    return cls


def data_encoding(*cfgs: RunConfig) -> str:
    """How the rows reach the estimators of ``cfgs`` (a pipeline's tracks): ``"native"`` (category
    codes with NaN, their columns passed as ``categorical_features``, or to LightGBM's fit as
    ``categorical_feature``) where every one is a HistGradientBoosting* or LightGBM estimator, else
    ``"matrix"`` (one-hot / target encoded, imputed, standardised), which every family takes. One
    encoding per pipeline, so that one preprocessor serves every member of an ensemble across
    tracks (the model file holds one)."""
    from hpo.data.encodings import encoding_for
    from hpo.data.preprocess import MATRIX

    found = set()
    for cfg in cfgs:
        if cfg.family != "sklearn" or cfg.estimator is None:
            return MATRIX
        try:
            cls = estimator_class(cfg)
            found.add(encoding_for(cls(**cfg.params)))
        except Exception:  # an estimator that cannot be built is refused, in one line, by check()
            return MATRIX
    return found.pop() if len(found) == 1 else MATRIX


def native_levels(bases: Iterable[RunConfig], stages: Iterable[Any]) -> int:
    """The most levels a categorical column keeps under the native encoding: 254 (with the
    infrequent code, HistGradientBoosting's 255 categories), fewer where the study file sets or
    tunes ``max_bins`` lower (a search's range by its low end), so every trial's fit takes it."""
    from hpo.data.preprocess import NATIVE_MAX_LEVELS

    values = [base.params.get("max_bins") for base in bases]
    values += [v for stage in stages for tuned in stage.tuned().values() for v in tuned.get("max_bins", [])]
    bins = [int(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(1, min([NATIVE_MAX_LEVELS, *(b - 1 for b in bins)]))


def _defaults(cls: type, spec: str) -> dict[str, Any]:
    """The estimator's constructor defaults (a copy; built once per class and process)."""
    return dict(_default_params(cls, spec))


@functools.cache
def _default_params(cls: type, spec: str) -> Mapping[str, Any]:
    try:
        return MappingProxyType(dict(cls().get_params(deep=False)))
    except Exception as exc:
        raise ValueError(
            f"{spec} cannot be constructed without arguments ({type(exc).__name__}: {first_line(exc, 120)})"
        ) from None


def _validated(cls: type, spec: str, params: Mapping[str, Any]) -> Any:
    """An instance with ``params``, checked by scikit-learn's parameter validation where the
    estimator declares it (ValueError with scikit-learn's message)."""
    try:
        est = cls(**params)
        validate = getattr(est, "_validate_params", None)
        # only where the estimator declares its constraints: LightGBM's inherit scikit-learn's
        # _validate_params but not _parameter_constraints (AttributeError on every value)
        if callable(validate) and hasattr(est, "_parameter_constraints"):
            validate()
    except Exception as exc:
        raise ValueError(f"{spec}: {first_line(exc, 240)}") from None
    return est


class SklearnFamily(ModelFamily):
    name: ClassVar[str] = "sklearn"
    torch_based: ClassVar[bool] = False

    def own_params(self, cfg: RunConfig) -> Mapping[str, Any] | None:
        assert cfg.estimator is not None
        return _defaults(estimator_class(cfg), cfg.estimator)

    def complete(self, cfg: RunConfig) -> RunConfig:
        return cfg  # the saved model is the fitted estimator itself, every argument in it

    def check(self, cfg: RunConfig, task: str) -> None:
        assert cfg.estimator is not None
        cls = estimator_class(cfg)
        names = _defaults(cls, cfg.estimator)
        unknown = sorted(set(cfg.params) - set(names))
        if unknown:
            raise ValueError(
                f"{cfg.estimator} has no parameter {unknown[0]!r}; "
                f"its parameters are: {', '.join(sorted(names))}"
            )
        if "random_state" in cfg.params:
            raise ValueError(
                "random_state is set from [defaults] seed (and each seed a stage trains); remove it"
            )
        if "categorical_features" in cfg.params:
            raise ValueError(
                "categorical_features is set by hpo from the table's categorical columns "
                "(data.categorical names integer-coded ones); remove it"
            )
        est = _validated(cls, cfg.estimator, cfg.params)
        classes = task_kind(task).has_classes
        if classes and not is_classifier(est):
            raise ValueError(
                f'{cfg.estimator} is not a classifier and task = "classification"; name a classifier '
                '(e.g. sklearn.ensemble.HistGradientBoostingClassifier) or set data.task = "regression"'
            )
        if not classes and not is_regressor(est):
            raise ValueError(
                f'{cfg.estimator} is not a regressor and task = "regression"; name a regressor '
                "(e.g. sklearn.ensemble.HistGradientBoostingRegressor)"
            )
        if classes and not hasattr(est, "predict_proba"):
            raise ValueError(
                f"{cfg.estimator} has no predict_proba with these params; hpo scores classifiers by "
                "their probabilities (e.g. SVC needs probability = true)"
            )

    def check_value(self, cfg: RunConfig, name: str, value: Any) -> Any:
        assert cfg.estimator is not None
        cls = estimator_class(cfg)
        names = _defaults(cls, cfg.estimator)
        if name not in names:
            raise ValueError(
                f"not a parameter of {cfg.estimator}; its parameters are: {', '.join(sorted(names))}"
            )
        if name == "random_state":
            raise ValueError("random_state is set from [defaults] seed; tune seeds with a stage's seeds = N")
        _validated(cls, cfg.estimator, {**cfg.params, name: value})
        return value

    def check_model(self, cfg: RunConfig, *, n_features: int, n_outputs: int) -> None:
        return None

    def group_key(self, cfg: RunConfig) -> tuple[object, ...]:
        return ()

    def build(self, cfg: RunConfig, *, n_features: int, n_outputs: int, seed: int) -> nn.Module:
        raise ValueError(f"{cfg.estimator} is not a torch module; this stage kind needs family mlp or torch")

    def estimator(self, cfg: RunConfig, seed: int) -> Any:
        assert cfg.estimator is not None
        cls = estimator_class(cfg)
        params = dict(cfg.params)
        if "random_state" in _defaults(cls, cfg.estimator):
            params["random_state"] = seed
        return cls(**params)

    def fit_many(self, fitting: Fitting) -> list[FitResult]:
        """Each job fitted on its training rows, then scored once on them and on its validation
        rows (one evaluation record, epoch 1)."""
        results = []
        task = fitting.task
        for job, data, cbs in fitting.each():
            est = self.estimator(job.config, job.train.seed)
            fit_args: dict[str, Any] = {}
            if data.categorical:  # native encoding: codes, NaN for empty (hpo.data.preprocess)
                if "categorical_features" in est.get_params(deep=False):  # HistGradientBoosting
                    est.set_params(categorical_features=list(data.categorical))
                else:  # LightGBM: a fit argument
                    fit_args["categorical_feature"] = list(data.categorical)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                est.fit(data.x_train.numpy(), data.y_train.numpy(), **fit_args)
            train = task.evaluate(self.outputs(est, data.x_train, task.n_outputs), data.y_train)
            val_out = self.outputs(est, data.x_val, task.n_outputs)
            val = task.evaluate(val_out, data.y_val)
            record = EvalRecord(
                epoch=1,
                step=1,
                train_loss=train.loss,
                train_score=train.score,
                val_loss=val.loss,
                val_score=val.score,
                metric=task.headline,
                val_pred=val.pred,
                val_nll=val.per_row,
                val_out=val_out.float().cpu(),
            )
            result = FitResult(model=est)
            EarlyStopping(patience=None).observe(result, record, cbs)
            EarlyStopping.finish(result)
            results.append(result)
        return results

    def outputs(self, model: Any, x: torch.Tensor, n_outputs: int) -> torch.Tensor:
        """Log-probabilities ``[N, n_outputs]`` (a class the estimator never saw gets ~0
        probability), or the predicted standardised value ``[N, 1]``."""
        rows = x.detach().cpu().numpy()
        if is_classifier(model):
            proba = np.asarray(model.predict_proba(rows), dtype=np.float64)
            full = np.full((rows.shape[0], n_outputs), _EPS)
            full[:, np.asarray(model.classes_, dtype=np.int64)] = proba
            return torch.as_tensor(np.log(np.clip(full, _EPS, None)), dtype=torch.float32)
        values = np.asarray(model.predict(rows), dtype=np.float32).reshape(-1, 1)
        return torch.as_tensor(values)

    def payload(self, model: Any) -> dict[str, Any]:
        data = sio.dumps(model)
        return {"skops": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()}

    def _rebuild(self, payload: Mapping[str, Any], cfg: RunConfig, n_features: int, n_outputs: int) -> Any:
        assert cfg.estimator is not None
        cls = estimator_class(cfg)  # the study file's own: imported as it names it
        expected = _trees.type_name(cls)
        data = bytes(payload["skops"].numpy().tobytes())
        try:
            found = _saved_class(data)
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as exc:
            raise ValueError(f"the saved estimator is not a skops file ({type(exc).__name__})") from None
        legacy = found if _legacy_name_of(found, cls, cfg.estimator) else None
        if found != expected and legacy is None:
            raise ValueError(
                f"the saved estimator is a {_shown(found)}, not the study file's estimator {cfg.estimator} "
                f"({expected}); predict with the study file it was trained with"
            )
        allowed = {expected, *TRUSTED_TYPES, *_trees.tree_types(cls)} | ({legacy} if legacy else set())
        refused = [_shown(t) for t in untrusted if t not in allowed]
        if refused:
            raise ValueError(
                f"the saved estimator holds types hpo does not trust: {', '.join(refused[:5])} "
                f"(trusted for {cfg.estimator}: {', '.join(sorted(allowed))})"
            )
        try:
            with _alias(legacy, cls):
                model = sio.loads(data, trusted=untrusted)
        except Exception as exc:
            raise ValueError(
                f"the saved {_shown(found)} cannot be restored ({type(exc).__name__}: {first_line(exc, 160)})"
            ) from None
        if type(model) is not cls:
            raise ValueError(
                f"the saved estimator is a {_trees.type_name(type(model))}, not the study file's "
                f"estimator {cfg.estimator} ({expected}); predict with the study file it was trained with"
            )
        _trees.check_trees(model, n_features)
        return model


def _shown(name: str) -> str:
    """A type name read from a file, as one short line (the file chose it)."""
    text = name if name.isprintable() else ascii(name)
    return text if len(text) <= 120 else text[:117] + "..."


def _saved_class(data: bytes) -> str:
    """The class of the object a skops file holds (``module.Name``, as skops records it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    if not isinstance(schema, dict):
        raise ValueError("its schema is not an object")
    return f"{schema.get('__module__')}.{schema.get('__class__')}"


def _legacy_name_of(found: str, cls: type, spec: str) -> bool:
    """Whether ``found`` is the study file's own estimator class of a file, as an older hpo
    recorded it (a module named after the file's absolute path's hash, the same class name)."""
    module, _, name = found.rpartition(".")
    return is_file_spec(spec) and legacy_module(module) and name == cls.__name__


@contextlib.contextmanager
def _alias(legacy: str | None, cls: type) -> Iterator[None]:
    """While loading: an older hpo's module name for a file resolves to the study file's module."""
    if legacy is None:
        yield
        return
    name = legacy.rpartition(".")[0]
    previous = sys.modules.get(name)
    sys.modules[name] = sys.modules[cls.__module__]
    try:
        yield
    finally:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
