"""The Task protocol: what a model predicts, its loss, and how its predictions are scored.

A task owns everything that differs between predicting a class and predicting a number, so the
trainers, stages and presenters never test which one they have (the seam the architecture review
asked for; scikit-learn keeps the same split between classifiers and regressors behind one
estimator API). Targets reach a task the way the trainers hold them: class indices (int64) for
classification, the standardised target (float32) for regression; outputs are the model's raw
outputs ``[..., n_outputs]`` (logits, or one value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from hpo.settings import TrainConfig


@dataclass(frozen=True)
class Evaluation:
    """One model's outputs on rows, reduced: the mean loss, the headline score, and per row the
    prediction (class index, or the standardised value) and the loss."""

    loss: float
    score: float
    pred: torch.Tensor
    per_row: torch.Tensor


class Task(Protocol):
    @property
    def kind(self) -> str:
        """``classification`` or ``regression``."""
        ...

    @property
    def n_outputs(self) -> int:
        """The model's outputs per row: one logit per class, or one value."""
        ...

    @property
    def headline(self) -> str:
        """The metric every evaluation record carries (accuracy, rmse)."""
        ...

    # ------------------------------------------------------------------ training

    def loss(self, out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        """The mean training loss of one model's batch, with ``cfg``'s loss settings."""
        ...

    def stacked_losses(
        self,
        out: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None,
        cfgs: Sequence[TrainConfig],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's mean training loss ``[M]`` and its row count ``[M]`` (outputs
        ``[M, B, n_outputs]``, targets ``[M, B]``, ``mask`` marking real rows)."""
        ...

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per row, what the running training score sums (correct classes; squared errors)."""
        ...

    def running_score(self, total: float, rows: int) -> float:
        """The headline score of ``rows`` rows whose :meth:`hits` sum to ``total``."""
        ...

    # ------------------------------------------------------------------ evaluation

    def rows(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the prediction and the (unweighted) loss."""
        ...

    def evaluate(self, out: torch.Tensor, y: torch.Tensor) -> Evaluation: ...

    def score_rows(self, pred: torch.Tensor, y: torch.Tensor, loss: float) -> float:
        """The headline score of predictions whose mean loss is ``loss``."""
        ...

    def metric(self, name: str, y: npt.NDArray[Any], pred: npt.NDArray[Any]) -> float:
        """``name`` (any metric of this task but ``loss``) of per-row predictions."""
        ...

    def paired_bootstrap(
        self, name: str, y: npt.NDArray[Any], pred_a: npt.NDArray[Any], pred_b: npt.NDArray[Any]
    ) -> tuple[float, float, float]:
        """``metric(a) - metric(b)`` and its 95 % interval over row resamples."""
        ...

    def trivial_score(self, y_train: npt.NDArray[Any], y_val: npt.NDArray[Any]) -> float:
        """The headline score on the validation rows of a model that learned nothing (the
        majority class; the training rows' mean)."""
        ...

    def test_metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Everything the final stage stores about the test rows (JSON-ready)."""
        ...

    def combine(
        self, outputs: Sequence[torch.Tensor], weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """An ensemble's raw outputs from its members' ``[N, n_outputs]``: the log of the mean
        class probabilities (classification), the mean value (regression); ``weights``: a
        weighted mean (a greedy ensemble's selection counts)."""
        ...

    def blend(self, out: torch.Tensor) -> torch.Tensor:
        """A member's outputs where an ensemble averages them (float64): class probabilities,
        or the value; :meth:`unblend` of their (weighted) mean is :meth:`combine`'s result."""
        ...

    def unblend(self, mean: torch.Tensor) -> torch.Tensor:
        """The raw outputs of a mean in :meth:`blend`'s space."""
        ...

    def predictions(self, out: torch.Tensor) -> npt.NDArray[np.float64]:
        """What ``hpo predict`` writes: class probabilities ``[N, C]``; values ``[N]`` in the
        target's units."""
        ...

    def pack_predictions(self, pred: torch.Tensor) -> str:
        """Per-row validation predictions as a compact string for the storage."""
        ...

    def unpack_predictions(self, text: str) -> npt.NDArray[Any]: ...

    def to_record(self) -> dict[str, Any]: ...
