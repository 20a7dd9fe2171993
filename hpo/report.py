"""One self-contained HTML page for a pipeline: data, every stage, final metrics, provenance.

Figures come from :mod:`hpo.figures`, rebuilt from the storage (the same ones each stage saved
for optuna-dashboard). plotly.js is embedded once, so the page works offline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import plotly
import plotly.io as pio

from hpo import figures
from hpo.config import COMPONENT_SWEEPS, STAGE_ORDER
from hpo.stages import StageContext, _base, stage_status
from hpo.stages import _get as _stage_module

WRITE_UP = {"accuracy": 0.6605, "loss": 0.8993}
PACKAGES = (
    "hpo",
    "torch",
    "optuna",
    "optuna-dashboard",
    "scikit-learn",
    "numpy",
    "pandas",
    "plotly",
    "sqlalchemy",
)
STAGE_TITLES = {
    "baseline": "1. Baselines",
    "lr_range": "2. Learning-rate range test",
    "weight_decay": "3. Weight decay (k-fold CV)",
    "components": "4. Component sweeps",
    "final": "5. Final run and test",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:18px 32px}header h1{margin:0 0 4px}
nav{padding:8px 32px;background:#e8eef4}nav a{margin-right:16px;color:#1f3b57}
main{padding:8px 32px 48px;max-width:1400px}section{margin-bottom:36px}
.figure{background:#fff;border:1px solid #ddd;margin:12px 0;padding:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f0f0f0}.missing{color:#a00}.why{color:#444;font-style:italic}
code{background:#eee;padding:1px 4px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _table(rows: Mapping[str, Any], head: tuple[str, str] = ("", "")) -> str:
    out = ["<table>"]
    if any(head):
        out.append(f"<tr><th>{_esc(head[0])}</th><th>{_esc(head[1])}</th></tr>")
    out += [f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in rows.items()]
    return "".join(out) + "</table>"


def _figure_html(fig_id: str, fig: Any) -> str:
    body = pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=fig_id, config={"displaylogo": False}
    )
    return f'<div class="figure" data-figure="{_esc(fig_id)}">{body}</div>'


def _study_seconds(study: optuna.Study) -> float | None:
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    if not trials:
        return None
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (end - start).total_seconds()


def data_section(ctx: StageContext) -> tuple[str, int]:
    """The data section's HTML and how many figures it holds."""
    p = ctx.prepared()
    split = p.split(ctx.pipeline.data.split)  # type: ignore[arg-type]
    figs = figures.data_figures(
        p.features, p.labels, splits={"train": split.train, "val": split.val, "test": split.test}
    )
    meta = p.meta
    facts = {
        "source": meta["source_file"],
        "rows": f"{meta['rows']:,}",
        "features": meta["n_features"],
        "majority class share": f"{meta['majority_share']:.2%}",
        f"split ({split.name})": (
            f"{split.train.size:,} train / {split.val.size:,} val / {split.test.size:,} test"
        ),
    }
    parts = ['<section id="data"><h2>Data</h2>', _table(facts)]
    parts += [_figure_html(fid, fig) for fid, fig in figs]
    parts.append("</section>")
    return "".join(parts), len(figs)


def _stage_section(ctx: StageContext, stage: str) -> tuple[str, int]:
    module = _stage_module(stage)
    parts = [f'<section id="stage-{stage}" data-stage="{stage}"><h2>{_esc(STAGE_TITLES[stage])}</h2>']
    n_figs = 0
    names = module.studies(ctx)
    sweeps: list[str | None] = list(COMPONENT_SWEEPS) if stage == "components" else [None]
    for name, sweep in zip(names, sweeps, strict=True):
        study = _base.find_study(ctx, name)
        if sweep is not None:
            parts.append(f"<h3>Sweep: {_esc(sweep)}</h3>")
        if not _base.is_complete(study):
            parts.append(f'<p class="missing">study <code>{_esc(name)}</code> is not complete yet.</p>')
            continue
        assert study is not None
        attrs = study.user_attrs
        seconds = _study_seconds(study)
        n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        parts.append(
            f"<p>Study <code>{_esc(name)}</code>: {n} complete trial(s)"
            + (f", {seconds:.0f} s of trials" if seconds is not None else "")
            + "</p>"
        )
        parts.append(_table(attrs.get("selected", {}), ("selected", "value")))
        parts.append(f'<p class="why">Why: {_esc(attrs.get("selection_reason", ""))}</p>')
        for fid, fig in figures.stage_figures(stage, study, sweep=sweep):
            parts.append(_figure_html(fid, fig))
            n_figs += 1
        if stage in ("weight_decay", "final") or (stage == "components" and sweep == COMPONENT_SWEEPS[-1]):
            parts.append("<details><summary>resulting configuration</summary>")
            parts.append(_table(attrs.get("config_out", {}), ("setting", "value")) + "</details>")
    parts.append("</section>")
    return "".join(parts), n_figs


def _final_metrics(ctx: StageContext) -> str:
    st = stage_status(ctx, "final")
    m = st.get("test_metrics")
    if not m:
        missing = '<p class="missing">the final stage has not run.</p>'
        return f'<section id="results"><h2>Result</h2>{missing}</section>'
    rows = [
        ("test accuracy", f"{m['accuracy']:.2%}", f"{WRITE_UP['accuracy']:.2%}"),
        ("test loss", f"{m['loss']:.4f}", f"{WRITE_UP['loss']:.4f}"),
        ("balanced accuracy", f"{m['balanced_accuracy']:.2%}", "not reported"),
        ("macro-F1", f"{m['macro_f1']:.4f}", "not reported"),
    ]
    table = "<table><tr><th>metric</th><th>this run</th><th>write-up</th></tr>"
    table += "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows) + "</table>"
    note = (
        "<p>The write-up's numbers are on the real YearPredictionMSD data; a run on the synthetic "
        "stand-in is comparable in scale only.</p>"
        if ctx.prepared().meta["source"] == "synthetic"
        else ""
    )
    return f'<section id="results"><h2>Result</h2>{table}{note}</section>'


def provenance(ctx: StageContext) -> dict[str, Any]:
    meta = ctx.prepared().meta
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    cfg_path = Path(ctx.pipeline.path)
    return {
        "pipeline": ctx.pipeline.name,
        "study file": str(cfg_path),
        "study file sha256": hashlib.sha256(cfg_path.read_bytes()).hexdigest() if cfg_path.exists() else "",
        "data source": meta["source_file"],
        "data sha256": meta["source_sha256"],
        "data seed (draw and split)": meta["seed"],
        "training seed": ctx.pipeline.defaults.seed,
        "split": ctx.pipeline.data.split,
        "storage": ctx.storage_url,
        "python": platform.python_version(),
        **{f"package {k}": v for k, v in versions.items()},
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def build(ctx: StageContext, *, stages: bool = True) -> tuple[str, dict[str, Any]]:
    """The report's HTML and a summary (sections and figure counts) for the CLI."""
    sections: list[str] = []
    counts: dict[str, int] = {}
    body, counts["data"] = data_section(ctx)
    sections.append(body)
    nav = [("data", "Data")]
    if stages:
        sections.append(_final_metrics(ctx))
        nav.append(("results", "Result"))
        for stage in STAGE_ORDER:
            body, counts[stage] = _stage_section(ctx, stage)
            sections.append(body)
            nav.append((f"stage-{stage}", STAGE_TITLES[stage]))
    prov = provenance(ctx)
    sections.append(f'<section id="provenance"><h2>Provenance</h2>{_table(prov)}</section>')
    nav.append(("provenance", "Provenance"))
    title = f"hpo report: {ctx.pipeline.name}" if stages else f"hpo data: {ctx.pipeline.name}"
    page = "".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{_esc(title)}</title><style>{_CSS}</style>",
            f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>",
            f"<header><h1>{_esc(title)}</h1><div>{_esc(ctx.pipeline.path)} &middot; {_esc(ctx.storage_url)}"
            f" &middot; {_esc(prov['generated'])}</div></header>",
            "<nav>" + "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in nav) + "</nav>",
            "<main>",
            *sections,
            "</main></body></html>",
        ]
    )
    return page, {"figures": counts, "sections": [a for a, _ in nav]}


def write(ctx: StageContext, out: Path, *, stages: bool = True) -> dict[str, Any]:
    page, summary = build(ctx, stages=stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return {"path": str(out), "bytes": out.stat().st_size, **summary}
