"""A model file as one ONNX graph: raw feature rows in, class probabilities or values out.

The graph takes ``features``, float32 ``[N, n_features]`` raw rows (N dynamic), standardises them
with the model file's scaler inside the graph, runs the model and returns ``probabilities``
``[N, n_classes]`` (a classifier: the softmax of its logits or log-probabilities, in the model
file's class order) or ``values`` ``[N]`` (a regressor: in the target's units), what ``hpo
predict`` computes from the same rows. Torch families (``mlp``, ``torch``) export through
``torch.onnx.export`` (its default exporter, ``torch.export`` and onnxscript); a scikit-learn
estimator through skl2onnx where it converts, with the scaler as a ``StandardScaler`` step and a
regressor's target standardisation undone by two nodes after it; an estimator skl2onnx cannot
convert gets one line saying so. An ensemble (``[stages.final] ensemble = true``) is one graph
too, averaging its members' probabilities or values inside it: the torch members in the exported
module, scikit-learn members as a soft ``VotingClassifier`` or a ``VotingRegressor`` set up from
the fitted members. The optional packages come with ``pip install 'hpo[onnx]'``.

A model of a table with categorical, date-time or incomplete columns (model file format 5) is
exported from raw rows instead, one input per column (:mod:`hpo.onnx_raw`).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpo.errors import ConfigError
from hpo.model_file import ModelFile
from hpo.onnx_trees import is_hist_gradient_boosting
from hpo.tasks import Regression

INPUT = "features"
OPSET = 18


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"ONNX export needs {', '.join(missing)}; install them with: pip install 'hpo[onnx]'"
        )


class _Deployed(nn.Module):
    """Scaler, model (or an ensemble's members) and the task's output transform as one module
    (what the graph computes): a classifier's probabilities (an ensemble's: the members' mean),
    a regressor's value in the target's units (an ensemble's: the members' mean)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, members: Sequence[nn.Module], model_file: ModelFile) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("mean", torch.as_tensor(model_file.scaler_mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(model_file.scaler_scale, dtype=torch.float32))
        task = model_file.task_of()
        self.regression = isinstance(task, Regression)
        self.target_mean = float(task.mean) if isinstance(task, Regression) else 0.0
        self.target_std = float(task.std) if isinstance(task, Regression) else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - self.mean) / self.scale
        outs = [member(scaled).float() for member in self.members]
        if self.regression:
            value = torch.stack([o[:, 0] for o in outs]).mean(dim=0)
            return value * self.target_std + self.target_mean
        return torch.stack([torch.softmax(o, dim=1) for o in outs]).mean(dim=0)


def export(model_file: ModelFile, out: Path, *, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``model_file``'s model as an ONNX graph to ``out``; what it wrote."""
    task = model_file.task_of()
    output = "values" if isinstance(task, Regression) else "probabilities"
    models = model_file.models(trusted=trusted)
    if model_file.preprocessor is not None:  # a table's raw columns in (hpo.onnx_raw)
        from hpo.onnx_raw import export_raw

        _require("onnx", "onnxscript")
        written = export_raw(model_file, models, output, out)
        return {
            "path": str(out),
            "family": ", ".join(dict.fromkeys(c.family for c in model_file.configs())),
            "members": len(models),
            "input": ", ".join(written["inputs"]),
            "output": f"{output} float32 "
            + ("[N]" if output == "values" else f"[N, {len(model_file.class_names)}]"),
        }
    n_features = len(model_file.feature_names)
    if all(isinstance(m, nn.Module) for m in models):
        _require("onnx", "onnxscript")
        _torch_graph(_Deployed(models, model_file).eval(), n_features, output, out)
    elif all(is_hist_gradient_boosting(m) for m in models):  # not skl2onnx: hpo.onnx_trees says why
        _require("onnx")
        _trees_graph(models, model_file, n_features, output, out)
    else:
        _require("onnx", "skl2onnx")
        _sklearn_graph(_voting(models, model_file), model_file, n_features, output, out)
    return {
        "path": str(out),
        "family": ", ".join(dict.fromkeys(c.family for c in model_file.configs())),
        "members": len(models),
        "input": f"{INPUT} float32 [N, {n_features}]",
        "output": f"{output} float32 "
        + ("[N]" if output == "values" else f"[N, {len(model_file.class_names)}]"),
    }


def _torch_graph(module: nn.Module, n_features: int, output: str, out: Path) -> None:
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("N")
    with tempfile.TemporaryDirectory() as tmp:
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT],
            output_names=[output],
            dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            artifacts_dir=tmp,
        )
    assert program is not None
    program.save(str(out), external_data=False)


def _voting(estimators: Sequence[Any], model_file: ModelFile) -> Any:
    """One estimator, or an ensemble's fitted members as scikit-learn's soft ``VotingClassifier``
    or ``VotingRegressor`` (set up as fitted: skl2onnx converts both), whose outputs are the
    members' mean probabilities or values, what :meth:`hpo.tasks.Task.combine` computes."""
    if len(estimators) == 1:
        return estimators[0]
    from sklearn.base import is_classifier
    from sklearn.ensemble import VotingClassifier, VotingRegressor
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import Bunch

    named = [(f"member{i}", e) for i, e in enumerate(estimators)]
    voting: Any
    if is_classifier(estimators[0]):
        classes = np.arange(len(model_file.class_names))
        for e in estimators:
            if not np.array_equal(np.asarray(e.classes_), classes):
                raise ConfigError(
                    f"a member of this ensemble ({type(e).__name__}) was fitted on "
                    f"{len(e.classes_)} of the {len(classes)} classes; its ONNX graph cannot "
                    "give every class a probability"
                )
        voting = VotingClassifier(named, voting="soft", flatten_transform=False)
        voting.le_ = LabelEncoder().fit(classes)
        voting.classes_ = voting.le_.classes_
    else:
        voting = VotingRegressor(named)
    voting.estimators_ = list(estimators)
    voting.named_estimators_ = Bunch(**dict(named))
    return voting


def _trees_graph(
    models: Sequence[Any], model_file: ModelFile, n_features: int, output: str, out: Path
) -> None:
    """HistGradientBoosting members behind the standardisation, written by :mod:`hpo.onnx_trees`."""
    import onnx
    from onnx import TensorProto, helper

    from hpo.onnx_trees import ML_OPSET, append_graph

    task = model_file.task_of()
    regression = task if isinstance(task, Regression) else None
    n_classes = len(model_file.class_names)
    mean = np.asarray(model_file.scaler_mean, dtype=np.float32)
    scale = np.asarray(model_file.scaler_scale, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Sub", [INPUT, "hpo_mean"], ["hpo_centred"]),
            helper.make_node("Div", ["hpo_centred", "hpo_scale"], ["hpo_features"]),
        ],
        "hpo",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [
            helper.make_tensor_value_info(
                output, TensorProto.FLOAT, ["N"] if regression is not None else ["N", n_classes]
            )
        ],
        initializer=[
            helper.make_tensor("hpo_mean", TensorProto.FLOAT, [n_features], mean.tolist()),
            helper.make_tensor("hpo_scale", TensorProto.FLOAT, [n_features], scale.tolist()),
        ],
    )
    append_graph(graph, models, "hpo_features", output, n_classes=n_classes, regression=regression)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    )
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())


def _sklearn_graph(estimator: Any, model_file: ModelFile, n_features: int, output: str, out: Path) -> None:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.base import is_classifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    name = type(estimator).__name__
    n_classes = len(model_file.class_names)
    check_every_class(estimator, n_classes)
    scaler = StandardScaler()
    scaler.mean_ = np.asarray(model_file.scaler_mean, dtype=np.float64)
    scaler.scale_ = np.asarray(model_file.scaler_scale, dtype=np.float64)
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = n_features
    pipeline = Pipeline([("scaler", scaler), ("model", estimator)])
    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        graph = convert_sklearn(
            pipeline,
            initial_types=[(INPUT, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=OPSET,
        )
    except Exception as exc:  # skl2onnx raises several types for an unsupported estimator
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"this {name} cannot be exported to ONNX by skl2onnx ({first[:160]})") from None
    sklearn_output(graph, estimator, model_file, output)
    g = graph.graph
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # the rows, as the torch graphs name them
    onnx.checker.check_model(graph)
    out.write_bytes(graph.SerializeToString())


def sklearn_output(graph: Any, estimator: Any, model_file: ModelFile, output: str) -> None:
    """Give skl2onnx's graph hpo's one output: ``probabilities`` in the model file's class
    order, or a regressor's ``values`` in the target's units."""
    import onnx
    from onnx import helper
    from sklearn.base import is_classifier

    n_classes = len(model_file.class_names)
    g = graph.graph
    produced = "skl2onnx_" + next(o.name for o in g.output if o.name != "label")
    for node in g.node:  # free the output's name for the graph's own
        node.input[:] = ["skl2onnx_" + i if i == produced[9:] else i for i in node.input]
        node.output[:] = ["skl2onnx_" + o if o == produced[9:] else o for o in node.output]
    if is_classifier(estimator):  # its classes_ are the class indices 0..n-1, sorted: file order
        g.node.append(helper.make_node("Identity", [produced], [output]))
        shape: list[str | int] = ["N", n_classes]
    else:
        task = model_file.task_of()
        assert isinstance(task, Regression)
        g.initializer.extend(
            [
                helper.make_tensor("hpo_std", onnx.TensorProto.FLOAT, [], [float(task.std)]),
                helper.make_tensor("hpo_mean", onnx.TensorProto.FLOAT, [], [float(task.mean)]),
                helper.make_tensor("hpo_flat", onnx.TensorProto.INT64, [1], [-1]),
            ]
        )
        g.node.extend(
            [
                helper.make_node("Reshape", [produced, "hpo_flat"], ["hpo_values_std"]),
                helper.make_node("Mul", ["hpo_values_std", "hpo_std"], ["hpo_values_scaled"]),
                helper.make_node("Add", ["hpo_values_scaled", "hpo_mean"], [output]),
            ]
        )
        shape = ["N"]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape))


def check_every_class(estimator: Any, n_classes: int) -> None:
    """A classifier's graph must give every class of the task a probability: one line where the
    estimator was fitted on fewer (a class absent from its training rows)."""
    from sklearn.base import is_classifier

    if is_classifier(estimator) and len(estimator.classes_) != n_classes:
        raise ConfigError(
            f"this {type(estimator).__name__} was fitted on {len(estimator.classes_)} of the {n_classes} "
            "classes; its ONNX graph cannot give every class a probability"
        )
