"""The MLP's components, one table each, keyed by the settings' literal values and shared by the
one-model :class:`~hpo.families.mlp.model.MLP` and the stacked trainer: an unknown name raises
(``lookup``) instead of falling back to some other component.

* ``ACTIVATIONS``: the layer (``nn.Module``), the function the stack applies, and the
  nonlinearity Kaiming initialisation assumes for it.
* ``NORMS``: the layer by width (None: no normalisation), and the stacked form over
  ``[M, B, width]`` (per-member affine and, for BatchNorm, per-member running statistics
  updated over each member's real rows).
* ``INITS``: how a Linear layer's weight is drawn (None: PyTorch's own initialisation); biases
  start at zero for the non-default ones.

The optimizers' table is :data:`hpo.training.optim.OPTIMIZERS` (every torch family trains with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from hpo.settings import lookup

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LN_EPS = 1e-5


@dataclass(frozen=True)
class ActivationSpec:
    module: Callable[[], nn.Module]
    fn: Callable[[torch.Tensor], torch.Tensor]
    kaiming: Literal["relu", "leaky_relu"]  # the nonlinearity Kaiming initialisation assumes


ACTIVATIONS: dict[str, ActivationSpec] = {
    "relu": ActivationSpec(nn.ReLU, F.relu, "relu"),
    "leaky_relu": ActivationSpec(nn.LeakyReLU, F.leaky_relu, "leaky_relu"),
    "gelu": ActivationSpec(nn.GELU, F.gelu, "relu"),
}


@dataclass
class NormState:
    """One stacked norm layer's tensors: affine ``[M, 1, width]``, running statistics ``[M, width]``."""

    gamma: torch.Tensor
    beta: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


StackedNorm = Callable[[torch.Tensor, NormState, torch.Tensor | None, bool], torch.Tensor]


def _stacked_layernorm(
    h: torch.Tensor, s: NormState, mask: torch.Tensor | None, training: bool
) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS) * s.gamma + s.beta


def _stacked_batchnorm(
    h: torch.Tensor, s: NormState, mask: torch.Tensor | None, training: bool
) -> torch.Tensor:
    """BatchNorm1d per member: batch statistics over the member's real rows in training (running
    statistics updated as PyTorch does, with the unbiased variance), running ones in evaluation."""
    g, b, rm, rv = s.gamma, s.beta, s.running_mean, s.running_var
    if not training:
        return (h - rm.unsqueeze(-2)) / torch.sqrt(rv.unsqueeze(-2) + BN_EPS) * g + b
    if mask is None:  # every row real: PyTorch's own kernel, members as channel blocks
        m, rows, width = h.shape
        flat = h.transpose(0, 1).reshape(rows, m * width)
        out = F.batch_norm(
            flat,
            rm.view(-1),
            rv.view(-1),
            g.reshape(-1),
            b.reshape(-1),
            training=True,
            momentum=BN_MOMENTUM,
            eps=BN_EPS,
        )
        return out.view(rows, m, width).transpose(0, 1)
    h32 = h.float()
    w = mask.unsqueeze(-1)
    cnt = mask.sum(-1, keepdim=True).unsqueeze(-1)  # [M, 1, 1]
    mean = (h32 * w).sum(-2, keepdim=True) / cnt
    var = (((h32 - mean) * w) ** 2).sum(-2, keepdim=True) / cnt
    with torch.no_grad():
        unbiased = var * cnt / (cnt - 1).clamp(min=1)
        rm.mul_(1 - BN_MOMENTUM).add_(mean.squeeze(-2), alpha=BN_MOMENTUM)
        rv.mul_(1 - BN_MOMENTUM).add_(unbiased.squeeze(-2), alpha=BN_MOMENTUM)
    return ((h32 - mean) / torch.sqrt(var + BN_EPS)).to(h.dtype) * g + b


@dataclass(frozen=True)
class NormSpec:
    module: Callable[[int], nn.Module] | None  # by width; None: no normalisation layer
    stacked: StackedNorm | None


NORMS: dict[str, NormSpec] = {
    "none": NormSpec(None, None),
    "batchnorm": NormSpec(nn.BatchNorm1d, _stacked_batchnorm),
    "layernorm": NormSpec(nn.LayerNorm, _stacked_layernorm),
}

WeightInit = Callable[[torch.Tensor, ActivationSpec], object]

INITS: dict[str, WeightInit | None] = {
    "default": None,
    "xavier_uniform": lambda w, act: nn.init.xavier_uniform_(w),
    "kaiming_normal": lambda w, act: nn.init.kaiming_normal_(w, nonlinearity=act.kaiming),
}


def activation(name: str) -> ActivationSpec:
    return lookup(ACTIVATIONS, name, "activation")


def norm(name: str) -> NormSpec:
    return lookup(NORMS, name, "norm")


def init(name: str) -> WeightInit | None:
    return lookup(INITS, name, "init")
