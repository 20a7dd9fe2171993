"""Running and inspecting a pipeline: what the CLI's run-stage / run / status commands call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hpo import config, storage
from hpo.config import STAGE_ORDER
from hpo.stages import StageContext, run_stage, stage_status

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "msd_decade"
_PACKAGED_STUDIES = Path(__file__).resolve().parents[1] / "studies"


def resolve_config(value: Path | str | None) -> Path:
    """A study file path, or a bare name (``quick``) looked up in ``./studies`` and then in the
    ``studies/`` folder beside the installed package (a source checkout)."""
    text = str(value or DEFAULT_CONFIG)
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        return path
    for folder in (Path("studies"), _PACKAGED_STUDIES):
        candidate = folder / f"{text}.toml"
        if candidate.exists():
            return candidate
    return Path("studies") / f"{text}.toml"  # config.load names it in its error


def context(
    *,
    config_path: Path | str | None = None,
    storage_url: str | None = None,
    artifacts: Path | str | None = None,
    data_dir: Path | None = None,
) -> StageContext:
    pipeline = config.load(resolve_config(config_path))
    url = storage.storage_url(storage_url)
    return StageContext(
        pipeline=pipeline,
        storage=storage.open_storage(url),
        storage_url=storage._redact(url),
        artifacts=storage.artifact_store(artifacts),
        data_dir=data_dir,
    )


def run_all(ctx: StageContext, *, force: bool = False) -> dict[str, Any]:
    results = [run_stage(ctx, name, force=force) for name in STAGE_ORDER]
    return {**status(ctx), "runs": results}


def status(ctx: StageContext) -> dict[str, Any]:
    stages = {name: stage_status(ctx, name) for name in STAGE_ORDER}
    final = stages["final"]
    return {
        "pipeline": ctx.pipeline.name,
        "config": ctx.pipeline.path,
        "storage": ctx.storage_url,
        "stages": stages,
        "test_metrics": final.get("test_metrics"),
    }
