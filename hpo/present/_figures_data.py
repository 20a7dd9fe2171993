"""Figures of the data (:func:`data_figures`, :func:`target_figure`), part of
:mod:`hpo.present.figures`: precomputed summaries (histogram counts, box-plot quartiles), never raw
rows, so they stay small for any dataset size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hpo.present._figures_common import _LAYOUT, OTHER, Figure, _fig


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
