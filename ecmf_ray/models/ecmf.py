"""ECMF's fusion: an encoder and a modality token per branch, self-attention over branch tokens.

Missing branches (no feature for a video) are left out of attention through the key padding mask
and out of the pooled mean; a video with no branch at all is treated as having all of them (its
inputs are zeros, i.e. the training-fold mean), so the output is always finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecmf_ray.models.encoders import ResidualEncoder

POOLINGS = ("attention", "mean")


def fill_empty_rows(present: torch.Tensor) -> torch.Tensor:
    """``present`` with all-False rows set to all-True (attention over no key is undefined)."""
    return present | ~present.any(dim=1, keepdim=True)


def masked_mean(tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over the branch axis of ``(B, M, d)`` tokens, counting present branches only."""
    weights = present.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class ECMFFusion(nn.Module):
    """Residual encoders, modality tokens, ``attention_layers`` Transformer layers, masked mean, classifier.

    Switches: ``residual`` and ``norm`` (inside each encoder), ``modality_token`` (a learnable
    vector added to each branch token, the paper's analogue of a positional encoding) and
    ``pooling`` ("attention": self-attention then mean; "mean": branch tokens averaged, no
    attention layers at all).
    """

    def __init__(
        self,
        dims: Sequence[int],
        num_classes: int,
        *,
        hidden: int = 128,
        dropout: float = 0.6,
        heads: int = 2,
        attention_layers: int = 2,
        ffn_mult: int = 4,
        residual: bool = True,
        modality_token: bool = True,
        norm: bool = True,
        pooling: str = "attention",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.encoders = nn.ModuleList(ResidualEncoder(d, hidden, dropout, residual, norm) for d in dims)
        self.modality_tokens = nn.Parameter(torch.randn(len(dims), hidden) * 0.02) if modality_token else None
        self.attention = None
        if pooling == "attention" and attention_layers > 0:
            layer = nn.TransformerEncoderLayer(
                hidden, heads, hidden * ffn_mult, dropout, activation="gelu", batch_first=True
            )
            self.attention = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([enc(x) for enc, x in zip(self.encoders, features, strict=True)], dim=1)
        if self.modality_tokens is not None:
            tokens = tokens + self.modality_tokens
        present = fill_empty_rows(present)
        if self.attention is not None:
            tokens = self.attention(tokens, src_key_padding_mask=~present)
        return self.classifier(masked_mean(tokens, present))
