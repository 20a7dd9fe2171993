"""The Kubernetes manifests: valid against Kubernetes' own JSON schemas (kubernetes-validate, offline),
and shaped as documented: PostgreSQL, an init Job, a parallel worker Job running `hpo worker`, the
dashboard behind a ClusterIP service; the passwords only ever read from a Secret and never put in a
URL; the dashboard connects as the read-only role that PostgreSQL's init script makes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from hpo import cli
from hpo.tuning import storage

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "k8s" / "hpo.yaml"
INITDB_SCRIPT = REPO / "docker" / "initdb" / "10-hpo-reader.sh"
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


def _containers() -> list[dict[str, Any]]:
    return [
        c
        for d in DOCS
        if d["kind"] in ("Job", "Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_no_password_in_a_url_and_the_dashboard_reads_as_hpo_reader() -> None:
    """HPO_STORAGE names the role only; HPO_STORAGE_PASSWORD comes from the Secret: the workers'
    role's key for init and workers, the read-only role's for the dashboard."""
    roles = {}
    for container in _containers():
        env = _env(container)
        if "HPO_STORAGE" not in env:
            continue
        url = env["HPO_STORAGE"]["value"]
        assert storage.redact(url) == url and "$(" not in url, url  # nothing to hide: no password
        ref = env["HPO_STORAGE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "hpo-postgres"
        roles[container["name"]] = (make_url(url).username, ref["key"])
    assert roles == {
        "init": ("hpo", "password"),
        "worker": ("hpo", "password"),
        "dashboard": ("hpo_reader", "reader-password"),
    }
    command = _by("Deployment", "hpo-dashboard")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    args = cli.build_parser().parse_args(command.removeprefix("exec ").split()[1:])
    assert args.handler is not None and not args.allow_writes  # read-only


def test_postgres_makes_the_read_only_role_with_the_compose_script() -> None:
    pod = _by("StatefulSet", "hpo-postgres")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ref = _env(container)["HPO_READER_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "hpo-postgres", "key": "reader-password"}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/docker-entrypoint-initdb.d")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["defaultMode"] & 0o111  # executable: run by the entrypoint, not sourced
    scripts = _by("ConfigMap", volume["configMap"]["name"])["data"]
    assert scripts == {"10-hpo-reader.sh": INITDB_SCRIPT.read_text()}  # the same as compose's
