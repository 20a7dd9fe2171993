"""ONNX from raw rows: a model file of format 5 (a table with categorical, date-time or incomplete
columns, :mod:`hpo.data.preprocess`) of a torch family as one graph with one input per column.

Inputs, each ``[N, 1]`` and named as the column:

* a numeric column: ``float32``, ``NaN`` for an empty cell;
* a date-time column: its numeric parts, one ``float32`` input each, named ``<column>.<part>``
  (``when.year``, ``when.month``, ``when.dayofweek``, ``when.dayofyear``, ``when.hour`` where
  the model has it, ``when.days`` since 1970-01-01 UTC; what :func:`hpo.data.columns.datetime_parts`
  computes), ``NaN`` where empty;
* a categorical column: ``string``, its value as hpo reads it (text as written, booleans as
  ``true``/``false``, integer codes as written), ``""`` for an empty cell.

Built in two parts, then joined (no ``onnx.compose.merge_models``, so no IR-version alignment):

1. **the rest in torch** (:class:`RawDeployed`): the fitted preprocessing as buffers (median
   fill, indicators, standardisation, one-hot and target-encoding tables gathered by slot),
   the members and the task's output, exported with ``torch.onnx.export`` on two inputs
   (``hpo_numeric`` float32 ``[N, n_numeric]``, ``hpo_slots`` int64 ``[N, n_categorical]``);
2. **a front** written with ``onnx.helper``: each categorical input through an
   ``ai.onnx.ml.LabelEncoder`` (kept levels to their slots, ``""`` to the empty slot, anything
   else to the infrequent slot: ``default_int64``), the inputs concatenated into those two
   tensors; its nodes are put before the torch graph's, whose two inputs it replaces.

A scikit-learn estimator given the encoded matrix: the torch part stops at that matrix
(``hpo_features``), skl2onnx converts the estimator alone (an ensemble's members as a soft voting
estimator, :func:`hpo.onnx_export._voting`), and its graph, every name prefixed ``skl_``, is
appended behind it (the ``ai.onnx.ml`` opset the newer of the two). HistGradientBoosting given
native categorical codes: the torch part gives each column's code (NaN empty) and, after the
matrix, one indicator column per distinct categorical split, and :mod:`hpo.onnx_trees` writes the
trees (no set membership needed); LightGBM's native codes are refused in one line.
A greedy ensemble across families (torch members beside estimators, on the one matrix encoding a
pipeline with an MLP track takes): the torch part hands out both its members' mean and the
matrix, the estimators' graph is appended on the matrix, and the output is the two means
weighted by their member counts, which is the mean over every member that ``hpo predict``
computes. Measured on the
penguins (all 344 rows, empty cells included): the MLP's graph differs from ``hpo predict`` by at
most 5.8e-7 in a probability, LogisticRegression's by 5.3e-7.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hpo.data.columns import CATEGORICAL, DATETIME
from hpo.data.preprocess import NATIVE, ONEHOT, TARGET, Categorical, Preprocessor
from hpo.errors import HpoError
from hpo.model_file import ModelFile
from hpo.onnx_trees import append_graph, is_hist_gradient_boosting, slot_codes, unfold
from hpo.tasks import Regression

OPSET = 18
ML_OPSET = 3
NUMERIC_INPUT, SLOTS_INPUT = "hpo_numeric", "hpo_slots"
FEATURES = "hpo_features"  # the preprocessed matrix, an estimator's input
# a mixed ensemble's parts: the torch members' mean, the trees' (hpo.onnx_trees), the other
# estimators' (skl2onnx)
TORCH_PART, TREES_PART, ESTIMATOR_PART = "hpo_torch_members", "hpo_tree_members", "hpo_estimator_members"


def _onehot_table(c: Categorical) -> torch.Tensor:
    """Slot -> its one-hot row (slot 0, empty, shares infrequent's column where the training
    rows had no empty cell, as :meth:`Preprocessor.transform` does)."""
    first = 0 if c.missing_slot else 1
    table = torch.zeros(c.n_slots, c.width(1))
    for s in range(c.n_slots):
        table[s, max(s - first, 0)] = 1.0
    return table


class RawDeployed(nn.Module):
    """The fitted preprocessing, the members and the task's output transform as one module:
    numeric values (NaN empty) and categorical slots in, probabilities or values out (what
    ``hpo predict`` computes)."""

    median: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    indicator: torch.Tensor
    ramp_start: torch.Tensor
    ramp_knot: torch.Tensor
    ramp_width: torch.Tensor
    ramp_slope: torch.Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        prep: Preprocessor,
        model_file: ModelFile,
        splits: Sequence[npt.NDArray[np.float32]] = (),
        *,
        with_features: bool = False,
    ) -> None:
        super().__init__()
        self.with_features = with_features  # also hand out the matrix (estimators beside)
        self.native = prep.encoding == NATIVE
        self.members = nn.ModuleList(members)
        self.register_buffer("median", torch.as_tensor(prep.median.astype(np.float32)))
        self.register_buffer("mean", torch.as_tensor(prep.scaler.mean.astype(np.float32)))
        self.register_buffer("scale", torch.as_tensor(prep.scaler.scale.astype(np.float32)))
        self.register_buffer("indicator", torch.as_tensor(np.flatnonzero(prep.indicator), dtype=torch.int64))
        self.normal = prep.normal is not None  # scaling = "quantile": normal scores first
        if prep.normal is not None:
            for name, array in zip(
                ("ramp_start", "ramp_knot", "ramp_width", "ramp_slope"), prep.normal.ramps(), strict=True
            ):
                self.register_buffer(name, torch.as_tensor(array))
        tables = []
        for c in prep.categorical:
            if c.mode == ONEHOT:
                tables.append(_onehot_table(c))
            elif c.mode == TARGET:
                tables.append(torch.as_tensor(prep.target_tables[c.name]))
            else:  # native: the slot's code, NaN for empty
                tables.append(torch.as_tensor(slot_codes(c).astype(np.float32)[:, None]))
        # native: per column the slot's side of each HistGradientBoosting categorical split
        tables += [torch.as_tensor(t) for t in splits if t.shape[1]]
        self.tables = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in tables])
        self.table_columns = [j for j, _ in enumerate(prep.categorical)]
        self.table_columns += [j for j, t in enumerate(splits) if t.shape[1]]
        self.n_numeric = len(prep.numeric_names)
        task = model_file.task_of()
        self.regression = isinstance(task, Regression)
        self.target_mean = float(task.mean) if isinstance(task, Regression) else 0.0
        self.target_std = float(task.std) if isinstance(task, Regression) else 1.0

    def features(self, numeric: torch.Tensor | None, slots: torch.Tensor | None) -> torch.Tensor:
        blocks = []
        if numeric is not None and self.native:  # NaN kept: the estimator takes it
            blocks.append((self.scores(numeric) - self.mean) / self.scale)
        elif numeric is not None:
            nan = torch.isnan(numeric)
            filled = torch.where(nan, self.median, numeric)
            blocks.append((self.scores(filled) - self.mean) / self.scale)
            if self.indicator.numel():
                blocks.append(nan.index_select(1, self.indicator).float())
        if slots is not None:
            for j, table in zip(self.table_columns, self.tables, strict=True):
                blocks.append(table.index_select(0, slots[:, j]))
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Quantile normalisation as clipped ramps (:meth:`hpo.data.normal_scores.NormalScores.ramps`;
        NaN kept as NaN), or ``x`` itself."""
        if not self.normal:
            return x
        nan = torch.isnan(x)
        safe = torch.where(nan, torch.zeros_like(x), x)
        ramp = torch.minimum(torch.clamp(safe.unsqueeze(2) - self.ramp_knot, min=0.0), self.ramp_width)
        out = self.ramp_start + (ramp * self.ramp_slope).sum(dim=2)
        return torch.where(nan, x, out)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        outs = [member(x).float() for member in self.members]
        if self.regression:
            value = torch.stack([o[:, 0] for o in outs]).mean(dim=0)
            return value * self.target_std + self.target_mean
        return torch.stack([torch.softmax(o, dim=1) for o in outs]).mean(dim=0)

    def forward(self, hpo_numeric: torch.Tensor, hpo_slots: torch.Tensor) -> Any:
        return self.finish(self.features(hpo_numeric, hpo_slots))

    def finish(self, x: torch.Tensor) -> Any:
        """The head, or for an estimator (no torch members) the feature matrix it takes; with
        estimators beside torch members, both."""
        if not len(self.members):
            return x
        return (self.head(x), x) if self.with_features else self.head(x)


class _NumericOnly(nn.Module):
    def __init__(self, inner: RawDeployed) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hpo_numeric: torch.Tensor) -> Any:
        return self.inner.finish(self.inner.features(hpo_numeric, None))


class _SlotsOnly(nn.Module):
    def __init__(self, inner: RawDeployed) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hpo_slots: torch.Tensor) -> Any:
        return self.inner.finish(self.inner.features(None, hpo_slots))


def export_raw(model_file: ModelFile, members: Sequence[Any], output: str, out: Path) -> dict[str, Any]:
    """Write the raw-rows graph of a format-5 model of a torch family; what it wrote."""
    import onnx
    from onnx import TensorProto, helper

    prep = model_file.prep()
    assert prep is not None
    splits: list[npt.NDArray[np.float32]] = []
    width = prep.width
    if prep.encoding == NATIVE:
        if not all(hasattr(m, "_predictors") for m in members):
            name = next(type(m).__name__ for m in members if not hasattr(m, "_predictors"))
            raise HpoError(
                f"{model_file.origin}: ONNX export of {name} given native categorical codes "
                "(LightGBM's categorical_feature) is not built, only HistGradientBoosting's; "
                "predict its raw rows with hpo predict"
            )
        members, splits = unfold(members, prep.categorical, len(prep.numeric_names), width)
        width += sum(t.shape[1] for t in splits)
    modules = [m.eval() for m in members if isinstance(m, nn.Module)]
    estimators = [m for m in members if not isinstance(m, nn.Module)]
    torch_members = not estimators
    trees = [m for m in estimators if is_hist_gradient_boosting(m)]
    others = [m for m in estimators if not is_hist_gradient_boosting(m)]
    # a greedy ensemble across families: torch members beside estimators, or trees beside others
    mixed = (bool(modules) and bool(estimators)) or (bool(trees) and bool(others))
    deployed = RawDeployed(modules, prep, model_file, splits, with_features=mixed).eval()
    torch_outputs = [output] if torch_members else [FEATURES]
    if mixed and modules:
        torch_outputs = [TORCH_PART, FEATURES]
    n_num, n_cat = len(prep.numeric_names), len(prep.categorical)
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    batch = torch.export.Dim("N")
    numeric_example = torch.zeros(2, n_num)
    slots_example = torch.ones(2, n_cat, dtype=torch.int64)
    if n_num and n_cat:
        module, example, names = deployed, (numeric_example, slots_example), [NUMERIC_INPUT, SLOTS_INPUT]
    elif n_num:
        module, example, names = _NumericOnly(deployed).eval(), (numeric_example,), [NUMERIC_INPUT]
    else:
        module, example, names = _SlotsOnly(deployed).eval(), (slots_example,), [SLOTS_INPUT]
    with tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(
            module,
            example,
            input_names=names,
            output_names=torch_outputs,
            dynamic_shapes={n: {0: batch} for n in names},
            opset_version=OPSET,
            dynamo=True,
            artifacts_dir=tmp,
        )
        assert program is not None
        path = Path(tmp) / "torch.onnx"
        program.save(str(path), external_data=False)
        graph_model = onnx.load(str(path))
    graph = graph_model.graph
    inputs: list[Any] = []
    front: list[Any] = []
    numeric_inputs: list[str] = []
    slot_outputs: list[str] = []
    by_name = {c.name: c for c in prep.categorical}
    for col in model_file.input_columns():
        if col.kind == CATEGORICAL:
            spec = by_name[col.name]
            inputs.append(helper.make_tensor_value_info(col.name, TensorProto.STRING, ["N", 1]))
            coded = f"hpo_slot_{len(slot_outputs)}"
            keys = [*spec.levels, ""]
            values = [2 + i for i in range(len(spec.levels))] + [0 if spec.missing_slot else 1]
            front.append(
                helper.make_node(
                    "LabelEncoder",
                    [col.name],
                    [coded],
                    domain="ai.onnx.ml",
                    keys_strings=keys,
                    values_int64s=values,
                    default_int64=1,
                )
            )
            slot_outputs.append(coded)
        else:
            names_here = [f"{col.name}.{p}" for p in col.parts] if col.kind == DATETIME else [col.name]
            for n in names_here:
                inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]))
                numeric_inputs.append(n)
    if numeric_inputs != prep.numeric_names:
        raise HpoError(
            f"{model_file.origin}: its numeric columns do not match its preprocessing; export it again"
        )
    if n_num:
        front.append(helper.make_node("Concat", numeric_inputs, [NUMERIC_INPUT], axis=1))
    if n_cat:
        front.append(helper.make_node("Concat", slot_outputs, [SLOTS_INPUT], axis=1))
    replaced = [i for i in graph.input if i.name in names]
    for i in replaced:
        graph.input.remove(i)
    graph.input.extend(inputs)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*front, *nodes])
    if mixed:  # each part's graph on the matrix, then their mean weighted by member counts
        parts = [(TORCH_PART, len(modules))] if modules else []
        for name, group in ((TREES_PART, trees), (ESTIMATOR_PART, others)):
            if group:
                _append_estimator(graph_model, group, model_file, width, name)
                parts.append((name, len(group)))
        _mean_of_parts(graph_model, parts, output)
    elif not torch_members:  # the estimator's own graph (skl2onnx) after the preprocessing
        _append_estimator(graph_model, members, model_file, width, output)
    if not any(o.domain == "ai.onnx.ml" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    onnx.checker.check_model(graph_model)
    out.write_bytes(graph_model.SerializeToString())
    described = [
        f"{i.name} {'string' if i.type.tensor_type.elem_type == TensorProto.STRING else 'float32'} [N, 1]"
        for i in inputs
    ]
    return {"inputs": described}


def _append_estimator(
    graph_model: Any, members: Sequence[Any], model_file: ModelFile, width: int, output: str
) -> None:
    """skl2onnx's graph of the estimator (an ensemble's members as a voting estimator) on the
    preprocessed matrix, its names prefixed so none meets the torch graph's, appended."""
    import onnx
    from onnx import compose, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier

    from hpo.errors import ConfigError
    from hpo.onnx_export import _voting, check_every_class, sklearn_output

    if all(is_hist_gradient_boosting(m) for m in members):  # written by hpo.onnx_trees
        task = model_file.task_of()
        regression = task if isinstance(task, Regression) else None
        n_classes = len(model_file.class_names)
        g = graph_model.graph
        append_graph(g, members, FEATURES, output, n_classes=n_classes, regression=regression)
        kept = [o for o in g.output if o.name != FEATURES]
        del g.output[:]
        g.output.extend(kept)
        shape: list[str | int] = ["N"] if regression is not None else ["N", n_classes]
        g.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape))
        return
    estimator = _voting(members, model_file)
    name = type(estimator).__name__
    n_classes = len(model_file.class_names)
    check_every_class(estimator, n_classes)
    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        skl = convert_sklearn(
            estimator,
            initial_types=[(FEATURES, FloatTensorType([None, width]))],
            options=options,
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    except Exception as exc:  # skl2onnx raises several types for an unsupported estimator
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"this {name} cannot be exported to ONNX by skl2onnx ({first[:160]})") from None
    sklearn_output(skl, estimator, model_file, output)
    skl = compose.add_prefix(skl, "skl_")
    g = graph_model.graph
    for node in skl.graph.node:  # its input is the torch graph's output
        node.input[:] = [FEATURES if i == "skl_" + FEATURES else i for i in node.input]
    g.node.extend(skl.graph.node)
    g.initializer.extend(skl.graph.initializer)
    g.node.append(helper.make_node("Identity", ["skl_" + output], [output]))
    kept = [o for o in g.output if o.name != FEATURES]
    del g.output[:]
    g.output.extend(kept)
    g.output.extend(o for o in skl.graph.output)
    g.output[-1].name = output
    versions = {o.domain: o.version for o in graph_model.opset_import}
    for o in skl.opset_import:  # the newer of the two (LabelEncoder's strings need ai.onnx.ml 2+)
        versions[o.domain] = max(versions.get(o.domain, 0), o.version)
    if "ai.onnx.ml" in versions:
        versions["ai.onnx.ml"] = max(versions["ai.onnx.ml"], ML_OPSET)
    del graph_model.opset_import[:]
    graph_model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())


def _mean_of_parts(graph_model: Any, parts: Sequence[tuple[str, int]], output: str) -> None:
    """``output`` = the mean over every member: the parts' means (each an output of the graph)
    weighted by their member counts (a member chosen k times is held k times), in place of the
    parts' outputs."""
    from onnx import TensorProto, helper

    g = graph_model.graph
    total = sum(n for _, n in parts)
    weighted = []
    for name, n in parts:
        g.initializer.append(helper.make_tensor(f"{name}_share", TensorProto.FLOAT, [], [n / total]))
        g.node.append(helper.make_node("Mul", [name, f"{name}_share"], [f"{name}_weighted"]))
        weighted.append(f"{name}_weighted")
    g.node.append(helper.make_node("Sum", weighted, [output]))
    names = {name for name, _ in parts}
    shape = next(o for o in g.output if o.name == parts[-1][0]).type
    kept = [o for o in g.output if o.name not in names]
    del g.output[:]
    g.output.extend(kept)
    out = helper.make_empty_tensor_value_info(output)
    out.type.CopyFrom(shape)
    g.output.append(out)
