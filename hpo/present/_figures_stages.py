"""Figures of the stage kinds before and beside the search (:mod:`hpo.present.figures`): baselines,
the LR range test, grid cross-validation, one-setting sweeps, and every stage's markdown note (what
was selected, why, how sure).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.present._figures_common import (
    OTHER,
    PRUNED,
    SELECTED,
    Figure,
    _complete,
    _fig,
    _finished,
    _fmt,
    _history,
    _is_chosen,
    _marks,
    _prefix,
    _score_name,
    _selected,
    learning_curves,
)
from hpo.present._figures_search import intermediate_figure
from hpo.tuning import records


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


def sweep_figures(study: optuna.Study, settings: Sequence[str], *, metric: str) -> list[Figure]:
    """Each point's peak validation score (a bar per point) and its validation curve; a grid's
    point is labelled by its settings' values."""
    trials = _complete(study)
    chosen = _selected(study)
    choices = [", ".join(str(t.params[s]) for s in settings) for t in trials]
    picked = ", ".join(str(chosen.get(s)) for s in settings)
    what = f"Sweep '{settings[0]}'" if len(settings) == 1 else f"Grid '{' x '.join(settings)}'"
    name = metric.replace("_", " ")
    bar = _fig(f"{what}: peak validation {name}", yaxis_title=f"peak validation {name}")
    values = [float(t.value or 0.0) for t in trials]
    bar.add_bar(
        x=choices,
        y=values,
        marker_color=[SELECTED if c == picked else OTHER for c in choices],
        text=[f"{v:.4f}" for v in values],
        textposition="outside",
    )
    if values:
        spread = max(values) - min(values)
        bar.update_yaxes(range=[min(values) - max(spread, 0.005) * 2, max(values) + max(spread, 0.005)])
    bar.update_xaxes(type="category")
    score = _score_name(_history(trials[0])) if trials else "accuracy"
    curves = _fig(f"{what}: validation {score} per epoch", xaxis_title="epoch")
    for c, t in zip(choices, trials, strict=True):
        h = _history(t)
        curves.add_scatter(
            x=[r["epoch"] for r in h], y=[r.get(f"val_{score}") for r in h], mode="lines+markers", name=c
        )
    p = _prefix(study)
    return [(f"{p}-bar", bar), (f"{p}-curves", curves)]


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
    if selection is not None and isinstance(selection.extra.get("members"), list):  # a greedy ensemble
        lines += ["| member | family | weight |", "|---|---|---|"]
        lines += [
            f"| {m['stage']} trial {m['trial']} | {m.get('family', '')} | {m['weight']} |"
            for m in selection.extra["members"]
        ]
    elif selection is not None:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in selection.config_out.to_record().items()]
    return "\n".join(lines) + "\n"
