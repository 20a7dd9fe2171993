"""optuna-dashboard: figures and notes saved into studies, and the server.

The pipeline calls :func:`publish` when a stage completes; the figures land in the study's system
attributes through optuna-dashboard's Python API (``save_plotly_graph_object``, ``save_note``)
and show in the dashboard beside Optuna's own plots. Figure ids are fixed, so publishing again
replaces them instead of piling up copies.

**Read-only by default.** optuna-dashboard's HTTP API, unauthenticated, deletes studies, tells
trials, rewrites trial attributes and notes, and uploads or deletes artifacts: anyone who could
reach the port could change what the workers read next (a deleted study is a stage to run again,
a told trial a point never trained). :func:`make_server` therefore wraps the app in
:class:`ReadOnly`, which answers every method but GET and HEAD with 405, unless the caller asks
for writes (``hpo dashboard --allow-writes``). optuna-dashboard 0.21's GET routes only read (the
studies, trials, plots, importances, CSV, artifacts, the schema-migration page); its one schema
upgrade is a POST.
"""

from __future__ import annotations

import logging
import wsgiref.simple_server
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from hpo.present.figures import Figure

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
READ_METHODS = ("GET", "HEAD")
READ_ONLY_MESSAGE = (
    "this dashboard is read-only: it answers GET and HEAD only; "
    "start it with `hpo dashboard --allow-writes` to change studies from it"
)


def publish(study: optuna.Study, figs: list[Figure], note: str) -> list[str]:
    ids = [optuna_dashboard.save_plotly_graph_object(study, fig, graph_object_id=fid) for fid, fig in figs]
    optuna_dashboard.save_note(study, note)
    logger.info("%s: saved %d figure(s) and a note for optuna-dashboard", study.study_name, len(ids))
    return ids


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class ReadOnly:
    """WSGI middleware: GET and HEAD go to ``app``; any other method is answered 405 with an
    ``Allow: GET, HEAD`` header and one line of plain text saying how to allow writes, before
    ``app`` sees the request (see the module docstring for why)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # upper-cased as bottle does before it routes: a lower-case "delete" must not slip past
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in READ_METHODS:
            return self.app(environ, start_response)
        logger.info("refused %s %r: the dashboard is read-only", method, environ.get("PATH_INFO", ""))
        body = (READ_ONLY_MESSAGE + "\n").encode()
        start_response(
            "405 Method Not Allowed",
            [
                ("Allow", ", ".join(READ_METHODS)),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [body]


def make_server(
    storage: optuna.storages.BaseStorage,
    *,
    artifacts: FileSystemArtifactStore | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allow_writes: bool = False,
) -> wsgiref.simple_server.WSGIServer:
    """optuna-dashboard's WSGI app on a bound (not yet serving) server: a port in use fails here,
    before anything is announced. Call ``serve_forever()`` on the result. Read-only
    (:class:`ReadOnly`) unless ``allow_writes``."""
    app: WSGIApplication = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    if not allow_writes:
        app = ReadOnly(app)
    return wsgiref.simple_server.make_server(host, port, app, handler_class=_Handler)
