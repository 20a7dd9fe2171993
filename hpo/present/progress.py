"""Progress of long work: what trainers report after every evaluation, shown as log lines.

Stages ask for one callback per model they train (:meth:`Progress.member`); the callback
receives each evaluation record. :class:`LogProgress` writes a log line per evaluation.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hpo.training import Callback, EvalRecord

logger = logging.getLogger("hpo.progress")


class Progress(Protocol):
    def member(self, label: str, *, epochs: int) -> Callback: ...


class LogProgress:
    """One log line per evaluation of every model."""

    def member(self, label: str, *, epochs: int) -> Callback:
        def log(record: EvalRecord) -> None:
            logger.info(
                "%s epoch %d/%d step %d: train loss %.4f, val loss %.4f, val acc %.4f",
                label,
                record.epoch,
                epochs,
                record.step,
                record.train_loss,
                record.val_loss,
                record.val_accuracy,
            )

        return log
