"""The documentation: the generated reference pages match the code, README starts a user.

A settings model or a command changed without ``python scripts/gen_reference.py`` fails here as
in CI (``.ci/run`` also builds the site with ``mkdocs build --strict``)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[dev]'"
SETUP_COMMANDS = (f"{INSTALL} && .venv/bin/hpo run", f"{INSTALL} && .venv/bin/python -m pytest")


@pytest.fixture(scope="module")
def gen_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_matches_the_code(gen_reference: ModuleType) -> None:
    stale = gen_reference.stale(ROOT)
    assert stale == [], (
        f"stale: {', '.join(map(str, stale))}; run python scripts/gen_reference.py and commit the pages"
    )
    assert gen_reference.main(["--check"]) == 0


def test_the_check_names_a_stale_page(
    gen_reference: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages: list[Path] = list(gen_reference.PAGES)
    for page in pages:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    assert gen_reference.stale(tmp_path) == []
    edited = tmp_path / gen_reference.CLI_PAGE
    edited.write_text(edited.read_text(encoding="utf-8") + "\nan edit by hand\n", encoding="utf-8")
    (tmp_path / gen_reference.STUDY_FILE_PAGE).unlink()
    assert gen_reference.stale(tmp_path) == [gen_reference.STUDY_FILE_PAGE, gen_reference.CLI_PAGE]
    monkeypatch.setattr(gen_reference, "ROOT", tmp_path)
    assert gen_reference.main(["--check"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "docs/reference/cli.md" in out[0] and "docs/reference/study-file.md" in out[0]


def test_the_reference_covers_every_key_and_command(gen_reference: ModuleType) -> None:
    from pydantic import BaseModel

    from hpo.sections import DataSettings, PipelineSection, ReportSettings
    from hpo.settings import RunConfig
    from hpo.stages import KINDS

    page = gen_reference.study_file_page()
    models: list[type[BaseModel]] = [PipelineSection, DataSettings, RunConfig, ReportSettings]
    models += [cls.settings_model for cls in KINDS.values()]
    for model in models:
        for name in model.model_fields:
            assert f"**`{name}`**" in page, f"{model.__name__}.{name} missing from the study-file reference"
    for kind in KINDS:
        assert f'`kind = "{kind}"`' in page
    cli = gen_reference.cli_page()
    for command in ("run", "worker", "run-stage", "status", "report", "dashboard", "predict", "export-model"):
        assert f"## `hpo {command}`" in cli


def test_readme_is_short_and_holds_the_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    for command in SETUP_COMMANDS:
        assert command in text.splitlines(), f"README lost a set-up command: {command}"


def test_readme_links_into_the_docs_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert targets, "README links into docs/"
    for target in targets:
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), f"README links to {target}, which does not exist"
