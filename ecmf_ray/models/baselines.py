"""Baselines: the MER2025 baseline's attention fusion and a concat-MLP (one branch: a unimodal head).

A missing branch arrives as a zero vector (the training-fold mean after standardisation). The
attention fusion also zeroes that branch's hidden vector, so it gets no weight; the concat-MLP
simply sees the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecmf_ray.models.encoders import MLPEncoder


class AttentionFusion(nn.Module):
    """MER2025 baseline "attention": an MLP per branch, one learned weight per branch, weighted sum.

    The weights come from an MLP over the concatenated hidden vectors and are used as they are
    (no softmax), as in the baseline.
    """

    def __init__(self, dims: Sequence[int], num_classes: int, *, hidden: int = 128, dropout: float = 0.6):
        super().__init__()
        self.encoders = nn.ModuleList(MLPEncoder(d, hidden, dropout) for d in dims)
        self.attention_mlp = MLPEncoder(hidden * len(dims), hidden, dropout)
        self.fc_att = nn.Linear(hidden, len(dims))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        mask = present.unsqueeze(-1).to(features[0].dtype)
        hidden = torch.stack([enc(x) for enc, x in zip(self.encoders, features, strict=True)], dim=1) * mask
        weights = self.fc_att(self.attention_mlp(hidden.flatten(1))).unsqueeze(-1) * mask
        return self.classifier((hidden * weights).sum(dim=1))


class ConcatMLP(nn.Module):
    """Concatenated branch features through the baseline MLP encoder, then a linear classifier."""

    def __init__(self, dims: Sequence[int], num_classes: int, *, hidden: int = 128, dropout: float = 0.6):
        super().__init__()
        self.encoder = MLPEncoder(sum(dims), hidden, dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(torch.cat(list(features), dim=1)))
