"""Shared plotting helpers of :mod:`hpo.present.figures`: the ``(figure_id, figure)`` type, the
colours and layout every figure uses, what a stage study holds (its trials, their histories and
curves, how each ended, the selection), and the learning curves of one trial (the LR range test's
verification run, the final run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
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


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials, by number."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sorted(study.get_trials(deepcopy=False, states=states), key=lambda t: t.number)


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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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
