"""Layer selection and masked pooling: the small pure functions behind every feature vector.

Everything pools in float32 whatever the model's compute dtype, so fp16/bf16 runs only differ by the
encoder's own rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LAYER_COMBINES: tuple[str, ...] = ("mean", "sum", "concat")
FRAME_POOLINGS: tuple[str, ...] = ("mean", "max")


def layer_indices(n_states: int, layers: Sequence[int]) -> list[int]:
    """Validated hidden-state indices (HF layout: 0 is the embeddings, -1 the last layer)."""
    picked = [int(layer) for layer in layers]
    if not picked:
        raise ValueError("no layers selected")
    for layer in picked:
        if not -n_states <= layer < n_states:
            raise ValueError(f"layer {layer} out of range: the model has hidden states 0..{n_states - 1}")
    return picked


def select_layers(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
    """``hidden_states[i]`` for each configured layer."""
    return [hidden_states[i] for i in layer_indices(len(hidden_states), layers)]


def combine_layers(selected: Sequence[torch.Tensor], mode: str) -> torch.Tensor:
    """Merge per-layer ``(..., D)`` tensors: ``mean`` / ``sum`` keep D, ``concat`` gives ``len * D``."""
    stacked = [t.float() for t in selected]
    if mode == "mean":
        return torch.stack(stacked).mean(dim=0)
    if mode == "sum":
        return torch.stack(stacked).sum(dim=0)
    if mode == "concat":
        return torch.cat(stacked, dim=-1)
    raise ValueError(f"unknown layer combine {mode!r}; expected one of {LAYER_COMBINES}")


def combined_dim(hidden: int, n_layers: int, mode: str) -> int:
    return hidden * n_layers if mode == "concat" else hidden


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of ``values`` (B, T, D) over positions where ``mask`` (B, T) is true, and the counts (B,)."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    return (values.float() * weights).sum(dim=1), weights.sum(dim=(1, 2))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions only (padding and masked tokens excluded); NaN for a row with none."""
    total, count = masked_sum(values, mask)
    return total / count.unsqueeze(-1)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, max_len)`` bool mask with the first ``lengths[b]`` positions true."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def segment_mean(sums: torch.Tensor, counts: torch.Tensor, segments: Sequence[int]) -> torch.Tensor:
    """Combine consecutive partial sums into one mean per segment.

    ``sums`` (N, D) and ``counts`` (N,) are per-window masked sums; ``segments`` gives how many
    consecutive windows belong to each output row. A video's audio windows are thus weighted by their
    valid frames, exactly as if the whole clip had been pooled at once.
    """
    out = []
    start = 0
    for size in segments:
        part = slice(start, start + int(size))
        out.append(sums[part].sum(dim=0) / counts[part].sum())
        start += int(size)
    if start != len(sums):
        raise ValueError(f"segments cover {start} rows, got {len(sums)}")
    return torch.stack(out) if out else sums.new_zeros((0, sums.shape[-1]))


def pool_frames(embeddings: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-frame embeddings ``(K, D)`` of one video to one ``(D,)`` vector."""
    if embeddings.shape[0] == 0:
        raise ValueError("no frames to pool")
    x = embeddings.float()
    if mode == "mean":
        return x.mean(dim=0)
    if mode == "max":
        return x.max(dim=0).values
    raise ValueError(f"unknown frame pooling {mode!r}; expected one of {FRAME_POOLINGS}")


def window_bounds(n_samples: int, window: int) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges cutting a clip into windows of at most ``window`` samples."""
    if window <= 0:
        raise ValueError("window must be positive")
    return [(start, min(start + window, n_samples)) for start in range(0, n_samples, window)]
