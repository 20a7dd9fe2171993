from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from hpo.data import _download
from hpo.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    requests_seen: ClassVar[list[str | None]] = []
    fail_after: int | None = None

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        type(self).requests_seen.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = type(self).fail_after
        if limit is not None:
            type(self).fail_after = None
            self.wfile.write(body[:limit])
            self.wfile.flush()
            self.connection.close()  # the connection drops mid-download
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _RangeHandler.requests_seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/YearPredictionMSD.txt.zip"
    httpd.shutdown()


def test_download_goes_to_the_cache(server: str, tmp_path: Path) -> None:
    path = _download.fetch_msd(cache_dir=tmp_path, url=server, progressbar=False)
    assert path.read_bytes() == PAYLOAD and path.parent == tmp_path
    again = _download.fetch_msd(cache_dir=tmp_path, url=server, progressbar=False)
    assert again == path and len(_RangeHandler.requests_seen) == 1  # served from the cache


def test_interrupted_download_resumes(server: str, tmp_path: Path) -> None:
    _RangeHandler.fail_after = 300_000
    with pytest.raises(DataError, match=r"cannot download .*--file PATH"):
        _download.fetch_msd(cache_dir=tmp_path, url=server, progressbar=False)
    partial = tmp_path / (_download.MSD_FILENAME + ".part")
    kept = partial.stat().st_size
    assert 0 < kept <= 300_000  # whole chunks received before the drop are kept
    path = _download.fetch_msd(cache_dir=tmp_path, url=server, progressbar=False)
    assert path.read_bytes() == PAYLOAD
    assert _RangeHandler.requests_seen[-1] == f"bytes={kept}-"
    assert not partial.exists()


def test_unreachable_server_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="check the network, or download it elsewhere and pass it with --file"
    ):
        _download.fetch_msd(cache_dir=tmp_path, url="http://127.0.0.1:9/x.zip", progressbar=False)
