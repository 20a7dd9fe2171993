"""The Kubernetes manifests: valid against Kubernetes' own JSON schemas (kubernetes-validate, offline),
and shaped as documented: PostgreSQL, an init Job, a parallel worker Job running `hpo worker`, the
dashboard behind a ClusterIP service; the password only ever read from a Secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hpo import cli

MANIFESTS = Path(__file__).resolve().parents[1] / "k8s" / "hpo.yaml"
DOCS: list[dict[str, Any]] = list(yaml.safe_load_all(MANIFESTS.read_text()))


@pytest.mark.parametrize("version", ["1.28", "1.30", "1.33"])
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    for doc in DOCS:
        kubernetes_validate.validate(doc, version, strict=True)


def _by(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name)


def test_topology() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in DOCS)
    assert ("Job", "hpo-init") in kinds and ("Job", "hpo-worker") in kinds
    assert ("StatefulSet", "hpo-postgres") in kinds and ("Service", "hpo-postgres") in kinds
    worker = _by("Job", "hpo-worker")["spec"]
    assert worker["parallelism"] >= 2 and worker["completions"] == worker["parallelism"]
    container = worker["template"]["spec"]["containers"][0]
    command = container["command"][-1]
    assert "hpo worker" in command
    args = re.sub(r'"\$HPO_CONFIG"', "quick", command.removeprefix("exec ")).split()
    assert cli.build_parser().parse_args(args[1:]).handler is not None  # a real hpo command line
    assert _by("Service", "hpo-dashboard")["spec"]["type"] == "ClusterIP"


def test_the_password_comes_from_a_secret() -> None:
    text = MANIFESTS.read_text()
    assert "kind: Secret" not in text  # created with kubectl, never committed
    for doc in DOCS:
        for env in re.findall(r"POSTGRES_PASSWORD.*", yaml.safe_dump(doc)):
            assert "value: " not in env or "$(POSTGRES_PASSWORD)" in env
    pg = _by("StatefulSet", "hpo-postgres")["spec"]["template"]["spec"]["containers"][0]["env"]
    password = next(e for e in pg if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "hpo-postgres"
