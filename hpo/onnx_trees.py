"""HistGradientBoosting's categorical splits as numeric splits, so that skl2onnx converts them.

skl2onnx (1.20) writes every split of a HistGradientBoosting tree as ``x <= threshold``, a
categorical split's bitset included, which is wrong (sklearn-onnx#1051), and ONNX's tree operators
of ``ai.onnx.ml`` 3 have no set membership. The preprocessing in front of the estimator knows each
categorical column's slots (:class:`hpo.data.preprocess.Categorical`), so each categorical split is
decided per slot here, once, exactly as scikit-learn's predictor decides it for the slot's code
(``_predictor.pyx``: NaN or a code outside the training rows' known categories goes the missing
side, a code in the split's left bitset goes left, any other known code right). The split then
tests an indicator column (0 left, 1 right) at threshold 0.5, and the graph computes that column
by gathering the slot's row of a table, beside the code itself. Copies are rewritten; the model
file's estimators are untouched.

Identical indicators (the same column and the same side for every slot) share one column.

The trees are then written here too (:func:`append_graph`), not by skl2onnx: skl2onnx 1.20 cannot
convert any HistGradientBoosting model under onnx 1.23 (it passes a Python ``bool`` for a leaf's
``nodes_missing_value_tracks_true``, which onnx's protobuf refuses: "Expected an int, got a
boolean", measured on iris), and it does not see the estimator's own reordering of its columns
(scikit-learn's ordinal encoder puts the categorical ones first). One ``TreeEnsembleRegressor``
(``ai.onnx.ml`` 3) per member gives the raw scores (baseline plus the trees; leaf values already
shrunk), then the loss's inverse link (sigmoid, softmax, identity or exp), then the members' mean,
which is what ``predict_proba`` / ``predict`` and :meth:`hpo.tasks.Task.combine` compute. Each
float64 threshold is written as the largest float32 not above it, so ``x <= t`` decides alike for
every float32 ``x``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hpo.data.preprocess import Categorical
from hpo.errors import ConfigError

ML_OPSET = 3  # TreeEnsembleRegressor's attributes as written here


def slot_codes(c: Categorical) -> npt.NDArray[np.float64]:
    """Slot -> the native code :meth:`Preprocessor.transform` gives it (NaN empty, the
    infrequent level after the kept ones)."""
    return np.array([np.nan, len(c.levels), *range(len(c.levels))], dtype=np.float64)


def _in_bitset(bitset: npt.NDArray[np.uint32], codes: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = ((bitset[codes >> 5] >> (codes & 31).astype(np.uint32)) & 1).astype(bool)
    return inside


def _sides(
    node: Any,
    codes: npt.NDArray[np.float64],
    left_bitset: npt.NDArray[np.uint32],
    known_bitset: npt.NDArray[np.uint32],
) -> npt.NDArray[np.float32]:
    """Per slot: 0.0 where the split sends the slot's code left, 1.0 right."""
    missing_left = bool(node["missing_go_to_left"])
    filled = np.nan_to_num(codes, nan=-1.0)  # NaN: empty, or a code the fit never saw
    valid = (filled >= 0) & (filled < 256)
    ints = np.where(valid, filled, 0).astype(np.int64)
    left = valid & _in_bitset(left_bitset, ints)
    right = valid & ~left & _in_bitset(known_bitset, ints)
    goes_left = left | (~left & ~right & missing_left)
    return np.where(goes_left, 0.0, 1.0).astype(np.float32)


def _internal_codes(estimator: Any, first: int, slot_code: list[npt.NDArray[np.float64]]) -> dict[int, Any]:
    """Per tree feature index that is categorical: each slot's code as the fitted estimator's
    own ordinal encoder numbers it (NaN: empty, or a code its training rows never had)."""
    encoder = estimator._preprocessor.named_transformers_["encoder"]
    out = {}
    for position, (f, categories) in enumerate(
        zip(np.flatnonzero(estimator.is_categorical_), encoder.categories_, strict=True)
    ):
        known = np.asarray(categories, dtype=np.float64)
        known = known[~np.isnan(known)]
        codes = slot_code[f - first]
        at = np.searchsorted(known, np.nan_to_num(codes, nan=-1.0))
        hit = (at < known.size) & (known[np.minimum(at, known.size - 1)] == codes)
        out[position] = np.where(hit, at, np.nan)
    return out


def unfold(
    estimators: Sequence[Any], categorical: Sequence[Categorical], first_categorical: int, width: int
) -> tuple[list[Any], list[npt.NDArray[np.float32]]]:
    """Copies of ``estimators`` whose trees read the matrix's own columns (scikit-learn's
    estimator reorders them behind an ordinal encoder, categorical first, which skl2onnx does not
    see) and whose categorical splits test indicator columns appended after the ``width``
    columns of the matrix; and per categorical column the table slot -> its indicators
    (``[n_slots, k]``, k possibly 0), in the order the columns are appended (column by column)."""
    slot_code = [slot_codes(c) for c in categorical]
    found: list[dict[bytes, int]] = [{} for _ in categorical]  # per column: sides -> its k
    columns: list[list[npt.NDArray[np.float32]]] = [[] for _ in categorical]
    rewritten: list[tuple[Any, list[tuple[npt.NDArray[Any], int, int, int]]]] = []
    for estimator in estimators:
        if estimator._preprocessor is None:  # no categorical column: nothing reordered
            order = np.arange(width)
            internal: dict[int, Any] = {}
        else:
            is_cat = np.asarray(estimator.is_categorical_, dtype=bool)
            order = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
            internal = _internal_codes(estimator, first_categorical, slot_code)
        known, f_idx_map = estimator._bin_mapper.make_known_categories_bitsets()
        out = copy.copy(estimator)
        out._predictors = []
        out._preprocessor = None
        out.is_categorical_ = None
        pending: list[tuple[npt.NDArray[Any], int, int, int]] = []  # nodes, node, column j, its k
        for per_iteration in estimator._predictors:
            row = []
            for predictor in per_iteration:
                nodes = predictor.nodes.copy()
                for i in np.flatnonzero(~nodes["is_leaf"].astype(bool)):
                    node = nodes[i]
                    f = int(node["feature_idx"])  # the estimator's own column
                    if not node["is_categorical"]:
                        nodes[i]["feature_idx"] = order[f]
                        continue
                    j = int(order[f]) - first_categorical
                    sides = _sides(
                        node,
                        internal[f],
                        predictor.raw_left_cat_bitsets[node["bitset_idx"]],
                        known[f_idx_map[f]],
                    )
                    k = found[j].setdefault(sides.tobytes(), len(found[j]))
                    if k == len(columns[j]):
                        columns[j].append(sides)
                    pending.append((nodes, int(i), j, k))
                clone = copy.copy(predictor)
                clone.nodes = nodes
                row.append(clone)
            out._predictors.append(row)
        rewritten.append((out, pending))
    offsets = np.cumsum([0, *(len(c) for c in columns)])
    copies = []
    for out, pending in rewritten:
        for nodes, at, j, k in pending:
            nodes[at]["feature_idx"] = width + int(offsets[j]) + k
            nodes[at]["num_threshold"] = 0.5
            nodes[at]["is_categorical"] = False
        out.n_features_in_ = width + int(offsets[-1])
        copies.append(out)
    tables = [
        np.stack(cols, axis=1) if cols else np.zeros((c.n_slots, 0), dtype=np.float32)
        for c, cols in zip(categorical, columns, strict=True)
    ]
    return copies, tables


def is_hist_gradient_boosting(estimator: Any) -> bool:
    """A fitted HistGradientBoosting classifier or regressor (what :func:`append_graph` writes)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    return isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor)


def _threshold(t: float) -> float:
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return float(t32)


def _ensemble_attributes(estimator: Any) -> dict[str, Any]:
    """The ``TreeEnsembleRegressor`` attributes of one fitted estimator's raw scores."""
    k_out = int(estimator.n_trees_per_iteration_)
    names = (
        "nodes_treeids nodes_nodeids nodes_featureids nodes_modes nodes_values nodes_truenodeids "
        "nodes_falsenodeids nodes_missing_value_tracks_true target_treeids target_nodeids "
        "target_ids target_weights"
    )
    a: dict[str, list[Any]] = {k: [] for k in names.split()}
    tree = 0
    for per_iteration in estimator._predictors:
        for k, predictor in enumerate(per_iteration):
            for i, node in enumerate(predictor.nodes):
                leaf = bool(node["is_leaf"])
                if node["is_categorical"] and not leaf:  # pragma: no cover - unfold() rewrites them
                    raise ConfigError("a categorical split reached the ONNX writer; export again")
                a["nodes_treeids"].append(tree)
                a["nodes_nodeids"].append(i)
                a["nodes_featureids"].append(0 if leaf else int(node["feature_idx"]))
                a["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
                a["nodes_values"].append(0.0 if leaf else _threshold(float(node["num_threshold"])))
                a["nodes_truenodeids"].append(0 if leaf else int(node["left"]))
                a["nodes_falsenodeids"].append(0 if leaf else int(node["right"]))
                a["nodes_missing_value_tracks_true"].append(0 if leaf else int(node["missing_go_to_left"]))
                if leaf:
                    a["target_treeids"].append(tree)
                    a["target_nodeids"].append(i)
                    a["target_ids"].append(k)
                    a["target_weights"].append(float(node["value"]))
            tree += 1
    base = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)
    return {
        **a,
        "n_targets": k_out,
        "base_values": [float(b) for b in base],
        "aggregate_function": "SUM",
        "post_transform": "NONE",
    }


def append_graph(
    graph: Any, estimators: Sequence[Any], features: str, output: str, *, n_classes: int, regression: Any
) -> None:
    """Nodes reading the float32 matrix ``features`` and writing ``output``: the members' mean
    probabilities ``[N, n_classes]`` or, for ``regression`` (the task: its ``mean``/``std``), the
    mean value in the target's units ``[N]``. Appended to ``graph`` (an ``onnx.GraphProto``)."""
    from onnx import TensorProto, helper

    outs = []
    for m, estimator in enumerate(estimators):
        name = type(estimator).__name__
        link = type(estimator._loss.link).__name__
        raw = f"hgb{m}_raw"
        graph.node.append(
            helper.make_node(
                "TreeEnsembleRegressor",
                [features],
                [raw],
                domain="ai.onnx.ml",
                **_ensemble_attributes(estimator),
            )
        )
        done = f"hgb{m}_out"
        if regression is not None:
            if link == "IdentityLink":
                graph.node.append(helper.make_node("Identity", [raw], [done]))
            elif link == "LogLink":
                graph.node.append(helper.make_node("Exp", [raw], [done]))
            else:
                raise ConfigError(
                    f"this {name}'s loss (link {link}) has no ONNX graph; predict with hpo predict"
                )
        elif estimator.n_trees_per_iteration_ == 1:  # two classes: sigmoid of class 1's score
            if n_classes != 2:
                raise ConfigError(f"this {name} has one score but the task has {n_classes} classes")
            graph.node.extend(
                [
                    helper.make_node("Sigmoid", [raw], [f"hgb{m}_p1"]),
                    helper.make_node("Sub", ["hgb_one", f"hgb{m}_p1"], [f"hgb{m}_p0"]),
                    helper.make_node("Concat", [f"hgb{m}_p0", f"hgb{m}_p1"], [done], axis=1),
                ]
            )
        else:
            if len(estimator.classes_) != n_classes:
                raise ConfigError(
                    f"a member of this model ({name}) was fitted on {len(estimator.classes_)} of the "
                    f"{n_classes} classes; its ONNX graph cannot give every class a probability"
                )
            graph.node.append(helper.make_node("Softmax", [raw], [done], axis=1))
        outs.append(done)
    if regression is None and any(e.n_trees_per_iteration_ == 1 for e in estimators):
        graph.initializer.append(helper.make_tensor("hgb_one", TensorProto.FLOAT, [], [1.0]))
    mean = "hgb_mean" if regression is not None else output
    graph.node.append(helper.make_node("Mean", outs, [mean]))
    if regression is not None:
        graph.initializer.extend(
            [
                helper.make_tensor("hgb_std", TensorProto.FLOAT, [], [float(regression.std)]),
                helper.make_tensor("hgb_target_mean", TensorProto.FLOAT, [], [float(regression.mean)]),
                helper.make_tensor("hgb_flat", TensorProto.INT64, [1], [-1]),
            ]
        )
        graph.node.extend(
            [
                helper.make_node("Reshape", [mean, "hgb_flat"], ["hgb_flat_values"]),
                helper.make_node("Mul", ["hgb_flat_values", "hgb_std"], ["hgb_scaled"]),
                helper.make_node("Add", ["hgb_scaled", "hgb_target_mean"], [output]),
            ]
        )
