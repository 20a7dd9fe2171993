"""One self-contained HTML page for a pipeline: data, result, every stage, provenance.

Figures come from :mod:`hpo.present.figures`, rebuilt from the storage through each stage's own
``figures`` (the same ones it saved for optuna-dashboard). plotly.js is embedded once, so the
page works offline; the page is a jinja2 template (``templates/report.html.j2``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import plotly
import plotly.io as pio

from hpo.present import figures
from hpo.present._source import PipelineView
from hpo.stages._context import column_listing
from hpo.tasks import CLASSIFICATION, metrics_of, task_kind
from hpo.tuning import records

#: The write-up's result on the real data (the report compares MSD-shaped runs with it).
WRITE_UP = {"accuracy": 0.6605, "loss": 0.8993}
PACKAGES = (
    "hpo",
    "torch",
    "optuna",
    "optuna-dashboard",
    "scikit-learn",
    "numpy",
    "pandas",
    "pyarrow",
    "plotly",
    "sqlalchemy",
    "pydantic",
)
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("hpo.present", "templates"), autoescape=True, keep_trailing_newline=True
)


@dataclass
class Section:
    anchor: str
    title: str
    stage: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    figures: int = 0

    def p(self, text: str, cls: str = "") -> None:
        self.blocks.append({"kind": "p", "text": text, "cls": cls})

    def h3(self, text: str) -> None:
        self.blocks.append({"kind": "h3", "text": text})

    def table(self, rows: list[list[str]], head: list[str] | None = None) -> None:
        self.blocks.append({"kind": "table", "rows": rows, "head": head})

    def details(self, summary: str, rows: list[list[str]]) -> None:
        self.blocks.append({"kind": "details", "text": summary, "rows": rows})

    def figure(self, fig_id: str, fig: Any) -> None:
        html = pio.to_html(
            fig, full_html=False, include_plotlyjs=False, div_id=fig_id, config={"displaylogo": False}
        )
        self.blocks.append({"kind": "figure", "id": fig_id, "html": html})
        self.figures += 1


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else str(value)
    return str(value)


def data_section(pipe: PipelineView) -> Section:
    prepared = pipe.dataset()
    meta = prepared.meta
    split = prepared.split
    shown = pipe.plan.report.features or prepared.feature_names[: min(12, prepared.n_features)]
    section = Section("data", "Data")
    if not task_kind(prepared.task_name).has_classes:
        t = meta["target_summary"]
        about = [
            ["target", f"{meta['target']} (regression)"],
            ["target mean ± sd", f"{t['mean']:.4g} ± {t['std']:.4g} (median {t['median']:.4g})"],
            ["target range", f"{t['min']:.4g} .. {t['max']:.4g}"],
        ]
    else:
        about = [
            ["target", f"{meta['target']} ({prepared.n_classes} classes)"],
            ["majority class share", f"{meta['majority_share']:.2%}"],
        ]
    section.table(
        [
            ["source", str(meta["source_file"])],
            ["rows", f"{meta['rows']:,}"],
            ["features", str(meta["n_features"])],
            *about,
            [
                f"split ({split.name})",
                f"{split.train.size:,} train / {split.val.size:,} val / {split.test.size:,} test",
            ],
        ]
    )
    if meta.get("columns") is not None:  # a user's table: every column as read, and its encoding
        listing = column_listing(prepared, pipe.ctx.encoding, pipe.ctx.native_levels, pipe.plan.data.scaling)
        dropped = listing["dropped_target_rows"]
        section.p(
            f"{len(meta['columns'])} feature columns as read, {listing['model_inputs']} model inputs "
            f"({listing['encoding']} encoding, fit on the training rows)"
            + (f"; {dropped:,} row(s) with an empty target left out" if dropped else "")
        )
        section.table(
            [
                [
                    str(c["column"]),
                    str(c["kind"]),
                    str(c["type"]),
                    f"{c['missing']:.1%}" if c["missing"] is not None else "",
                    f"{c['levels']:,}" if c["levels"] is not None else "",
                    str(c["encoding"]),
                ]
                for c in listing["columns"]
            ],
            head=["column", "kind", "type", "empty", "levels", "encoding"],
        )
    for fid, fig in figures.data_figures(
        prepared.features,
        prepared.labels,
        class_names=prepared.class_names,
        feature_names=prepared.feature_names,
        shown=shown,
        splits={"train": split.train, "val": split.val, "test": split.test},
        targets=prepared.targets,
        target_name=str(meta["target"]),
    ):
        section.figure(fid, fig)
    return section


def result_section(pipe: PipelineView) -> Section:
    section = Section("results", "Result")
    m = pipe.status().test_metrics
    if not m:
        section.p("the final stage has not run.", "missing")
        return section
    if not task_kind(str(m.get("task", CLASSIFICATION.name))).has_classes:
        section.table(
            [
                ["test RMSE", f"{m['rmse']:.4g}"],
                ["test MAE", f"{m['mae']:.4g}"],
                ["test R²", f"{m['r2']:.4f}"],
                ["test loss (MSE of the standardised target)", f"{m['loss']:.4f}"],
                ["RMSE of the training mean as a constant prediction", f"{m['constant_rmse']:.4g}"],
                *_ceiling_rows(pipe, "rmse"),
            ],
            ["metric", "this run"],
        )
        _members(section, m)
        return section
    msd_like = pipe.plan.data.source in ("msd", "synthetic")
    head = ["metric", "this run", *(["write-up (real data)"] if msd_like else [])]
    rows = [
        ["test accuracy", f"{m['accuracy']:.2%}", *([f"{WRITE_UP['accuracy']:.2%}"] if msd_like else [])],
        ["test loss", f"{m['loss']:.4f}", *([f"{WRITE_UP['loss']:.4f}"] if msd_like else [])],
        ["balanced accuracy", f"{m['balanced_accuracy']:.2%}", *(["not reported"] if msd_like else [])],
        ["macro-F1", f"{m['macro_f1']:.4f}", *(["not reported"] if msd_like else [])],
    ]
    section.table(rows + _ceiling_rows(pipe, "accuracy", columns=len(head) - 1), head)
    _members(section, m)
    if pipe.plan.data.source == "synthetic":
        section.p(
            "The write-up's numbers are on the real YearPredictionMSD data; a run on the synthetic "
            "stand-in is comparable in scale only. The ceiling is the Bayes-optimal prediction of "
            "these test rows from the generator's own latent scores (hpo data oracle): no model "
            "passes it but by chance."
        )
    return section


def _ceiling_rows(pipe: PipelineView, metric: str, *, columns: int = 1) -> list[list[str]]:
    """On a synthetic draw, the Bayes-optimal figures of its test rows (hpo.data.oracle; stored
    beside the prepared data once computed)."""
    if pipe.plan.data.source != "synthetic":
        return []
    from hpo.data import oracle

    c = oracle.oracle(pipe.plan.data, prepared=pipe.dataset())
    pad = [""] * (columns - 1)
    if metric == "rmse":
        return [["RMSE of the Bayes-optimal prediction (the ceiling)", f"{c['rmse']:.4g}", *pad]]
    return [
        ["test accuracy of the Bayes-optimal prediction (the ceiling)", f"{c['accuracy']:.2%}", *pad],
        ["its test loss", f"{c['loss']:.4f}", *pad],
    ]


def _members(section: Section, m: dict[str, Any]) -> None:
    """How the test figures above came about where the final stage trained several models."""
    if m.get("ensemble") == "greedy":
        key = "accuracy" if "accuracy" in m else "rmse"
        section.p(
            f"The final model is a greedy ensemble of {m['members']} models chosen from the library "
            "stages' trials on their validation outputs (each weighted by how often the selection "
            "took it); the figures above are the ensemble's. Each member alone on the test rows:"
        )
        section.table(
            [
                [
                    str(x["stage"]),
                    str(x["trial"]),
                    str(x.get("family", "")),
                    str(x["weight"]),
                    f"{x[key]:.4g}",
                    f"{x['loss']:.4f}",
                ]
                for x in m["member_figures"]
            ],
            ["stage", "trial", "family", "weight", f"test {key}", "test loss"],
        )
        return
    seeds = int(m.get("seeds", 1))
    if seeds < 2:
        return
    shown = [k for k in ("accuracy", "balanced_accuracy", "macro_f1", "rmse", "mae", "r2") if f"{k}_sd" in m]
    spread = ", ".join(f"{k} {m[f'{k}_mean']:.4f} ± {m[f'{k}_sd']:.4f}" for k in shown)
    if m.get("ensemble"):
        section.p(
            f"The final model is an ensemble of {seeds} models (seeds trained alike, outputs "
            f"averaged); the figures above are the ensemble's. Its members alone: {spread} "
            "(mean ± sd over the members)."
        )
    else:
        section.p(f"The figures above are the mean of {seeds} models (seeds); mean ± sd: {spread}.")


def stage_sections(pipe: PipelineView) -> list[Section]:
    out = []
    for i, stage in enumerate(pipe.plan.stages, start=1):
        track = f", {pipe.plan.track_of(stage.name)}" if len(pipe.plan.track_bases()) > 1 else ""
        section = Section(f"stage-{stage.name}", f"{i}. {stage.name} ({stage.kind}{track})", stage=stage.name)
        name = pipe.ctx.study_name(stage.name)
        study = pipe.ctx.find_study(name)
        if not records.is_complete(study):
            section.p(f"study {name} is not complete yet.", "missing")
            out.append(section)
            continue
        assert study is not None
        selection = records.read_selection(study.user_attrs)
        assert selection is not None
        seconds = pipe.trial_seconds(stage)
        trials = study.get_trials(deepcopy=False)
        n = sum(t.state.name == "COMPLETE" for t in trials)
        pruned = sum(t.state.name == "PRUNED" for t in trials)
        section.p(
            f"Study {name}: {n} complete trial(s)"
            + (f", {pruned} pruned" if pruned else "")
            + (f", {seconds:.0f} s of trials" if seconds else "")
        )
        section.table([[k, fmt(v)] for k, v in selection.selected.items()], ["selected", "value"])
        section.p(f"Why: {selection.reason}", "why")
        ev = selection.evidence
        if ev is not None:
            runner_up = ", ".join(f"{k} = {fmt(v)}" for k, v in ev.runner_up.items())
            text = (
                f"{'Near-tie: within noise' if ev.within_noise else 'Beyond noise'}. "
                f"{ev.metric} difference to the runner-up ({runner_up}): {ev.difference:+.4f}, "
                f"95 % interval [{ev.low:+.4f}, {ev.high:+.4f}] "
                f"({ev.method}, n = {ev.n})."
            )
            section.p(text, "tie" if ev.within_noise else "sure")
        for fid, fig in stage.figures(study):
            section.figure(fid, fig)
        members = selection.extra.get("members")
        if isinstance(members, list):  # a greedy ensemble: its members, each with its configuration
            section.details(
                "the ensemble's members",
                [
                    [f"{m['stage']} trial {m['trial']} x{m['weight']}", fmt(m.get("config", {}))]
                    for m in members
                ],
            )
        else:
            section.details(
                "resulting configuration", [[k, fmt(v)] for k, v in selection.config_out.to_record().items()]
            )
        out.append(section)
    return out


def provenance(pipe: PipelineView) -> dict[str, Any]:
    meta = pipe.dataset().meta
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    path = Path(pipe.plan.path)
    synthetic = meta.get("synthetic")
    out: dict[str, Any] = {
        "pipeline": pipe.plan.name,
        "study file": str(path),
        "study file sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "",
        "data source": meta["source_file"],
        "data sha256": meta["source_sha256"],
    }
    if isinstance(synthetic, dict):
        out["synthetic generator"] = (
            f"version {synthetic['generator_version']}, "
            f"profile sha256 {synthetic['profile_sha256'][:16]}..., "
            f"{synthetic['rows']:,} rows, seed {synthetic['seed']}"
        )
    out.update(
        {
            "data seed (split)": meta["seed"],
            "training seed": pipe.plan.defaults.seed,
            "split": pipe.plan.data.split,
            "storage": pipe.ctx.storage_url,
            "python": platform.python_version(),
            **{f"package {k}": v for k, v in versions.items()},
            "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
    )
    return out


def build(pipe: PipelineView, *, stages: bool = True) -> tuple[str, dict[str, Any]]:
    """The report's HTML and a summary (sections and figure counts) for the CLI."""
    sections = [data_section(pipe)]
    if stages:
        sections.append(result_section(pipe))
        sections += stage_sections(pipe)
    prov = provenance(pipe)
    prov_section = Section("provenance", "Provenance")
    prov_section.table([[k, fmt(v)] for k, v in prov.items()])
    sections.append(prov_section)
    title = f"hpo report: {pipe.plan.name}" if stages else f"hpo data: {pipe.plan.name}"
    page = _ENV.get_template("report.html.j2").render(
        title=title,
        subtitle=f"{pipe.plan.path} · {pipe.ctx.storage_url} · {prov['generated']}",
        plotlyjs=plotly.offline.get_plotlyjs(),
        nav=[(s.anchor, s.title) for s in sections],
        sections=sections,
    )
    counts = {s.stage or s.anchor: s.figures for s in sections if s.figures or s.stage}
    return page, {"figures": counts, "sections": [s.anchor for s in sections]}


def comparison_section(pipes: Sequence[PipelineView]) -> Section:
    """Pipelines of one storage side by side: their task and family, selections, test metrics (of
    every task among them), compute, and per-class recall of the classifiers. Pipelines of other
    families or tasks compare as well (e.g. an MLP and a gradient-boosting pipeline of one
    dataset)."""
    section = Section("comparison", "Pipelines side by side")
    names = [p.plan.name for p in pipes]
    statuses = [p.status() for p in pipes]
    rows: list[list[str]] = [
        [
            "task",
            *[
                (st.test_metrics or {}).get("task", p.plan.data.task)
                for p, st in zip(pipes, statuses, strict=True)
            ],
        ],
        ["family", *[p.plan.defaults.family + _what(p) for p in pipes]],
    ]
    tasks = {p.plan.data.task for p in pipes}
    shown = [k for k, _ in COMPARED if any(k in metrics_of(t) for t in tasks)]
    for key, label in COMPARED:
        if key not in shown:
            continue
        cells = []
        for st in statuses:
            m = st.test_metrics
            if not m:
                cells.append("not run")
            elif key not in m:
                cells.append("—")
            elif m.get("ensemble") and f"{key}_sd" in m:
                cells.append(
                    f"{m[key]:.4f} (ensemble of {m['ensemble']}; members "
                    f"{m[f'{key}_mean']:.4f} ± {m[f'{key}_sd']:.4f})"
                )
            elif f"{key}_sd" in m:
                cells.append(f"{m[key]:.4f} ± {m[f'{key}_sd']:.4f} ({m['seeds']} seeds)")
            else:
                cells.append(f"{m[key]:.4f}")
        rows.append([label, *cells])
    seconds = [sum(s for st in p.plan.stages if (s := p.trial_seconds(st)) is not None) for p in pipes]
    trials = [sum(sum(st.trials.values()) for st in status.stages) for status in statuses]
    rows.append(["compute: seconds of trials", *[f"{s:,.0f}" for s in seconds]])
    rows.append(["compute: trials", *[str(t) for t in trials]])
    section.table(rows, ["", *names])
    for pipe, status in zip(pipes, statuses, strict=True):
        section.h3(f"{pipe.plan.name}: what each stage selected")
        section.table(
            [
                [
                    st.stage,
                    st.kind,
                    ", ".join(f"{k} = {fmt(v)}" for k, v in (st.selection or {}).get("selected", {}).items()),
                ]
                for st in status.stages
            ],
            ["stage", "kind", "selected"],
        )
    recalls = {
        p.plan.name: {c: v["recall"] for c, v in st.test_metrics["per_class"].items()}
        for p, st in zip(pipes, statuses, strict=True)
        if st.test_metrics and "per_class" in st.test_metrics
    }
    if recalls:
        section.figure("comparison-recall", figures.recall_comparison(recalls))
    return section


#: test metrics a comparison lists (those of the pipelines' tasks)
COMPARED = (
    ("accuracy", "test accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro-F1"),
    ("rmse", "test RMSE"),
    ("mae", "test MAE"),
    ("r2", "test R²"),
    ("loss", "test loss"),
)


def _what(pipe: PipelineView) -> str:
    d = pipe.plan.defaults
    more = pipe.plan.other_tracks()
    beside = f" (tracks beside: {'; '.join(more)})" if more else ""
    return (f" ({d.module or d.estimator})" if d.module or d.estimator else "") + beside


def write_comparison(pipes: Sequence[PipelineView], out: Path) -> dict[str, Any]:
    """One page comparing pipelines (e.g. the faithful protocol and one that beats it)."""
    sections = [comparison_section(pipes)]
    title = "hpo comparison: " + " vs ".join(p.plan.name for p in pipes)
    page = _ENV.get_template("report.html.j2").render(
        title=title,
        subtitle=" · ".join(p.plan.path for p in pipes) + f" · {pipes[0].ctx.storage_url}",
        plotlyjs=plotly.offline.get_plotlyjs(),
        nav=[(s.anchor, s.title) for s in sections],
        sections=sections,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return {"path": str(out), "bytes": out.stat().st_size, "figures": {"comparison": sections[0].figures}}


def write(pipe: PipelineView, out: Path, *, stages: bool = True) -> dict[str, Any]:
    page, summary = build(pipe, stages=stages)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return {"path": str(out), "bytes": out.stat().st_size, **summary}
