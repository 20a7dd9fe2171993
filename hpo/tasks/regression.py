"""Regression: one value per row, the mean squared error of the standardised target, and the
metrics in the target's own units.

The target is standardised with the mean and standard deviation of the training rows (the
task's ``mean`` and ``std``); models are trained and evaluated on the standardised values, so
the loss ("loss" as a stage metric) is the mean squared error in standard deviations, while
``rmse`` and ``mae`` are reported in the target's units (``std`` times the standardised ones) and
``r2`` is unchanged by the scaling. k-fold CV standardises every fold with the training rows'
statistics (the held-out fold's share of them moves no candidate against another); the features
keep a scaler per fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from hpo import evidence
from hpo.settings import TrainConfig
from hpo.tasks._protocol import Evaluation
from hpo.tuning import records

#: bins of the predicted-vs-true and residual summaries the final stage stores for its figures
SCATTER_BINS = 40
RESIDUAL_BINS = 60


def _out(out: torch.Tensor) -> torch.Tensor:
    """``[..., 1]`` outputs as ``[...]`` values."""
    return out[..., 0]


@dataclass(frozen=True)
class Regression:
    mean: float
    std: float

    kind = "regression"
    headline = "rmse"
    n_outputs = 1

    # ------------------------------------------------------------------ training

    def loss(self, out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        return torch.mean((_out(out) - y) ** 2)

    def stacked_losses(
        self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, cfgs: Sequence[TrainConfig]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        se = (_out(out) - y) ** 2  # [M, B]
        if mask is None:
            return se.mean(1), torch.full((se.shape[0],), float(se.shape[1]), device=out.device)
        counts = mask.sum(1)
        return (se * mask).sum(1) / counts.clamp(min=1), counts

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((_out(out) - y) ** 2).double()

    def running_score(self, total: float, rows: int) -> float:
        return float(np.sqrt(total / max(rows, 1)) * self.std)

    # ------------------------------------------------------------------ evaluation

    def rows(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = _out(out)
        return pred, (pred - y) ** 2

    def evaluate(self, out: torch.Tensor, y: torch.Tensor) -> Evaluation:
        pred, se = self.rows(out, y)
        loss = float(se.double().mean())
        return Evaluation(loss=loss, score=self.score_rows(pred, y, loss), pred=pred, per_row=se)

    def score_rows(self, pred: torch.Tensor, y: torch.Tensor, loss: float) -> float:
        return float(np.sqrt(loss) * self.std)

    def units(self, standardised: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Standardised values back in the target's units."""
        return np.asarray(standardised, dtype=np.float64) * self.std + self.mean

    def standardise(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Values in the target's units as the models see them (the inverse of :meth:`units`)."""
        return ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def metric(self, name: str, y: npt.NDArray[Any], pred: npt.NDArray[Any]) -> float:
        e = np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64)
        if name == "rmse":
            return float(np.sqrt(np.mean(e**2)) * self.std)
        if name == "mae":
            return float(np.mean(np.abs(e)) * self.std)
        if name == "r2":
            t = np.asarray(y, dtype=np.float64)
            total = float(np.sum((t - t.mean()) ** 2))
            return 1.0 - float(np.sum(e**2)) / total if total > 0 else 0.0
        raise KeyError(f"{name!r} is not a regression metric of predicted values")

    def paired_bootstrap(
        self, name: str, y: npt.NDArray[Any], pred_a: npt.NDArray[Any], pred_b: npt.NDArray[Any]
    ) -> tuple[float, float, float]:
        y, a, b = (np.asarray(v, dtype=np.float64) for v in (y, pred_a, pred_b))
        per_row = None
        if name == "mae":
            per_row = lambda t, p: np.abs(p - t) * self.std  # noqa: E731
        return evidence.paired_bootstrap(
            y, a, b, metric=lambda t, p: self.metric(name, t, p), per_row=per_row
        )

    def trivial_score(self, y_train: npt.NDArray[Any], y_val: npt.NDArray[Any]) -> float:
        """The RMSE of predicting the training rows' mean for every validation row."""
        t = np.asarray(y_val, dtype=np.float64)
        return float(np.sqrt(np.mean((t - float(np.mean(y_train))) ** 2)) * self.std)

    def test_metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """RMSE, MAE and R² in the target's units, the loss, the RMSE of the training mean as a
        constant prediction, and binned summaries for the predicted-vs-true and residual figures."""
        pred = _out(out.double()).numpy()
        t = y.double().numpy()
        true_u, pred_u = self.units(t), self.units(pred)
        residual = pred_u - true_u
        lo = float(min(true_u.min(), pred_u.min()))
        hi = float(max(true_u.max(), pred_u.max()))
        if hi <= lo:
            hi = lo + 1.0
        counts, edges, _ = np.histogram2d(true_u, pred_u, bins=SCATTER_BINS, range=[[lo, hi], [lo, hi]])
        r_lo, r_hi = np.percentile(residual, [0.5, 99.5])
        if r_hi <= r_lo:
            r_hi = r_lo + 1.0
        r_counts, r_edges = np.histogram(
            np.clip(residual, r_lo, r_hi), bins=RESIDUAL_BINS, range=(r_lo, r_hi)
        )
        return {
            "loss": float(np.mean((pred - t) ** 2)),
            "rmse": self.metric("rmse", t, pred),
            "mae": self.metric("mae", t, pred),
            "r2": self.metric("r2", t, pred),
            "constant_rmse": float(np.sqrt(np.mean((true_u - self.mean) ** 2))),
            "rows": int(t.size),
            "scatter": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
            "residuals": {"edges": r_edges.tolist(), "counts": r_counts.astype(int).tolist()},
        }

    def combine(
        self, outputs: Sequence[torch.Tensor], weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """The members' (weighted) mean (standardised) value."""
        if not outputs:
            raise ValueError("an ensemble needs at least one member")
        stacked = torch.stack([o.double() for o in outputs])
        if weights is None:
            return stacked.mean(dim=0).float()
        w = torch.as_tensor(weights, dtype=torch.float64)
        return ((w / w.sum()).view(-1, *([1] * (stacked.dim() - 1))) * stacked).sum(dim=0).float()

    def blend(self, out: torch.Tensor) -> torch.Tensor:
        return out.double()

    def unblend(self, mean: torch.Tensor) -> torch.Tensor:
        return mean.float()

    def predictions(self, out: torch.Tensor) -> npt.NDArray[np.float64]:
        return self.units(_out(out.double()).numpy())

    def pack_predictions(self, pred: torch.Tensor) -> str:
        return records.pack_floats(pred.numpy(), dtype=np.float32)

    def unpack_predictions(self, text: str) -> npt.NDArray[Any]:
        return records.unpack_floats(text)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std}
