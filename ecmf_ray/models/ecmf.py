"""ECMF's fusion (paper 3.3): an encoder and a Modal-Token per branch, self-attention over the sequence.

The sequence the attention layers see, for ``M`` branches: with ``modality_token="prepend"`` (the
paper: "a learnable Modal-Token is prepended to the feature sequence") it is ``[t_1 .. t_M, h_1 .. h_M]``,
``2M`` elements, where ``t_b`` is branch ``b``'s learnable token and ``h_b`` its encoded feature;
with ``"add"`` it is ``[h_1 + t_1 .. h_M + t_M]`` (the token as a per-branch bias, like a positional
encoding added in place); with ``"none"`` it is ``[h_1 .. h_M]``. The classifier reads the mean of
the attention outputs over every element of a present branch (its feature and, with prepend, its token).

Self-attention is order-blind, so prepended tokens alone would be shared "register" elements, tied to
no branch. ``prepend`` ties them: the first attention layer attends within each branch's pair
``[t_b, h_b]`` only (the token is prepended to its own branch's sequence), so ``h_b`` comes out marked
by ``t_b`` and ``t_b`` as a summary of ``h_b``; the later layers attend across every element. The
swap probe shows the tie: with identical encoders, swapping two branches' inputs changes the logits
of ``prepend`` and ``add`` and leaves those of ``none`` as they were.

Missing branches (no feature for a video) are left out of attention through the key padding mask
and out of the pooled mean, token and feature alike (a missing branch's pair attends only to itself in
the first layer, so it reaches nothing); a video with no branch at all is treated as having all of
them (its inputs are zeros, i.e. the training-fold mean), so the output is always finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecmf_ray.models.encoders import ResidualEncoder

POOLINGS = ("attention", "mean")
MODALITY_TOKENS = ("prepend", "add", "none")


def fill_empty_rows(present: torch.Tensor) -> torch.Tensor:
    """``present`` with all-False rows set to all-True (attention over no key is undefined)."""
    return present | ~present.any(dim=1, keepdim=True)


def masked_mean(tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over the branch axis of ``(B, M, d)`` tokens, counting present branches only."""
    weights = present.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def pair_mask(branches: int) -> torch.Tensor:
    """``(2M, 2M)`` attention mask of ``[t_1 .. t_M, h_1 .. h_M]``: True where element ``i`` may not attend
    to ``j``, i.e. unless both belong to the same branch (``i % M == j % M``)."""
    branch = torch.arange(2 * branches) % branches
    return branch.unsqueeze(0) != branch.unsqueeze(1)


class ECMFFusion(nn.Module):
    """Residual encoders, modality tokens, ``attention_layers`` Transformer layers, masked mean, classifier.

    Switches: ``residual`` and ``norm`` (inside each encoder), ``modality_token`` (``prepend``: one
    learnable token per branch as its own sequence element, tied to its branch by a first attention
    layer within each ``[t_b, h_b]`` pair; ``add``: the token added to the branch's vector; ``none``)
    and ``pooling`` ("attention": self-attention then mean; "mean": the sequence averaged, no attention
    layers at all). Tokens start at the scale of the encoded features (unit variance, as LayerNorm
    leaves them), so the mark is not drowned by the features it marks.
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
        modality_token: str = "prepend",
        norm: bool = True,
        pooling: str = "attention",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if modality_token not in MODALITY_TOKENS:
            raise ValueError(
                f"model.modality_token must be one of {', '.join(MODALITY_TOKENS)}, not {modality_token!r}"
            )
        self.modality_token = modality_token
        self.encoders = nn.ModuleList(ResidualEncoder(d, hidden, dropout, residual, norm) for d in dims)
        self.modality_tokens = (
            nn.Parameter(torch.randn(len(dims), hidden)) if modality_token != "none" else None
        )
        self.attention = None
        if pooling == "attention" and attention_layers > 0:
            layer = nn.TransformerEncoderLayer(
                hidden, heads, hidden * ffn_mult, dropout, activation="gelu", batch_first=True
            )
            self.attention = nn.TransformerEncoder(layer, attention_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack([enc(x) for enc, x in zip(self.encoders, features, strict=True)], dim=1)
        present = fill_empty_rows(present)
        if self.modality_token == "add":
            tokens = tokens + self.modality_tokens
        elif self.modality_token == "prepend":
            prefix = self.modality_tokens.unsqueeze(0).expand(len(tokens), -1, -1)
            tokens = torch.cat([prefix, tokens], dim=1)
            present = torch.cat([present, present], dim=1)  # a missing branch's token is masked too
        if self.attention is not None:
            tokens = self.attend(tokens, present)
        return self.classifier(masked_mean(tokens, present))

    def attend(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The attention layers over the sequence; with ``prepend`` the first one within each branch's pair."""
        layers = list(self.attention.layers)
        if self.modality_token == "prepend":
            # No padding mask here: a missing branch's pair attends to itself (finite) and to nothing else.
            mask = pair_mask(len(self.encoders)).to(tokens.device)
            tokens = layers.pop(0)(tokens, src_mask=mask)
        for layer in layers:
            tokens = layer(tokens, src_key_padding_mask=~present)
        return tokens
