"""Figures of a search, every trial complete and pruned (:mod:`hpo.present.figures`): its history,
every trial's learning curve with the pruner's rungs, parameter importances and parallel
coordinates. Axes span the data, not a fixed range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.present._figures_common import (
    _LAYOUT,
    _SUBTITLED,
    OTHER,
    PRUNED,
    SELECTED,
    Figure,
    _curve,
    _fig,
    _finished,
    _fitted,
    _hover,
    _is_chosen,
    _marks,
    _prefix,
    _selected,
    _shown_value,
    _stopped,
)


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
