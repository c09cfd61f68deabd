"""The pooling math, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from ecmf_ray.extract import pooling


def test_select_layers_uses_hf_indexing() -> None:
    states = [torch.full((1, 2, 1), float(i)) for i in range(5)]  # embeddings + 4 layers
    picked = pooling.select_layers(states, [2, 3, -1])
    assert [t[0, 0, 0].item() for t in picked] == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="out of range"):
        pooling.select_layers(states, [5])
    with pytest.raises(ValueError, match="no layers"):
        pooling.select_layers(states, [])


def test_combine_layers_mean_sum_concat() -> None:
    a = torch.tensor([[[1.0, 2.0]]])
    b = torch.tensor([[[3.0, 6.0]]])
    assert pooling.combine_layers([a, b], "mean").tolist() == [[[2.0, 4.0]]]
    assert pooling.combine_layers([a, b], "sum").tolist() == [[[4.0, 8.0]]]
    assert pooling.combine_layers([a, b], "concat").tolist() == [[[1.0, 2.0, 3.0, 6.0]]]
    assert pooling.combined_dim(64, 6, "concat") == 384
    assert pooling.combined_dim(64, 6, "mean") == 64
    with pytest.raises(ValueError):
        pooling.combine_layers([a], "median")


def test_hubert_layers_16_to_21_mean() -> None:
    """The paper's selection: hidden_states[16..21] of 25, averaged."""
    states = [torch.full((1, 3, 2), float(i)) for i in range(25)]
    combined = pooling.combine_layers(pooling.select_layers(states, range(16, 22)), "mean")
    assert torch.allclose(combined, torch.full((1, 3, 2), 18.5))


def test_masked_mean_ignores_padding() -> None:
    values = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [-50.0], [-50.0]]])
    mask = pooling.lengths_to_mask(torch.tensor([2, 1]), 3)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert pooling.masked_mean(values, mask).tolist() == [[2.0], [2.0]]


def test_token_mean_excludes_special_tokens() -> None:
    # [CLS] a b [SEP] [PAD]: only a and b count.
    hidden = torch.tensor([[[10.0], [1.0], [5.0], [20.0], [99.0]]])
    attention = torch.tensor([[1, 1, 1, 1, 0]]).bool()
    special = torch.tensor([[1, 0, 0, 1, 0]]).bool()
    assert pooling.masked_mean(hidden, attention & ~special).tolist() == [[3.0]]


def test_masked_mean_of_nothing_is_nan() -> None:
    out = pooling.masked_mean(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool))
    assert torch.isnan(out).all()


def test_audio_windows_pool_as_one_clip() -> None:
    """Window sums weighted by valid frames equal the mean over the whole clip's frames."""
    frames = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)
    whole = pooling.masked_mean(frames, torch.ones(1, 10, dtype=torch.bool))
    # Two windows of 6 and 4 frames, the second padded to 6.
    windows = torch.tensor([[0.0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 0, 0]]).unsqueeze(-1)
    sums, counts = pooling.masked_sum(windows, pooling.lengths_to_mask(torch.tensor([6, 4]), 6))
    assert counts.tolist() == [6.0, 4.0]
    pooled = pooling.segment_mean(sums, counts, [2])
    assert torch.allclose(pooled, whole)
    assert pooled.item() == pytest.approx(4.5)


def test_segment_mean_per_video() -> None:
    sums = torch.tensor([[4.0], [6.0], [9.0]])
    counts = torch.tensor([2.0, 3.0, 3.0])
    assert pooling.segment_mean(sums, counts, [2, 1]).tolist() == [[2.0], [3.0]]
    with pytest.raises(ValueError):
        pooling.segment_mean(sums, counts, [1])


def test_pool_frames() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, -1.0]])
    assert pooling.pool_frames(x, "mean").tolist() == [2.0, 2.0]
    assert pooling.pool_frames(x, "max").tolist() == [3.0, 5.0]
    with pytest.raises(ValueError):
        pooling.pool_frames(x[:0], "mean")


def test_window_bounds() -> None:
    assert pooling.window_bounds(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert pooling.window_bounds(10, 10) == [(0, 10)]
    assert pooling.window_bounds(0, 10) == []
