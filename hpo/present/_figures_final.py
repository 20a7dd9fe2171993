"""The final stage's test-set figures (:mod:`hpo.present.figures`): learning curves, the members
beside the ensemble, the confusion matrix and per-class scores of a classifier, predicted against
true and the residuals of a regressor; and the test recall of several pipelines side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from hpo.present._figures_common import OTHER, SELECTED, Figure, _complete, _fig, _prefix, learning_curves
from hpo.tasks import CLASSIFICATION, task_kind
from hpo.tuning import records


def regression_figures(m: Mapping[str, Any], prefix: str) -> list[Figure]:
    """Predicted against true values on the test rows (a 2-D histogram: counts per cell) and the
    residuals' distribution, from the binned summaries the final stage stores."""
    scatter = m["scatter"]
    edges = np.asarray(scatter["edges"], dtype=np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    counts = np.asarray(scatter["counts"], dtype=np.float64)  # [true bin, predicted bin]
    truth = _fig("Test rows: predicted against true (rows per cell)", height=600, width=680)
    truth.add_heatmap(
        x=centers,
        y=centers,
        z=np.where(counts > 0, counts, np.nan).T,
        colorscale="Blues",
        colorbar={"title": "rows"},
    )
    truth.add_scatter(
        x=[edges[0], edges[-1]],
        y=[edges[0], edges[-1]],
        mode="lines",
        name="predicted = true",
        line={"dash": "dash", "color": SELECTED},
    )
    truth.update_xaxes(title="true value")
    truth.update_yaxes(title="predicted value")
    res = m["residuals"]
    r_edges = np.asarray(res["edges"], dtype=np.float64)
    residuals = _fig(
        f"Test residuals (predicted - true): RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}",
        xaxis_title="residual",
        yaxis_title="rows",
    )
    residuals.add_bar(
        x=(r_edges[:-1] + r_edges[1:]) / 2,
        y=res["counts"],
        width=float(r_edges[1] - r_edges[0]),
        marker_color=OTHER,
    )
    residuals.add_vline(x=0, line_dash="dash", line_color=SELECTED)
    return [(f"{prefix}-predicted-vs-true", truth), (f"{prefix}-residuals", residuals)]


def final_figures(study: optuna.Study) -> list[Figure]:
    (trial,) = _complete(study)[-1:]
    m = trial.user_attrs[records.TEST_METRICS]
    p = _prefix(study)
    curves = (
        f"{p}-learning-curves",
        learning_curves(trial, "Final run: learning curves (dashed: best epoch)"),
    )
    members = _members_figure(trial, m, p)
    if not task_kind(str(m.get("task", CLASSIFICATION.name))).has_classes:
        return [curves, *members, *regression_figures(m, p)]
    names = list(m["per_class"])
    cm = np.asarray(m["confusion"], dtype=np.float64)
    row_share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    conf = _fig("Test confusion matrix (row-normalised; counts in cells)", height=600, width=700)
    conf.add_heatmap(
        z=np.round(row_share, 3),
        x=names,
        y=names,
        text=cm.astype(int),
        texttemplate="%{text}",
        colorscale="Blues",
        zmin=0,
        zmax=1,
    )
    conf.update_xaxes(title="predicted class", type="category")
    conf.update_yaxes(title="true class", autorange="reversed", type="category")
    scores = _fig("Test scores per class", barmode="group", yaxis_title="score")
    for metric in ("precision", "recall", "f1-score"):
        scores.add_bar(x=names, y=[m["per_class"][n][metric] for n in names], name=metric)
    scores.add_scatter(
        x=names,
        y=[m["per_class"][n]["support"] for n in names],
        name="support (rows)",
        yaxis="y2",
        mode="markers",
        marker={"color": "black", "symbol": "diamond"},
    )
    scores.update_xaxes(type="category")
    scores.update_layout(yaxis2={"overlaying": "y", "side": "right", "type": "log", "title": "support"})
    return [curves, *members, (f"{p}-confusion", conf), (f"{p}-per-class", scores)]


def _members_figure(trial: FrozenTrial, m: Mapping[str, Any], prefix: str) -> list[Figure]:
    """Where the final stage trained several models: each member's test headline beside the
    ensemble's (or their mean)."""
    per_seed = trial.user_attrs.get(records.SEED_TEST_METRICS)
    greedy = m.get("ensemble") == "greedy"
    if greedy:  # a greedy ensemble's members: trials of the library, with their weights
        per_seed = m["member_figures"]
    if not per_seed:
        return []
    key = task_kind(str(m.get("task", CLASSIFICATION.name))).default_metric
    what = "the ensemble" if m.get("ensemble") else "their mean"
    fig = _fig(f"Test {key}: each model and {what}", xaxis_title="model", yaxis_title=f"test {key}")
    fig.add_bar(
        x=[
            f"{x['stage']} trial {x['trial']} (x{x['weight']}"
            + (f", {x['family'].split()[1].strip(chr(34))}" if "family" in x else "")
            + ")"
            if greedy
            else f"member {i}"
            for i, x in enumerate(per_seed)
        ],
        y=[float(x[key]) for x in per_seed],
        marker_color=OTHER,
        name="members",
    )
    fig.add_hline(y=float(m[key]), line_dash="dash", line_color=SELECTED, annotation_text=what)
    fig.update_xaxes(type="category")
    return [(f"{prefix}-members", fig)]


def recall_comparison(recalls: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Per-class test recall of several pipelines, side by side."""
    fig = _fig("Test recall per class", barmode="group", yaxis_title="recall")
    for name, by_class in recalls.items():
        fig.add_bar(x=list(by_class), y=list(by_class.values()), name=name)
    fig.update_xaxes(type="category")
    return fig
