"""Inspection: figures saved for optuna-dashboard, the dashboard over HTTP, the HTML report in a
real headless browser (Debian's chromium; `.ci/run` installs it and sets HPO_REQUIRE_BROWSER=1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import skip_or_fail

from hpo import cli
from hpo.pipeline import Pipeline
from hpo.present import dashboard, report

PIPE_TOML = """
[pipeline]
name = "look"

[data]
source = "synthetic"
rows = 3000
seed = 42

[defaults]
hidden = [32, 32]

[stages.baseline]
architectures = [[16, 16], [32, 32]]
max_batches = 6
eval_every = 3

[stages.lr_range]
verify_epochs = 1

[stages.weight_decay]
kind = "grid_cv"
grid = { weight_decay = [0.0, 1e-4, 1e-2] }
folds = 2
epochs = 1

[stages.init]
kind = "sweep"
choices = { init = ["default", "xavier_uniform"] }
epochs = 2

[stages.activation]
kind = "sweep"
choices = { activation = ["relu", "gelu"] }
epochs = 2

[stages.norm]
kind = "sweep"
choices = { norm = ["none", "layernorm"] }
epochs = 2

[stages.optimizer]
kind = "sweep"
choices = { optimizer = ["adam", "sgd"] }
epochs = 2

[stages.final]
epochs = 3
patience = 2
"""

SWEEPS = ("init", "activation", "norm", "optimizer")
STAGES = ("baseline", "lr_range", "weight_decay", *SWEEPS, "final")
EXPECTED_FIGURES = {
    "look.baseline": {"baseline-val-loss", "baseline-curves"},
    "look.lr_range": {"lr-range-curve", "lr-range-verification"},
    "look.weight_decay": {"weight-decay-cv"},
    **{f"look.{s}": {f"{s}-bar", f"{s}-curves"} for s in SWEEPS},
    "look.final": {"final-learning-curves", "final-confusion", "final-per-class"},
}


@dataclass
class Run:
    root: Path
    config: Path
    storage: str
    data_dir: Path

    def pipeline(self) -> Pipeline:
        return Pipeline.load(
            self.config, storage=self.storage, artifacts=self.root / "artifacts", data_dir=self.data_dir
        )


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("inspect")
    cfg = root / "look.toml"
    cfg.write_text(PIPE_TOML)
    run = Run(root, cfg, f"sqlite:///{root / 'hpo.db'}", root / "data")
    run.pipeline().run()
    return run


def _graph_ids(storage: optuna.storages.BaseStorage, study_id: int) -> set[str]:
    attrs = storage.get_study_system_attrs(study_id)
    return {k.split(":")[2] for k in attrs if k.startswith("dashboard:plot_data:")}


@pytest.mark.slow
def test_every_stage_saved_its_figures_and_note(done: Run) -> None:
    storage = done.pipeline().ctx.storage
    for name, expected in EXPECTED_FIGURES.items():
        study = optuna.load_study(study_name=name, storage=storage)
        assert _graph_ids(storage, study._study_id) == expected, name
        import optuna_dashboard

        note = optuna_dashboard.get_note(study)
        assert note.startswith("## ") and f"Study `{name}`" in note
        assert "**Selected:**" in note and "**Why:**" in note


def test_republishing_replaces_figures(done: Run) -> None:
    pipe = done.pipeline()
    storage = pipe.ctx.storage
    study = optuna.load_study(study_name="look.weight_decay", storage=storage)
    before = dict(storage.get_study_system_attrs(study._study_id))
    stage = pipe.plan.stage("weight_decay")
    dashboard.publish(study, stage.figures(study), "note")
    after = storage.get_study_system_attrs(study._study_id)
    assert _graph_ids(storage, study._study_id) == {"weight-decay-cv"}
    assert {k for k in after if "plot_data" in k} == {k for k in before if "plot_data" in k}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_dashboard_serves_the_studies_and_their_figures(done: Run) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", done.storage, "--port", str(port)],
        cwd=done.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(0.3)
        by_name = {s["study_name"]: s["study_id"] for s in studies}
        assert set(EXPECTED_FIGURES) <= set(by_name)
        for name in ("look.lr_range", "look.final"):
            detail = _get_json(f"{base}/api/studies/{by_name[name]}")
            ids = {g["id"] for g in detail["plotly_graph_objects"]}
            assert ids == EXPECTED_FIGURES[name]
            assert f"Study `{name}`" in detail["note"]["body"]
            graph = json.loads(next(g["graph_object"] for g in detail["plotly_graph_objects"]))
            assert graph["data"], "the saved figure has traces"
        page = urllib.request.urlopen(f"{base}/dashboard", timeout=10).read().decode()
        assert "<script" in page
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_port_in_use_is_one_line(done: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli.main(["dashboard", "--storage", done.storage, "--port", str(port)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"127.0.0.1:{port}" in err and "--port" in err


@pytest.fixture(scope="module")
def report_file(done: Run) -> Path:
    out = done.root / "report.html"
    summary = report.write(done.pipeline(), out)
    assert summary["figures"] == {
        "data": 4,
        "baseline": 2,
        "lr_range": 2,
        "weight_decay": 1,
        **{s: 2 for s in SWEEPS},
        "final": 3,
    }
    return out


def test_report_is_self_contained(report_file: Path, done: Run) -> None:
    text = report_file.read_text()
    assert not re.search(r"<script[^>]+src=", text), "no external scripts"
    assert not re.search(r"<link[^>]+href=['\"]?https?:", text), "no external stylesheets"
    assert "cdn.plot.ly" not in text.split("</script>", 1)[1]  # only plotly.js itself may name it
    for stage in STAGES:
        assert f'data-stage="{stage}"' in text
    assert "66.05%" in text and "0.8993" in text
    for needle in ("data sha256", "training seed", "package torch", "package optuna", done.storage):
        assert needle in text, needle


def test_report_on_an_unfinished_pipeline_says_what_is_missing(tmp_path: Path) -> None:
    cfg = tmp_path / "look.toml"
    cfg.write_text(PIPE_TOML)
    pipe = Pipeline.load(cfg, storage=f"sqlite:///{tmp_path / 'e.db'}", artifacts=tmp_path / "a")
    pipe.run_stage("baseline")
    summary = report.write(pipe, tmp_path / "r.html")
    assert summary["figures"]["baseline"] == 2 and summary["figures"]["final"] == 0
    text = (tmp_path / "r.html").read_text()
    assert "the final stage has not run" in text and "study look.lr_range is not complete" in text


def test_data_explore_writes_the_data_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "look.toml"
    cfg.write_text(PIPE_TOML)
    out = tmp_path / "data.html"
    code = cli.main(
        [
            "data",
            "explore",
            "--config",
            str(cfg),
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    text = out.read_text()
    for fid in ("data-classes", "data-histograms", "data-boxplots", "data-correlation"):
        assert f'data-figure="{fid}"' in text
    assert "data-stage=" not in text


# --------------------------------------------------------------------------- real browser

_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + String(e.reason)));
const __ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); __ce(...a); };
</script>"""
_PROBE_TAIL = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const figs = [...document.querySelectorAll('[data-figure]')].map(el => ({
    id: el.dataset.figure,
    section: el.closest('section').id,
    svg: el.querySelectorAll('.main-svg').length,
    traces: el.querySelectorAll('.trace, .hm, .heatmaplayer image, .bars .point').length,
  }));
  const pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify({
    errors: window.__errors, figs, plotly: typeof Plotly, height: document.documentElement.scrollHeight,
  });
  document.body.appendChild(pre);
}, 1000));
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    skip_or_fail("no chromium on PATH (.ci/run installs Debian's chromium)", "HPO_REQUIRE_BROWSER")


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_report_renders_in_a_headless_browser(report_file: Path, tmp_path: Path) -> None:
    text = report_file.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(
        text.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace("</body>", _PROBE_TAIL + "</body>")
    )
    result = _browser("--virtual-time-budget=30000", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="__probe">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stderr[-2000:]
    import html as _html

    probe = json.loads(_html.unescape(match.group(1)))
    assert probe["plotly"] == "object"
    assert probe["errors"] == []
    figs = probe["figs"]
    assert len(figs) == 20
    assert all(f["svg"] > 0 for f in figs), [f["id"] for f in figs if f["svg"] == 0]
    sections = {f["section"] for f in figs}
    assert sections == {"data"} | {f"stage-{s}" for s in STAGES}
    shot_dir = Path(os.environ.get("HPO_SCREENSHOTS", tmp_path))
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "report.png"
    result = _browser(
        f"--window-size=1400,{min(int(probe['height']) + 50, 16000)}",
        "--virtual-time-budget=30000",
        f"--screenshot={shot}",
        report_file.as_uri(),
    )
    assert shot.exists(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000
