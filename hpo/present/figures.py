"""Plotly figures for the data and for every stage kind, built from what the storage holds.

Pure functions: they take arrays or Optuna studies and return ``(figure_id, figure)`` pairs; the
dashboard module saves them into studies, the report embeds them in one HTML page. Figures carry
precomputed summaries (histogram counts, box-plot quartiles), never raw rows, so they stay small
for any dataset size. Figure ids are namespaced by stage name so a pipeline's ids never collide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from hpo.tuning import records

Figure = tuple[str, go.Figure]  # (id usable as an HTML id, figure)

SELECTED = "#d62728"
OTHER = "#1f77b4"
PRUNED = "#ff7f0e"
_LAYOUT: dict[str, Any] = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}}
_SUBTITLED = {"margin": {**_LAYOUT["margin"], "t": 90}}  # a title with a second line


def _fig(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, **{**_LAYOUT, **layout})
    return fig


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


# --------------------------------------------------------------------------- data


def target_figure(
    targets: npt.NDArray[np.floating[Any]],
    *,
    name: str,
    splits: Mapping[str, npt.NDArray[np.integer[Any]]] | None = None,
    bins: int = 60,
) -> go.Figure:
    """A regression target's distribution, overall and per split (shares of each part's rows)."""
    values = np.asarray(targets, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    fig = _fig(
        f"Target {name}: distribution", xaxis_title=name, yaxis_title="share of rows", barmode="overlay"
    )
    for part, idx in {"all rows": np.arange(values.size), **(splits or {})}.items():
        h, edges = np.histogram(values[idx], bins=bins, range=(lo, hi))
        centers = (edges[:-1] + edges[1:]) / 2
        fig.add_scatter(x=centers, y=h / max(int(h.sum()), 1), mode="lines", name=part, line={"shape": "hvh"})
    return fig


def data_figures(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.integer[Any]],
    *,
    class_names: Sequence[str],
    feature_names: Sequence[str],
    shown: Sequence[str],
    splits: Mapping[str, npt.NDArray[np.integer[Any]]] | None = None,
    bins: int = 60,
    targets: npt.NDArray[np.floating[Any]] | None = None,
    target_name: str = "target",
) -> list[Figure]:
    """Class counts (overall and per split), or a regression target's distribution (``targets``),
    histograms and box plots of the ``shown`` features, and the correlation heatmap of all
    features."""
    rest = _feature_figures(features, feature_names=feature_names, shown=shown, bins=bins)
    if targets is not None:
        return [("data-target", target_figure(targets, name=target_name, splits=splits, bins=bins)), *rest]
    out: list[Figure] = []
    names = list(class_names)
    counts = np.bincount(labels, minlength=len(names))
    fig = _fig("Rows per class", xaxis_title="class", yaxis_title="rows", barmode="group")
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
        c = np.bincount(labels[idx], minlength=len(names))
        fig.add_bar(x=names, y=c, name=part)
    out.append(("data-classes", fig))
    return out + rest


def _feature_figures(
    features: npt.NDArray[np.float32], *, feature_names: Sequence[str], shown: Sequence[str], bins: int
) -> list[Figure]:
    """Histograms and box plots of the ``shown`` features, and the correlation heatmap."""
    out: list[Figure] = []
    columns = [list(feature_names).index(f) for f in shown]
    n = len(columns)
    cols = 4 if n > 4 else n
    rows = (n + cols - 1) // cols
    hist = make_subplots(rows=rows, cols=cols, subplot_titles=list(shown))
    box_cols = 6 if n > 6 else n
    box_rows = (n + box_cols - 1) // box_cols
    box = make_subplots(rows=box_rows, cols=box_cols, subplot_titles=list(shown))
    for i, j in enumerate(columns):
        col = np.asarray(features[:, j], dtype=np.float64)
        col = col[~np.isnan(col)]  # a table's empty cells: the filled ones are shown
        if col.size == 0:
            col = np.zeros(1)
        lo, hi = np.percentile(col, [0.1, 99.9])
        if hi <= lo:
            hi = lo + 1.0
        h, edges = np.histogram(np.clip(col, lo, hi), bins=bins, range=(lo, hi))
        centers = (edges[:-1] + edges[1:]) / 2
        hist.add_trace(
            go.Bar(x=centers, y=h, width=float(edges[1] - edges[0]), marker_color=OTHER, showlegend=False),
            row=i // cols + 1,
            col=i % cols + 1,
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
            row=i // box_cols + 1,
            col=i % box_cols + 1,
        )
    hist.update_layout(
        title="Features: histograms (0.1-99.9 percentile range)", height=220 * rows + 100, **_LAYOUT
    )
    box.update_layout(
        title="Features: box plots (whiskers at 1.5 IQR)", height=250 * box_rows + 100, **_LAYOUT
    )
    box.update_xaxes(showticklabels=False)
    out += [("data-histograms", hist), ("data-boxplots", box)]

    rng = np.random.default_rng(0)
    picked = rng.choice(features.shape[0], size=min(features.shape[0], 100_000), replace=False)
    x = np.asarray(features[np.sort(picked)], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if np.isnan(x).any():  # empty cells: each pair over the rows where both are filled
            import pandas as pd

            corr = np.nan_to_num(pd.DataFrame(x).corr().to_numpy(), nan=0.0)
        else:
            corr = np.nan_to_num(np.corrcoef(x, rowvar=False), nan=0.0)
    fn = list(feature_names)
    heat = _fig(f"Feature correlation (Pearson, {len(fn)} features)", height=750, width=800)
    heat.add_heatmap(z=np.round(corr, 3), x=fn, y=fn, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True)
    heat.update_yaxes(autorange="reversed", showticklabels=len(fn) <= 40)
    heat.update_xaxes(showticklabels=len(fn) <= 40)
    out.append(("data-correlation", heat))
    return out


# --------------------------------------------------------------------------- stages


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def _history(t: FrozenTrial) -> list[dict[str, float]]:
    return list(t.user_attrs.get(records.HISTORY, []))


def _score_name(history: Sequence[Mapping[str, float]]) -> str:
    """The metric a history's records carry besides the loss (accuracy, rmse)."""
    for key in history[0] if history else ():
        if key.startswith("val_") and key != "val_loss":
            return key[len("val_") :]
    return "accuracy"


def _selected(study: optuna.Study) -> dict[str, Any]:
    selection = records.read_selection(study.user_attrs)
    return selection.selected if selection else {}


def _prefix(study: optuna.Study) -> str:
    return _slug(str(study.user_attrs.get(records.STAGE, study.study_name)))


def baseline_figures(study: optuna.Study) -> list[Figure]:
    trials = _complete(study)
    chosen = _selected(study).get("architecture")
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
    p = _prefix(study)
    return [(f"{p}-val-loss", bar), (f"{p}-curves", curves)]


def lr_range_figures(study: optuna.Study) -> list[Figure]:
    (trial,) = _complete(study)[-1:]
    curve = trial.user_attrs[records.CURVE]
    pick = float(trial.user_attrs[records.SUGGESTED_LR])
    chosen = float(_selected(study).get("lr", pick))
    fig = _fig("LR range test: smoothed training loss", xaxis_title="learning rate", yaxis_title="loss")
    fig.update_xaxes(type="log")
    fig.add_scatter(x=curve["lr"], y=curve["loss"], mode="lines", name="smoothed loss")
    lrs = np.asarray(curve["lr"])
    if lrs.size and np.isfinite(pick) and pick > 0:
        at = int(np.argmin(np.abs(np.log(lrs) - np.log(pick))))
        fig.add_scatter(
            x=[pick],
            y=[curve["loss"][at]],
            mode="markers",
            marker={"color": SELECTED, "size": 12},
            name=f"steepest descent: {pick:.3g}",
        )
    fig.add_vline(x=chosen, line_dash="dash", line_color=SELECTED, annotation_text=f"selected {chosen:.3g}")
    p = _prefix(study)
    return [(f"{p}-curve", fig), (f"{p}-verification", learning_curves(trial, "LR verification run"))]


def grid_cv_figures(
    study: optuna.Study, settings: Sequence[str], *, metric: str, folds: int = 0, fold_curves: bool = False
) -> list[Figure]:
    """The cross-validated score of every grid point (mean ± std, folds as dots); points the
    pruner stopped between folds are marked at the mean of the folds they ran. ``fold_curves``
    (a stage that prunes): each point's score fold by fold, as the pruner saw it."""
    chosen = _selected(study)
    trials = sorted(_finished(study), key=lambda t: [t.params[s] for s in settings])
    labels = [", ".join(f"{t.params[s]}" for s in settings) for t in trials]
    name = metric.replace("_", " ")
    fig = _fig(
        f"{' x '.join(settings)}: cross-validated {name} (mean ± std, folds as dots)",
        xaxis_title=" x ".join(settings),
        yaxis_title=f"validation {name}",
    )
    done = [(lab, t) for lab, t in zip(labels, trials, strict=True) if t.state == TrialState.COMPLETE]
    fig.add_scatter(
        x=[lab for lab, _ in done],
        y=[t.user_attrs[records.MEAN] for _, t in done],
        error_y={"type": "data", "array": [t.user_attrs[records.STD] for _, t in done]},
        mode="markers+lines",
        marker={
            "size": 12,
            "color": [SELECTED if _is_chosen(t, chosen, settings) else OTHER for _, t in done],
        },
        name="mean",
    )
    stopped = [(lab, t) for lab, t in zip(labels, trials, strict=True) if t.state == TrialState.PRUNED]
    shown = [(lab, t, _fold_scores(t)) for lab, t in stopped]
    shown = [(lab, t, scores) for lab, t, scores in shown if scores]
    if shown:
        of = f" of {folds}" if folds else ""
        fig.add_scatter(
            x=[lab for lab, _, _ in shown],
            y=[float(np.mean(scores)) for _, _, scores in shown],
            mode="markers",
            marker={"size": 12, "color": PRUNED, "symbol": "x"},
            name="pruned (mean of its folds)",
            text=[f"pruned after fold {len(scores)}{of}" for _, _, scores in shown],
            hovertemplate="%{x}: %{y:.4f}<br>%{text}<extra></extra>",
        )
    per_trial = [(lab, _fold_scores(t)) for lab, t in zip(labels, trials, strict=True)]
    for k in range(max((len(scores) for _, scores in per_trial), default=0)):
        fig.add_scatter(
            x=labels,
            y=[scores[k] if k < len(scores) else None for _, scores in per_trial],
            mode="markers",
            marker={"size": 6, "opacity": 0.6, "color": "gray"},
            name="single folds",
            legendgroup="folds",
            showlegend=k == 0,
        )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels)
    out = [(f"{_prefix(study)}-cv", fig)]
    if fold_curves:
        curves = intermediate_figure(
            trials,
            title=f"{' x '.join(settings)}: validation {name} fold by fold, every point{_marks(False)}",
            y_title=f"validation {name}",
            unit="fold",
            shift=1,  # folds report steps 0, 1, ...: shown as folds 1, 2, ...
            label=lambda t: ", ".join(f"{t.params[s]}" for s in settings),
            chosen=lambda t: _is_chosen(t, chosen, settings),
        )
        out.append((f"{_prefix(study)}-folds", curves))
    return out


def _fold_scores(t: FrozenTrial) -> list[float]:
    return [float(v) for v in t.user_attrs.get(records.FOLD_SCORES, [])]


def sweep_figures(study: optuna.Study, setting: str, *, metric: str) -> list[Figure]:
    trials = _complete(study)
    chosen = _selected(study).get(setting)
    choices = [str(t.params[setting]) for t in trials]
    name = metric.replace("_", " ")
    bar = _fig(f"Sweep '{setting}': peak validation {name}", yaxis_title=f"peak validation {name}")
    values = [float(t.value or 0.0) for t in trials]
    bar.add_bar(
        x=choices,
        y=values,
        marker_color=[SELECTED if c == str(chosen) else OTHER for c in choices],
        text=[f"{v:.4f}" for v in values],
        textposition="outside",
    )
    if values:
        spread = max(values) - min(values)
        bar.update_yaxes(range=[min(values) - max(spread, 0.005) * 2, max(values) + max(spread, 0.005)])
    bar.update_xaxes(type="category")
    score = _score_name(_history(trials[0])) if trials else "accuracy"
    curves = _fig(f"Sweep '{setting}': validation {score} per epoch", xaxis_title="epoch")
    for c, t in zip(choices, trials, strict=True):
        h = _history(t)
        curves.add_scatter(
            x=[r["epoch"] for r in h], y=[r.get(f"val_{score}") for r in h], mode="lines+markers", name=c
        )
    p = _prefix(study)
    return [(f"{p}-bar", bar), (f"{p}-curves", curves)]


def search_figures(
    study: optuna.Study, space: Sequence[str], *, metric: str, rungs: Sequence[int] = ()
) -> list[Figure]:
    """A search's every trial, complete and pruned (these at their last reported value, marked,
    with the epoch where they stopped): its history, every trial's learning curve with the
    pruner's ``rungs`` (epochs; :func:`pruner_rungs`), the parameters' importances (fANOVA, over
    the complete trials) and parallel coordinates. Axes span the data, not a fixed range."""
    import optuna.visualization as vis

    p = _prefix(study)
    out = [(f"{p}-history", search_history(study, space, metric=metric, rungs=rungs))]
    trials = _finished(study)
    if trials:
        out.append((f"{p}-curves", search_curves(study, space, metric=metric, rungs=rungs)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) >= 2 and len(space) >= 2:
        try:
            name = metric.replace("_", " ")
            importance = vis.plot_param_importances(study, target_name=name)
            importance.update_layout(
                title="Search: parameter importances (fANOVA, complete trials)", **_LAYOUT
            )
            out.append((f"{p}-importance", importance))
        except (RuntimeError, ValueError):  # too few distinct values to rank
            pass
    if trials:
        out.append((f"{p}-parallel", search_parallel(study, space, metric=metric, rungs=rungs)))
    return out


# ----------------------------------------------------------------- every trial of a search


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials, by number."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)


def rung_steps(
    min_resource: int, reduction_factor: int, max_step: int, min_early_stopping_rate: int = 0
) -> list[int]:
    """The steps where successive halving compares trials: ``min_resource * reduction_factor **
    (min_early_stopping_rate + rung)`` for rungs 0, 1, ..., up to ``max_step``."""
    if min_resource < 1 or reduction_factor < 2:
        return []
    out: list[int] = []
    step = min_resource * reduction_factor**min_early_stopping_rate
    while step <= max_step:
        out.append(step)
        step *= reduction_factor
    return out


def pruner_rungs(pruner: optuna.pruners.BasePruner, max_step: int) -> list[int]:
    """The rungs (steps) of a successive-halving pruner, or of all of a Hyperband pruner's
    brackets (bracket ``b`` is successive halving with ``min_early_stopping_rate = b``, so their
    rungs together are every ``min_resource * reduction_factor ** k``), up to ``max_step``;
    none for other pruners, or before an "auto" resource is known."""
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        top = pruner._max_resource
        limit = min(max_step, top) if isinstance(top, int) else max_step
        return rung_steps(pruner._min_resource, pruner._reduction_factor, limit)
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        if pruner._min_resource is None:
            return []
        return rung_steps(
            pruner._min_resource, pruner._reduction_factor, max_step, pruner._min_early_stopping_rate
        )
    return []


def _fitted(values: Sequence[float | None], share: float = 0.05) -> list[float] | None:
    """An axis range around ``values``: their minimum and maximum, ``share`` of the span beyond
    each (of the value itself where all are equal); None without a finite value."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    pad = (hi - lo) * share if hi > lo else max(abs(hi) * share, 1e-3)
    return [lo - pad, hi + pad]


def _curve(t: FrozenTrial, metric: str) -> tuple[list[int], list[float]]:
    """A trial's intermediate values by step (what the pruner compared; a search reports its
    metric every epoch, the mean over seeds); without any, its history's ``val_<metric>``."""
    if t.intermediate_values:
        steps = sorted(t.intermediate_values)
        return steps, [float(t.intermediate_values[s]) for s in steps]
    key = f"val_{metric}"
    h = [r for r in _history(t) if key in r]
    return [int(r["epoch"]) for r in h], [float(r[key]) for r in h]


def _shown_value(t: FrozenTrial, metric: str) -> float | None:
    """A complete trial's value (its peak), a pruned one's last reported value."""
    if t.state == TrialState.COMPLETE:
        return t.value
    _, values = _curve(t, metric)
    return values[-1] if values else None


def _is_chosen(t: FrozenTrial, chosen: Mapping[str, Any], names: Sequence[str]) -> bool:
    return (
        t.state == TrialState.COMPLETE
        and bool(chosen)
        and all(n in chosen and t.params.get(n) == chosen[n] for n in names)
    )


def _stopped(t: FrozenTrial, metric: str, rungs: Sequence[int], unit: str = "epoch", shift: int = 0) -> str:
    """Where a trial ended: ``complete``, or ``pruned at epoch 3 (rung 1 of 2)``."""
    if t.state == TrialState.COMPLETE:
        return "complete"
    steps, _ = _curve(t, metric)
    if not steps:
        return "pruned before its first report"
    last = steps[-1]
    rung = f" (rung {list(rungs).index(last) + 1} of {len(rungs)})" if last in rungs else ""
    return f"pruned at {unit} {last + shift}{rung}"


def _marks(rungs: bool) -> str:
    """A curves figure's key, as a subtitle."""
    text = "orange, dotted: pruned (x where it stopped); red: selected"
    return f"<br><sup>{text}{'; dashed: the rungs of the pruner' if rungs else ''}</sup>"


def _hover(t: FrozenTrial, space: Sequence[str], name: str, value: float | None, stopped: str) -> str:
    lines = [f"trial {t.number}: {stopped}"]
    if value is not None:
        lines.append(f"{name} {value:.4f}")
    lines += [f"{n} = {_fmt(t.params[n])}" for n in space if n in t.params]
    return "<br>".join(lines)


def search_history(
    study: optuna.Study, space: Sequence[str], *, metric: str, rungs: Sequence[int] = ()
) -> go.Figure:
    """Every trial by number: complete ones at their peak validation score, pruned ones (marked)
    at their last reported value, the best so far of the complete ones as a line."""
    name = metric.replace("_", " ")
    chosen = _selected(study)
    shown = [(t, _shown_value(t, metric)) for t in _finished(study)]
    trials = [(t, v) for t, v in shown if v is not None]
    fig = _fig(
        f"Search: peak validation {name} by trial, every trial"
        "<br><sup>pruned (orange x): the last value reported before the pruner stopped it</sup>",
        xaxis_title="trial",
        yaxis_title=f"validation {name}",
        **_SUBTITLED,
    )

    def kind(t: FrozenTrial) -> str:
        if t.state == TrialState.PRUNED:
            return "pruned"
        return "selected" if _is_chosen(t, chosen, space) else "complete"

    groups = (("complete", OTHER, "circle"), ("pruned", PRUNED, "x"), ("selected", SELECTED, "star"))
    for label, color, symbol in groups:
        picked = [(t, v) for t, v in trials if kind(t) == label]
        if not picked:
            continue
        fig.add_scatter(
            x=[t.number for t, _ in picked],
            y=[v for _, v in picked],
            mode="markers",
            name=label,
            marker={"color": color, "symbol": symbol, "size": 11 if label != "pruned" else 9},
            text=[_hover(t, space, name, v, _stopped(t, metric, rungs)) for t, v in picked],
            hovertemplate="%{text}<extra></extra>",
        )
    complete = [(t, v) for t, v in trials if t.state == TrialState.COMPLETE]
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best: list[float] = []
        for _, v in complete:
            best.append(v if not best else pick(best[-1], v))
        fig.add_scatter(
            x=[t.number for t, _ in complete],
            y=best,
            mode="lines",
            line={"shape": "hv", "color": "gray"},
            name="best so far",
        )
    y = _fitted([v for _, v in trials])
    if y is not None:
        fig.update_yaxes(range=y)
    if trials:
        numbers = [t.number for t, _ in trials]
        fig.update_xaxes(range=[min(numbers) - 0.5, max(numbers) + 0.5])
    return fig


def search_curves(
    study: optuna.Study, space: Sequence[str], *, metric: str, rungs: Sequence[int] = ()
) -> go.Figure:
    """Every trial's validation score epoch by epoch, the pruner's rungs drawn."""
    name = metric.replace("_", " ")
    chosen = _selected(study)
    return intermediate_figure(
        _finished(study),
        title=f"Search: validation {name} per epoch, every trial{_marks(bool(rungs))}",
        y_title=f"validation {name}",
        unit="epoch",
        rungs=rungs,
        metric=metric,
        chosen=lambda t: _is_chosen(t, chosen, space),
    )


def intermediate_figure(
    trials: Sequence[FrozenTrial],
    *,
    title: str,
    y_title: str,
    unit: str,
    rungs: Sequence[int] = (),
    metric: str = "",
    shift: int = 0,
    label: Callable[[FrozenTrial], str] | None = None,
    chosen: Callable[[FrozenTrial], bool] | None = None,
) -> go.Figure:
    """Trials' intermediate values (Optuna's ``plot_intermediate_values``, pruned trials
    included and marked): a line per trial, x the step plus ``shift`` in ``unit``s, dashed
    vertical lines at the pruner's ``rungs``, axes spanning the data. ``label`` and ``chosen``
    (callables of a trial) name a trial and mark the selected one."""
    fig = _fig(title, xaxis_title=unit, yaxis_title=y_title, height=480, **_SUBTITLED)
    xs: list[float] = [float(r + shift) for r in rungs]
    ys: list[float] = []
    for t in trials:
        steps, values = _curve(t, metric)
        if not steps:
            continue
        pruned = t.state == TrialState.PRUNED
        selected = chosen is not None and chosen(t)
        color = PRUNED if pruned else SELECTED if selected else OTHER
        x = [s + shift for s in steps]
        xs += [float(v) for v in x]
        ys += values
        stopped = _stopped(t, metric, rungs, unit, shift)
        what = f"trial {t.number}" + (f" ({label(t)})" if label is not None else "")
        fig.add_scatter(
            x=x,
            y=values,
            mode="lines+markers",
            name=f"{what}{' pruned' if pruned else ' selected' if selected else ''}",
            line={"color": color, "dash": "dot" if pruned else "solid", "width": 3 if selected else 1.5},
            marker={
                "color": color,
                "size": [5] * (len(x) - 1) + [11 if pruned else 5],
                "symbol": ["circle"] * (len(x) - 1) + ["x" if pruned else "circle"],
            },
            opacity=1.0 if selected else 0.8,
            hovertemplate=f"{what}: {stopped}<br>{unit} %{{x}}: %{{y:.4f}}<extra></extra>",
        )
    for i, r in enumerate(rungs):
        fig.add_vline(
            x=r + shift,
            line_dash="dash",
            line_color="gray",
            annotation_text=f"rung {i + 1}",
            annotation_position="top",
        )
    if xs:
        fig.update_xaxes(range=[min(xs) - 0.5, max(xs) + 0.5])
    y = _fitted(ys)
    if y is not None:
        fig.update_yaxes(range=y)
    return fig


def _dimension(trials: Sequence[FrozenTrial], name: str) -> dict[str, Any]:
    """One parameter's axis of the parallel coordinates: categories as ticks, log ranges in
    log10 with their values as ticks, the rest as they are; each spanning the data."""
    dist = trials[0].distributions.get(name)
    values = [t.params[name] for t in trials]
    if isinstance(dist, CategoricalDistribution) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        choices = list(dist.choices) if isinstance(dist, CategoricalDistribution) else []
        for v in values:
            if v not in choices:
                choices.append(v)
        return {
            "label": name,
            "values": [choices.index(v) for v in values],
            "tickvals": list(range(len(choices))),
            "ticktext": [str(c) for c in choices],
            "range": [-0.25, len(choices) - 0.75] if len(choices) > 1 else [-0.5, 0.5],
        }
    numbers = [float(v) for v in values]
    if isinstance(dist, FloatDistribution | IntDistribution) and dist.log and min(numbers) > 0:
        logs = [math.log10(v) for v in numbers]
        span = _fitted(logs, share=0.02) or [0.0, 1.0]
        ticks = np.linspace(span[0], span[1], 5)
        return {
            "label": f"{name} (log)",
            "values": logs,
            "range": span,
            "tickvals": [float(v) for v in ticks],
            "ticktext": [f"{10**v:.2g}" for v in ticks],
        }
    return {"label": name, "values": numbers, "range": _fitted(numbers, share=0.02)}


def search_parallel(
    study: optuna.Study, space: Sequence[str], *, metric: str, rungs: Sequence[int] = ()
) -> go.Figure:
    """Parallel coordinates of every trial (Optuna's shows complete trials only): its
    parameters, the epochs it trained, and its score (complete: peak; pruned: last reported),
    coloured by how it ended."""
    name = metric.replace("_", " ")
    chosen = _selected(study)
    trials = [
        t
        for t in _finished(study)
        if all(n in t.params for n in space) and _shown_value(t, metric) is not None
    ]
    fig = _fig(
        "Search: parallel coordinates, every trial"
        "<br><sup>orange: pruned (at its last reported value), blue: complete, red: selected</sup>",
        height=500,
        margin={**_LAYOUT["margin"], "t": 120},
    )
    if not trials:
        return fig
    shown = [_shown_value(t, metric) for t in trials]
    code = [0 if t.state == TrialState.PRUNED else 2 if _is_chosen(t, chosen, space) else 1 for t in trials]
    dimensions = [_dimension(trials, n) for n in space]
    steps = [_curve(t, metric)[0] for t in trials]
    if any(steps):  # where each trial stopped (none where trials report no epochs)
        reached = [float(s[-1]) if s else 0.0 for s in steps]
        ticks = sorted({*map(int, reached), *(r for r in rungs if min(reached) <= r <= max(reached))})
        dimensions.append(
            {
                "label": "epochs trained",
                "values": reached,
                "range": _fitted(reached, share=0.02),
                "tickvals": ticks,
            }
        )
    dimensions.append({"label": f"validation {name}", "values": shown, "range": _fitted(shown)})
    fig.add_trace(
        go.Parcoords(
            dimensions=dimensions,
            line={
                "color": code,
                "cmin": 0,
                "cmax": 2,
                "colorscale": [
                    [0.0, PRUNED],
                    [1 / 3, PRUNED],
                    [1 / 3, OTHER],
                    [2 / 3, OTHER],
                    [2 / 3, SELECTED],
                    [1.0, SELECTED],
                ],
            },
        )
    )
    return fig


def learning_curves(trial: FrozenTrial, title: str) -> go.Figure:
    h = _history(trial)
    score = _score_name(h)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", score))
    x = [r["epoch"] for r in h]
    for col, metric in ((1, "loss"), (2, score)):
        for part, dash in (("train", "dot"), ("val", "solid")):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[r.get(f"{part}_{metric}") for r in h],
                    name=f"{part} {metric}",
                    line={"dash": dash},
                    mode="lines+markers",
                ),
                row=1,
                col=col,
            )
    best = trial.user_attrs.get(records.BEST_EPOCH)
    if best is not None:
        for col in (1, 2):
            fig.add_vline(x=best, line_dash="dash", line_color=SELECTED, row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title, height=420, **_LAYOUT)
    return fig


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
    if m.get("task") == "regression":
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
    if not per_seed:
        return []
    key = "rmse" if m.get("task") == "regression" else "accuracy"
    what = "the ensemble" if m.get("ensemble") else "their mean"
    fig = _fig(f"Test {key}: each model and {what}", xaxis_title="model", yaxis_title=f"test {key}")
    fig.add_bar(
        x=[f"member {i}" for i in range(len(per_seed))],
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def stage_note(study: optuna.Study, title: str) -> str:
    """A short markdown note: what was selected, why, how sure, and the resulting configuration."""
    selection = records.read_selection(study.user_attrs)
    lines = [f"## {title}", "", f"Study `{study.study_name}`", ""]
    if selection is not None:
        lines += [f"**Selected:** {', '.join(f'{k} = {_fmt(v)}' for k, v in selection.selected.items())}", ""]
        lines += [f"**Why:** {selection.reason}", ""]
        ev = selection.evidence
        if ev is not None:
            verdict = "within noise" if ev.within_noise else "beyond noise"
            lines += [
                f"**Evidence ({verdict}):** {ev.metric} difference to the runner-up "
                f"{', '.join(f'{k} = {_fmt(v)}' for k, v in ev.runner_up.items())}: {ev.difference:+.4f}, "
                f"95 % interval [{ev.low:+.4f}, {ev.high:+.4f}] ({ev.method}, n = {ev.n})",
                "",
            ]
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    lines += [f"**Trials:** {n} complete" + (f", {pruned} pruned" if pruned else ""), ""]
    if selection is not None:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in selection.config_out.to_record().items()]
    return "\n".join(lines) + "\n"
