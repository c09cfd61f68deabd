"""Per-branch encoders that map one pooled feature vector to the shared hidden size."""

from __future__ import annotations

import torch
from torch import nn


class ResidualEncoder(nn.Module):
    """ECMF's encoder: ``h = GELU(W x)``, then ``h + MLP(h)`` (or ``MLP(h)``), LayerNorm, dropout.

    ``residual=False`` keeps every layer and drops only the skip connection; ``norm=False`` drops
    the LayerNorm. Parameters: ``in_dim*d + d`` (projection) ``+ 2*(d*d + d)`` (MLP) ``+ 2*d`` (norm).
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float, residual: bool = True, norm: bool = True):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.block = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.residual = residual
        self.norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        h = h + self.block(h) if self.residual else self.block(h)
        return self.dropout(self.norm(h))


class MLPEncoder(nn.Module):
    """The MER2025 baseline's encoder: dropout on the input, then three Linear+ReLU layers.

    Parameters: ``in_dim*d + d + 2*(d*d + d)``.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
