"""The MLP: ``[Linear -> norm -> activation -> dropout] * len(hidden) -> Linear``.

The write-up's order, with an optional dropout after each hidden activation; its components come
from the tables in :mod:`hpo.families.mlp.components`. Dropout draws its masks from a generator
of its own, seeded from the training seed, so a run is reproducible and a model trained inside a
stack (:mod:`hpo.families.mlp.stacked`) draws exactly the masks it would draw alone.
"""

from __future__ import annotations

import torch
from torch import nn

from hpo.families.mlp import components
from hpo.settings import ModelConfig
from hpo.training.seeding import seeded

DROPOUT_SEED_OFFSET = 1_000_003  # the dropout stream is seeded apart from init and data order


def dropout_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + DROPOUT_SEED_OFFSET)


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from ``generator`` (shared by a model's layers)."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p = p
        self.generator = generator

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return h
        keep = torch.empty(h.shape, dtype=torch.float32).bernoulli_(1.0 - self.p, generator=self.generator)
        return h * keep.to(h.device, h.dtype) / (1.0 - self.p)


class MLP(nn.Sequential):
    def __init__(self, config: ModelConfig, *, seed: int = 0) -> None:
        act = components.activation(config.activation)
        norm = components.norm(config.norm)
        weight_init = components.init(config.init)
        layers: list[nn.Module] = []
        width = config.n_features
        generator = dropout_generator(seed)
        for h in config.hidden:
            layers.append(nn.Linear(width, h))
            if norm.module is not None:
                layers.append(norm.module(h))
            layers.append(act.module())
            if config.dropout > 0:
                layers.append(SeededDropout(config.dropout, generator))
            width = h
        layers.append(nn.Linear(width, config.n_outputs))
        super().__init__(*layers)
        self.config = config
        if weight_init is not None:  # else PyTorch's own Linear initialisation
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    weight_init(module.weight, act)
                    nn.init.zeros_(module.bias)


def build_model(config: ModelConfig, *, seed: int) -> MLP:
    """The model with weights drawn from ``seed`` (the global RNG is left untouched)."""
    with seeded(seed):
        return MLP(config, seed=seed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
