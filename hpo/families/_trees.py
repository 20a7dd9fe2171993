"""The tree types a saved estimator may hold, and the bounds check of every tree it loaded.

skops leaves the tree types untrusted by default: scikit-learn's ``Tree`` and
HistGradientBoosting's ``TreePredictor`` keep node arrays that compiled code follows without
bounds checks, so a crafted file can crash the process or read memory out of bounds at
prediction. hpo trusts them only for an estimator whose study file names a tree estimator
(:func:`tree_types`: read off skops for a small fit of that very class), and checks every tree it
loads (:func:`check_trees`) before anything predicts with it: child indices within the node array
and after their node (so every path ends), feature indices within the rows' width, value arrays
of the declared shape, categorical bitsets that exist.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from types import FunctionType, ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from hpo.errors import first_line

TREE = "sklearn.tree._tree.Tree"
PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
LGBM_BOOSTER = "lightgbm.basic.Booster"
XGB_BOOSTER = "xgboost.core.Booster"
#: the inner types of tree estimators that skops does not trust by default
TREE_TYPES = (TREE, PREDICTOR, LGBM_BOOSTER, XGB_BOOSTER)
#: where tree estimators live: scikit-learn's trees and ensembles, the boosting libraries
TREE_PACKAGES = ("sklearn.tree", "sklearn.ensemble", "lightgbm", "xgboost")
#: what HistGradientBoosting fitted with categorical_features holds besides its trees: the
#: numeric half of its ColumnTransformer, FunctionTransformer(partial(check_array, ...)); a
#: partial of any other function is refused, since that function is listed as a type of its own
CATEGORICAL_TYPES = ("functools.partial", "sklearn.utils.validation.check_array")
_SMALL = {"n_estimators": 2, "max_iter": 2}  # a probe fit needs two trees, not the defaults' 100


def type_name(cls: type) -> str:
    """A class's name as skops records it (``module.Name``)."""
    return f"{cls.__module__}.{cls.__name__}"


def is_tree_estimator(cls: type) -> bool:
    module = cls.__module__
    return any(module == p or module.startswith(p + ".") for p in TREE_PACKAGES)


@functools.cache
def tree_types(cls: type) -> frozenset[str]:
    """The tree types a fitted ``cls`` holds (none unless it is a tree estimator): those of
    :data:`TREE_TYPES` that ``skops.io.get_untrusted_types`` lists for a small fit of it. Empty
    if it cannot be fitted without arguments (its files are then refused by type name)."""
    if not is_tree_estimator(cls):
        return frozenset()
    import warnings

    import skops.io as sio
    from sklearn.base import is_classifier

    rows = np.random.default_rng(0).normal(size=(40, 3))
    try:
        probe = cls()
        small = {k: v for k, v in _SMALL.items() if k in probe.get_params(deep=False)}
        probe.set_params(**small)
        y = (rows[:, 0] > 0).astype(np.int64) if is_classifier(probe) else rows[:, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe.fit(rows, y)
        found = set(sio.get_untrusted_types(data=sio.dumps(probe)))
        if "categorical_features" in probe.get_params(deep=False):  # as hpo fits it: a coded column
            coded = np.column_stack([rows[:, :2], np.arange(40) % 3])
            probe.set_params(categorical_features=[2])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe.fit(coded, y)
            native = sio.get_untrusted_types(data=sio.dumps(probe))
            found |= {t for t in native if t in CATEGORICAL_TYPES}
    except Exception:
        return frozenset()
    return frozenset(t for t in found if t in TREE_TYPES or t in CATEGORICAL_TYPES)


# --------------------------------------------------------------------------- bounds checks


def check_trees(model: Any, n_features: int) -> None:
    """ValueError naming the first tree of ``model`` whose arrays point outside themselves or
    outside rows of ``n_features`` features; None when every tree is sound."""
    for where, tree, owner in _trees(model):
        kind = type(tree).__module__ + "." + type(tree).__qualname__
        try:
            if kind == TREE:
                problem = _tree_problem(tree, n_features)
            elif kind == PREDICTOR:
                problem = _predictor_problem(tree, n_features, _categorical(owner))
            elif kind == LGBM_BOOSTER:
                problem = _lgbm_problem(tree, n_features)
            else:
                problem = _xgb_problem(tree, n_features)
        except Exception as exc:  # an attribute missing or of the wrong type: not a sound tree
            problem = f"cannot be checked ({type(exc).__name__}: {first_line(exc, 120)})"
        if problem:
            where = where if where.isprintable() and len(where) <= 200 else ascii(where)[:200]
            raise ValueError(
                f"the saved estimator's tree {where} is corrupt: {problem}; the file is damaged or "
                "was not written by hpo, train the model again"
            )


def _trees(model: Any) -> Iterator[tuple[str, Any, Any]]:
    """Every tree object reachable from ``model`` through attributes, lists, tuples, dicts and
    object arrays: (where, tree, the object holding it)."""
    seen: set[int] = set()
    stack: list[tuple[str, Any, Any]] = [(type(model).__name__, model, None)]
    while stack:
        where, obj, owner = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type | ModuleType):
            continue
        if isinstance(obj, FunctionType) or obj is None:
            continue
        seen.add(id(obj))
        kind = type(obj).__module__ + "." + type(obj).__qualname__
        if kind in TREE_TYPES:
            yield where, obj, owner
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend((f"{where}[{i}]", v, owner) for i, v in enumerate(obj.ravel().tolist()))
            continue
        if isinstance(obj, list | tuple):
            stack.extend((f"{where}[{i}]", v, owner) for i, v in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{where}[{k!r}]", v, owner) for k, v in obj.items())
        elif hasattr(obj, "__dict__"):
            stack.extend((f"{where}.{k}", v, obj) for k, v in vars(obj).items())


def _depth(left: npt.NDArray[np.int64], right: npt.NDArray[np.int64]) -> int:
    """The depth of a tree whose children come after their node and whose nodes have one parent
    each (checked before), level by level."""
    level, depth = np.array([0]), 0
    while True:
        inner = level[left[level] >= 0]
        if inner.size == 0:
            return depth
        level = np.concatenate([left[inner], right[inner]])
        depth += 1


def _children_problem(
    left: npt.NDArray[np.int64], right: npt.NDArray[np.int64], inner: npt.NDArray[np.bool_]
) -> str | None:
    count = left.size
    ids = np.arange(count)
    for name, child in (("left", left), ("right", right)):
        bad = inner & ((child <= ids) | (child >= count))
        if bad.any():
            i = int(np.argmax(bad))
            return (
                f"node {i}'s {name} child is {int(child[i])}, outside {i + 1}..{count - 1} "
                "(after the node, within the node array)"
            )
    parents = np.bincount(np.concatenate([left[inner], right[inner]]), minlength=count)
    if (parents > 1).any():
        return f"node {int(np.argmax(parents > 1))} is the child of {int(parents.max())} nodes, not of one"
    return None


def _tree_problem(tree: Any, n_features: int) -> str | None:
    """scikit-learn's ``Tree``: its node count within its node array, children in [-1,
    node_count) and after their node, features in [-2, n_features), the value array's shape,
    and ``max_depth`` covering its depth (decision_path sizes a buffer by it)."""
    count, capacity = int(tree.node_count), int(tree.capacity)
    if not 0 < count <= capacity:
        return f"node_count {count} is outside 1..{capacity} (the size of its node array)"
    outputs, classes = int(tree.n_outputs), int(tree.max_n_classes)
    n_classes = np.asarray(tree.n_classes)
    if outputs < 1 or n_classes.shape != (outputs,) or (n_classes < 1).any() or (n_classes > classes).any():
        return f"n_classes {n_classes.tolist()} does not fit n_outputs {outputs}, max_n_classes {classes}"
    left = np.asarray(tree.children_left, dtype=np.int64)
    right = np.asarray(tree.children_right, dtype=np.int64)
    feature = np.asarray(tree.feature, dtype=np.int64)
    leaf = left == -1
    if (leaf != (right == -1)).any():
        i = int(np.argmax(leaf != (right == -1)))
        return f"node {i} has one child ({int(left[i])}, {int(right[i])})"
    for name, child in (("left", left), ("right", right)):
        bad = (child < -1) | (child >= count)
        if bad.any():
            i = int(np.argmax(bad))
            return f"node {i}'s {name} child is {int(child[i])}, outside [-1, {count})"
    problem = _children_problem(left, right, ~leaf)
    if problem:
        return problem
    width = min(n_features, int(tree.n_features))
    bad = (feature < -2) | (feature >= width) | (~leaf & (feature < 0))
    if bad.any():
        i = int(np.argmax(bad))
        return f"node {i} splits on feature {int(feature[i])}, outside [0, {width})"
    shape = tuple(np.asarray(tree.value).shape)
    if shape != (count, outputs, classes):
        return f"its value array has shape {shape}, not {(count, outputs, classes)}"
    depth = _depth(left, right)
    if depth > int(tree.max_depth):
        return f"max_depth {int(tree.max_depth)} is below its depth {depth}"
    return None


def _categorical(owner: Any) -> npt.NDArray[np.bool_] | None:
    """Which features a HistGradientBoosting estimator treats as categorical (its bin mapper's)."""
    flags = getattr(getattr(owner, "_bin_mapper", None), "is_categorical_", None)
    return None if flags is None else np.asarray(flags).astype(bool)


def _predictor_problem(pred: Any, n_features: int, categorical: npt.NDArray[np.bool_] | None) -> str | None:
    """HistGradientBoosting's ``TreePredictor``: its record dtype, children within the nodes
    array and after their node, split features within ``n_features``, and categorical splits on
    features its estimator treats as categorical with a bitset that exists."""
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    nodes = pred.nodes
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1:
        return "its nodes are not an array of scikit-learn's predictor records"
    if nodes.size == 0:
        return "it has no nodes"
    inner = nodes["is_leaf"] == 0
    problem = _children_problem(
        nodes["left"].astype(np.int64), nodes["right"].astype(np.int64), np.asarray(inner)
    )
    if problem:
        return problem
    feature = nodes["feature_idx"].astype(np.int64)
    bad = inner & ((feature < 0) | (feature >= n_features))
    if bad.any():
        i = int(np.argmax(bad))
        return f"node {i} splits on feature {int(feature[i])}, outside [0, {n_features})"
    split = inner & (nodes["is_categorical"] != 0)
    sizes = []
    for name in ("raw_left_cat_bitsets", "binned_left_cat_bitsets"):
        bits = getattr(pred, name)
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint32 or bits.shape[1:] != (8,):
            return f"its {name} is not an array of 8-word bitsets"
        sizes.append(bits.shape[0])
    bad = split & (nodes["bitset_idx"].astype(np.int64) >= min(sizes))
    if bad.any():
        i = int(np.argmax(bad))
        return f"node {i}'s bitset {int(nodes['bitset_idx'][i])} is outside its {min(sizes)} bitsets"
    if split.any():
        if categorical is None or categorical.shape != (n_features,):
            return "it has categorical splits but its estimator has no categorical features"
        bad = split & ~categorical[np.clip(feature, 0, n_features - 1)]
        if bad.any():
            i = int(np.argmax(bad))
            return f"node {i} splits feature {int(feature[i])} as categorical, which its estimator does not"
    return None


def _lgbm_problem(booster: Any, n_features: int) -> str | None:
    """LightGBM's ``Booster`` (parsed by LightGBM itself): its feature count and every split's."""
    if int(booster.num_feature()) != n_features:
        return f"it has {int(booster.num_feature())} features, not {n_features}"
    for t, info in enumerate(booster.dump_model()["tree_info"]):
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                f = int(node["split_feature"])
                if not 0 <= f < n_features:
                    return f"tree {t} splits on feature {f}, outside [0, {n_features})"
                stack += [node["left_child"], node["right_child"]]
    return None


def _xgb_problem(booster: Any, n_features: int) -> str | None:
    """XGBoost's ``Booster`` (parsed by XGBoost itself): its feature count."""
    if int(booster.num_features()) != n_features:
        return f"it has {int(booster.num_features())} features, not {n_features}"
    return None
