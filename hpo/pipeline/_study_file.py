"""A study file named by its path, or by a bare name looked up in the studies folders."""

from __future__ import annotations

from pathlib import Path

DEFAULT_STUDY_FILE = "msd_decade"
_PACKAGED_STUDIES = Path(__file__).resolve().parents[2] / "studies"


def resolve_study_file(value: Path | str | None) -> Path:
    """A study file path, or a bare name (``quick``) looked up in ``./studies`` and then in the
    ``studies/`` folder beside the installed package (a source checkout)."""
    text = str(value or DEFAULT_STUDY_FILE)
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        return path
    for folder in (Path("studies"), _PACKAGED_STUDIES):
        candidate = folder / f"{text}.toml"
        if candidate.exists():
            return candidate
    return Path("studies") / f"{text}.toml"  # the loader names it in its error
