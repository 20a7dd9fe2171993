"""Fetching UCI's ``YearPredictionMSD.txt.zip`` with pooch.

Pooch handles the cache directory, hash bookkeeping and the atomic move into the cache; its
stock ``HTTPDownloader`` restarts an interrupted 211 MB download from zero, so this module gives
pooch a downloader that keeps the partial file and resumes it with an HTTP ``Range`` request.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pooch
import requests

from hpo.errors import DataError

logger = logging.getLogger(__name__)

MSD_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/00203/YearPredictionMSD.txt.zip"
MSD_FILENAME = "YearPredictionMSD.txt.zip"
_CHUNK = 1 << 16


class ResumableHTTPDownloader:
    """A pooch downloader that resumes from ``<cache>/<name>.part`` after an interruption."""

    def __init__(self, *, partial: Path, progressbar: bool = True, timeout: float = 60.0) -> None:
        self.partial = partial
        self.progressbar = progressbar
        self.timeout = timeout

    def __call__(self, url: str, output_file: str | Any, pooch_obj: Any, check_only: bool = False) -> Any:
        if check_only:
            response = requests.head(url, allow_redirects=True, timeout=self.timeout)
            return response.status_code == 200
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        have = self.partial.stat().st_size if self.partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as response:
            if response.status_code == 416:  # the partial file is already complete
                pass
            else:
                response.raise_for_status()
                if have and response.status_code != 206:  # server ignored the range: start over
                    have = 0
                mode = "ab" if have else "wb"
                total = int(response.headers.get("content-length", 0)) + have
                progress = _progress(total, have) if self.progressbar else None
                with self.partial.open(mode) as fh:
                    for chunk in response.iter_content(chunk_size=_CHUNK):
                        fh.write(chunk)
                        if progress is not None:
                            progress.update(len(chunk))
                if progress is not None:
                    progress.close()
        shutil.move(str(self.partial), str(output_file))
        return None


def _progress(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm  # pooch's own progress-bar dependency

    return tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, desc=MSD_FILENAME)


def fetch_msd(*, cache_dir: Path, url: str = MSD_URL, progressbar: bool = True) -> Path:
    """Download (or find in the cache) the UCI zip; return its path."""
    downloader = ResumableHTTPDownloader(
        partial=cache_dir / (MSD_FILENAME + ".part"), progressbar=progressbar
    )
    try:
        path = pooch.retrieve(
            url=url,
            known_hash=None,
            fname=MSD_FILENAME,
            path=cache_dir,
            downloader=downloader,
        )
    except (requests.RequestException, OSError) as exc:
        raise DataError(
            f"cannot download {url} ({type(exc).__name__}: {exc}); check the network, or "
            f"download it elsewhere and pass it with --file PATH (a .zip or .txt)"
        ) from exc
    return Path(path)
