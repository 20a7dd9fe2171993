"""Your own model in hpo: a residual MLP for tabular rows (family "torch").

hpo calls ``make(n_features, n_outputs, **params)`` with the rows' feature count and the number
of outputs (classes, or 1 for a regressor) and trains the module it returns on standardised
feature rows; the keyword arguments are settings a study file can set (``[defaults] params``)
and tune by name (``choices = { width = [64, 128] }``). See examples/residual_mlp.toml.

The blocks follow Gorishniy et al. (2021), "Revisiting Deep Learning Models for Tabular Data":
``x + Dropout(Linear(Dropout(ReLU(Linear(Norm(x))))))``, then a normalised head.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, expansion: float, dropout: float) -> None:
        super().__init__()
        inner = max(1, round(width * expansion))
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.drop(torch.relu(self.up(self.norm(x))))
        out: torch.Tensor = x + self.drop(self.down(h))
        return out


class ResidualMLP(nn.Module):
    def __init__(
        self, n_features: int, n_outputs: int, width: int, blocks: int, expansion: float, dropout: float
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.blocks = nn.Sequential(*(Block(width, expansion, dropout) for _ in range(blocks)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.blocks(self.inp(x)))
        return out


def make(
    n_features: int,
    n_outputs: int,
    width: int = 128,
    blocks: int = 2,
    expansion: float = 2.0,
    dropout: float = 0.1,
) -> nn.Module:
    """A residual MLP: ``blocks`` residual blocks of ``width`` units (inner width ``width * expansion``)."""
    return ResidualMLP(n_features, n_outputs, width, blocks, expansion, dropout)
