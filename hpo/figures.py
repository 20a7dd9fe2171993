"""Plotly figures for the data and for every stage, built from what the storage holds.

Pure functions: they take arrays or Optuna trials and return ``(figure_id, figure)`` pairs; the
dashboard module saves them into studies, the report module embeds them in one HTML page.
Figures carry precomputed summaries (histogram counts, box-plot quartiles), never raw rows, so
they stay small for any dataset size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.subplots import make_subplots

from hpo import data

Figure = tuple[str, go.Figure]  # (id usable as an HTML id, figure)

TIMBRE_AVERAGES = 12
SELECTED = "#d62728"
OTHER = "#1f77b4"
_LAYOUT: dict[str, Any] = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}}


def _fig(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, **{**_LAYOUT, **layout})
    return fig


# --------------------------------------------------------------------------- data


def feature_names() -> list[str]:
    avg = [f"timbre_avg_{i + 1}" for i in range(TIMBRE_AVERAGES)]
    cov = [f"timbre_cov_{i + 1}_{j + 1}" for i in range(TIMBRE_AVERAGES) for j in range(i, TIMBRE_AVERAGES)]
    return avg + cov


def data_figures(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.integer[Any]],
    *,
    splits: Mapping[str, npt.NDArray[np.integer[Any]]] | None = None,
    bins: int = 60,
) -> list[Figure]:
    """Decade distribution (overall and per split), histograms and box plots of the 12 timbre
    averages, and the correlation heatmap of all 90 features."""
    out: list[Figure] = []
    names = list(data.CLASS_NAMES)
    counts = np.bincount(labels, minlength=data.N_CLASSES)
    fig = _fig("Songs per decade", xaxis_title="decade", yaxis_title="songs", barmode="group")
    share = counts / max(int(counts.sum()), 1)
    fig.add_bar(
        x=names,
        y=counts,
        name="all rows",
        text=[f"{s:.1%}" for s in share],
        textposition="outside",
        textfont={"size": 11},
        cliponaxis=False,
    )
    for part, idx in (splits or {}).items():
        c = np.bincount(labels[idx], minlength=data.N_CLASSES)
        fig.add_bar(x=names, y=c, name=part)
    out.append(("data-decades", fig))

    avg = np.asarray(features[:, :TIMBRE_AVERAGES], dtype=np.float64)
    titles = [f"timbre avg {i + 1}" for i in range(TIMBRE_AVERAGES)]
    hist = make_subplots(rows=3, cols=4, subplot_titles=titles)
    box = make_subplots(rows=2, cols=6, subplot_titles=titles)
    for i in range(TIMBRE_AVERAGES):
        col = avg[:, i]
        lo, hi = np.percentile(col, [0.1, 99.9])
        h, edges = np.histogram(np.clip(col, lo, hi), bins=bins, range=(lo, hi))
        centers = (edges[:-1] + edges[1:]) / 2
        hist.add_trace(
            go.Bar(x=centers, y=h, width=float(edges[1] - edges[0]), marker_color=OTHER, showlegend=False),
            row=i // 4 + 1,
            col=i % 4 + 1,
        )
        q1, med, q3 = np.percentile(col, [25, 50, 75])
        iqr = q3 - q1
        lower = float(col[col >= q1 - 1.5 * iqr].min())
        upper = float(col[col <= q3 + 1.5 * iqr].max())
        outside = col[(col < lower) | (col > upper)]
        box.add_trace(
            go.Box(
                q1=[q1],
                median=[med],
                q3=[q3],
                lowerfence=[lower],
                upperfence=[upper],
                name=f"{i + 1}",
                marker_color=OTHER,
                showlegend=False,
                hovertext=f"{outside.size} outliers ({outside.size / col.size:.2%})",
            ),
            row=i // 6 + 1,
            col=i % 6 + 1,
        )
    hist.update_layout(title="Timbre averages: histograms (0.1-99.9 percentile range)", height=650, **_LAYOUT)
    box.update_layout(title="Timbre averages: box plots (whiskers at 1.5 IQR)", height=550, **_LAYOUT)
    box.update_xaxes(showticklabels=False)
    out += [("data-histograms", hist), ("data-boxplots", box)]

    rng = np.random.default_rng(0)
    rows = rng.choice(features.shape[0], size=min(features.shape[0], 100_000), replace=False)
    corr = np.corrcoef(np.asarray(features[np.sort(rows)], dtype=np.float64), rowvar=False)
    fn = feature_names()[: features.shape[1]]
    heat = _fig("Feature correlation (Pearson, 90 features)", height=750, width=800)
    heat.add_heatmap(z=np.round(corr, 3), x=fn, y=fn, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True)
    heat.update_yaxes(autorange="reversed", showticklabels=False)
    heat.update_xaxes(showticklabels=False)
    out.append(("data-correlation", heat))
    return out


# --------------------------------------------------------------------------- stages


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def _history(t: optuna.trial.FrozenTrial) -> list[dict[str, float]]:
    return list(t.user_attrs.get("history", []))


def baseline_figures(study: optuna.Study) -> list[Figure]:
    trials = _complete(study)
    chosen = study.user_attrs.get("selected", {}).get("architecture")
    archs = [str(t.params["architecture"]) for t in trials]
    bar = _fig("Baselines: validation loss per architecture (lowest wins)", yaxis_title="validation loss")
    bar.add_bar(
        x=archs,
        y=[t.value for t in trials],
        marker_color=[SELECTED if a == chosen else OTHER for a in archs],
        text=[f"{t.value:.4f}" for t in trials],
        textposition="outside",
    )
    curves = _fig(
        "Baselines: validation loss during training", xaxis_title="step", yaxis_title="validation loss"
    )
    for a, t in zip(archs, trials, strict=True):
        h = _history(t)
        curves.add_scatter(
            x=[r["step"] for r in h], y=[r["val_loss"] for r in h], mode="lines+markers", name=a
        )
    return [("baseline-val-loss", bar), ("baseline-curves", curves)]


def lr_range_figures(study: optuna.Study) -> list[Figure]:
    (trial,) = _complete(study)[-1:]
    curve = trial.user_attrs["curve"]
    pick = float(trial.user_attrs["suggested_lr"])
    chosen = float(study.user_attrs.get("selected", {}).get("lr", pick))
    fig = _fig("LR range test: smoothed training loss", xaxis_title="learning rate", yaxis_title="loss")
    fig.update_xaxes(type="log")
    fig.add_scatter(x=curve["lr"], y=curve["loss"], mode="lines", name="smoothed loss")
    lrs = np.asarray(curve["lr"])
    at = int(np.argmin(np.abs(np.log(lrs) - np.log(pick)))) if lrs.size else 0
    if lrs.size:
        fig.add_scatter(
            x=[pick],
            y=[curve["loss"][at]],
            mode="markers",
            marker={"color": SELECTED, "size": 12},
            name=f"steepest descent: {pick:.3g}",
        )
    fig.add_vline(x=chosen, line_dash="dash", line_color=SELECTED, annotation_text=f"selected {chosen:.3g}")
    return [
        ("lr-range-curve", fig),
        ("lr-range-verification", _learning_curves(trial, "LR verification run")),
    ]


def weight_decay_figures(study: optuna.Study) -> list[Figure]:
    trials = sorted(_complete(study), key=lambda t: float(t.params["weight_decay"]))
    chosen = study.user_attrs.get("selected", {}).get("weight_decay")
    labels = [f"{float(t.params['weight_decay']):g}" for t in trials]
    fig = _fig(
        "Weight decay: cross-validated accuracy (mean ± std, folds as dots)",
        xaxis_title="weight decay",
        yaxis_title="validation accuracy",
    )
    fig.add_scatter(
        x=labels,
        y=[t.user_attrs["mean"] for t in trials],
        error_y={"type": "data", "array": [t.user_attrs["std"] for t in trials]},
        mode="markers+lines",
        marker={
            "size": 12,
            "color": [SELECTED if t.params["weight_decay"] == chosen else OTHER for t in trials],
        },
        name="mean",
    )
    for k in range(max((len(t.user_attrs.get("fold_scores", [])) for t in trials), default=0)):
        fig.add_scatter(
            x=labels,
            y=[
                t.user_attrs["fold_scores"][k] if k < len(t.user_attrs["fold_scores"]) else None
                for t in trials
            ],
            mode="markers",
            marker={"size": 6, "opacity": 0.6, "color": "gray"},
            name="single folds",
            legendgroup="folds",
            showlegend=k == 0,
        )
    fig.update_xaxes(type="category")
    return [("weight-decay-cv", fig)]


def sweep_figures(study: optuna.Study, sweep: str) -> list[Figure]:
    trials = _complete(study)
    chosen = study.user_attrs.get("selected", {}).get(sweep)
    choices = [str(t.params[sweep]) for t in trials]
    bar = _fig(f"Component sweep '{sweep}': peak validation accuracy", yaxis_title="peak validation accuracy")
    values = [float(t.value or 0.0) for t in trials]
    bar.add_bar(
        x=choices,
        y=values,
        marker_color=[SELECTED if c == chosen else OTHER for c in choices],
        text=[f"{v:.4f}" for v in values],
        textposition="outside",
    )
    if values:
        spread = max(values) - min(values)
        bar.update_yaxes(range=[min(values) - max(spread, 0.005) * 2, max(values) + max(spread, 0.005)])
    curves = _fig(f"Component sweep '{sweep}': validation accuracy per epoch", xaxis_title="epoch")
    for c, t in zip(choices, trials, strict=True):
        h = _history(t)
        curves.add_scatter(x=[r["epoch"] for r in h], y=[r["val_accuracy"] for r in h], mode="lines", name=c)
    return [(f"sweep-{sweep}-bar", bar), (f"sweep-{sweep}-curves", curves)]


def _learning_curves(trial: optuna.trial.FrozenTrial, title: str) -> go.Figure:
    h = _history(trial)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    x = [r["epoch"] for r in h]
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for part, dash in (("train", "dot"), ("val", "solid")):
            fig.add_trace(
                go.Scatter(
                    x=x, y=[r[f"{part}_{metric}"] for r in h], name=f"{part} {metric}", line={"dash": dash}
                ),
                row=1,
                col=col,
            )
    best = trial.user_attrs.get("best_epoch")
    if best is not None:
        for col in (1, 2):
            fig.add_vline(x=best, line_dash="dash", line_color=SELECTED, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title, height=420, **_LAYOUT)
    return fig


def final_figures(study: optuna.Study) -> list[Figure]:
    (trial,) = _complete(study)[-1:]
    m = trial.user_attrs["test_metrics"]
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
    conf.update_xaxes(title="predicted decade")
    conf.update_yaxes(title="true decade", autorange="reversed")
    scores = _fig("Test scores per decade", barmode="group", yaxis_title="score")
    for metric in ("precision", "recall", "f1-score"):
        scores.add_bar(x=names, y=[m["per_class"][n][metric] for n in names], name=metric)
    scores.add_scatter(
        x=names,
        y=[m["per_class"][n]["support"] for n in names],
        name="support (songs)",
        yaxis="y2",
        mode="markers",
        marker={"color": "black", "symbol": "diamond"},
    )
    scores.update_layout(yaxis2={"overlaying": "y", "side": "right", "type": "log", "title": "support"})
    return [
        ("final-learning-curves", _learning_curves(trial, "Final run: learning curves (dashed: best epoch)")),
        ("final-confusion", conf),
        ("final-per-decade", scores),
    ]


def stage_figures(stage: str, study: optuna.Study, *, sweep: str | None = None) -> list[Figure]:
    if stage == "components":
        assert sweep is not None
        return sweep_figures(study, sweep)
    builders = {
        "baseline": baseline_figures,
        "lr_range": lr_range_figures,
        "weight_decay": weight_decay_figures,
        "final": final_figures,
    }
    return builders[stage](study)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def stage_note(study: optuna.Study, *, seconds: float | None = None) -> str:
    """A short markdown note: what was selected, why, and the resulting configuration."""
    attrs = study.user_attrs
    lines = [f"## {study.study_name}", ""]
    selected: Mapping[str, Any] = attrs.get("selected", {})
    lines += [f"**Selected:** {', '.join(f'{k} = {_fmt(v)}' for k, v in selected.items())}", ""]
    lines += [f"**Why:** {attrs.get('selection_reason', '')}", ""]
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    lines += [f"**Trials:** {n} complete" + (f", {seconds:.0f} s" if seconds is not None else ""), ""]
    cfg: Mapping[str, Any] = attrs.get("config_out", {})
    if cfg:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"
