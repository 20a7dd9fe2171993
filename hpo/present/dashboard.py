"""optuna-dashboard: figures and notes saved into studies, and the server.

The pipeline calls :func:`publish` when a stage completes; the figures land in the study's system
attributes through optuna-dashboard's Python API (``save_plotly_graph_object``, ``save_note``)
and show in the dashboard beside Optuna's own plots. Figure ids are fixed, so publishing again
replaces them instead of piling up copies.
"""

from __future__ import annotations

import logging
import wsgiref.simple_server
from typing import Any

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from hpo.present.figures import Figure

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def publish(study: optuna.Study, figs: list[Figure], note: str) -> list[str]:
    ids = [optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=fid) for fid, fig in figs]
    optuna_dashboard.save_note(study, note)
    logger.info("%s: saved %d figure(s) and a note for optuna-dashboard", study.study_name, len(ids))
    return ids


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def make_server(
    storage: optuna.storages.BaseStorage,
    *,
    artifacts: FileSystemArtifactStore | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> wsgiref.simple_server.WSGIServer:
    """optuna-dashboard's WSGI app on a bound (not yet serving) server: a port in use fails here,
    before anything is announced. Call ``serve_forever()`` on the result."""
    app = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    return wsgiref.simple_server.make_server(host, port, app, handler_class=_Handler)
