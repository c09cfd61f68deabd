"""The model registry: paper-sized parameter count, ablation switches, baselines, missing branches."""

import pytest
import torch
from torch import nn

from ecmf_ray.models import build_model, count_parameters
from ecmf_ray.models.ecmf import masked_mean, pair_mask

PAPER = {
    "name": "ecmf",
    "branches": ["frame", "face", "audio", "text"],
    "hidden": 128,
    "dropout": 0.6,
    "heads": 2,
    "attention_layers": 2,
    "ffn_mult": 4,
    "residual": True,
    "modality_token": "prepend",
    "norm": True,
    "pooling": "attention",
}
# CLIP-L image_embeds (frame, face), HuBERT-L layers combined by mean, RoBERTa-large.
PAPER_DIMS = [768, 768, 1024, 1024]
SMALL_DIMS = [12, 12, 16, 16]


def small(**overrides):
    return {**PAPER, "hidden": 16, "ffn_mult": 2, **overrides}


def inputs(dims, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d, generator=g) for d in dims], torch.ones(batch, len(dims), dtype=torch.bool)


def test_paper_sized_ecmf_parameter_count():
    """The paper's fusion: prepended Modal-Tokens, one hidden-sized vector per branch."""
    d, c, m, ff, layers = 128, 6, 4, 4 * 128, 2
    encoders = sum(D * d + d for D in PAPER_DIMS) + m * (
        2 * (d * d + d) + 2 * d
    )  # proj; MLP block; LayerNorm
    tokens = m * d
    attention_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d)
    classifier = d * c + c
    expected = encoders + tokens + layers * attention_layer + classifier
    assert expected == 990_214
    assert count_parameters(build_model(PAPER, PAPER_DIMS)) == expected
    # Adding the token in place has the same parameters; no token has m * d fewer.
    assert count_parameters(build_model({**PAPER, "modality_token": "add"}, PAPER_DIMS)) == expected
    assert count_parameters(build_model({**PAPER, "modality_token": "none"}, PAPER_DIMS)) == expected - tokens


def test_paper_sized_baseline_parameter_counts():
    d, c, m = 128, 6, 4
    mlp = lambda n_in: n_in * d + d + 2 * (d * d + d)  # noqa: E731 - the baseline's 3-layer encoder
    mer = sum(mlp(D) for D in PAPER_DIMS) + mlp(m * d) + (d * m + m) + (d * c + c)
    assert count_parameters(build_model({**PAPER, "name": "mer_attention"}, PAPER_DIMS)) == mer
    concat = mlp(sum(PAPER_DIMS)) + d * c + c
    assert count_parameters(build_model({**PAPER, "name": "concat_mlp"}, PAPER_DIMS)) == concat
    uni = mlp(1024) + d * c + c
    assert count_parameters(build_model({**PAPER, "name": "unimodal", "branches": ["audio"]}, [1024])) == uni


@pytest.mark.parametrize("name", ["ecmf", "mer_attention", "concat_mlp"])
def test_missing_branches_give_finite_outputs(name):
    model = build_model(small(name=name), SMALL_DIMS).eval()
    features, present = inputs(SMALL_DIMS)
    present[0] = False  # a video with no feature at all
    present[1, 2] = False
    logits = model(features, present)
    assert logits.shape == (5, 6) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["ecmf", "mer_attention"])
def test_an_absent_branch_does_not_affect_the_prediction(name):
    model = build_model(small(name=name), SMALL_DIMS).eval()
    features, present = inputs(SMALL_DIMS)
    present[:, 1] = False
    changed = [f.clone() for f in features]
    changed[1] = changed[1] * 100 + 7
    torch.testing.assert_close(model(features, present), model(changed, present))
    present[:, 1] = True
    assert not torch.allclose(model(features, present), model(changed, present))


def test_residual_switch_only_drops_the_skip_connection():
    on, off = build_model(small(), SMALL_DIMS), build_model(small(residual=False), SMALL_DIMS)
    assert count_parameters(on) == count_parameters(off)
    off.load_state_dict(on.state_dict())
    for model in (on, off):
        for encoder in model.encoders:  # silence the MLP block
            nn.init.zeros_(encoder.block[-1].weight)
            nn.init.zeros_(encoder.block[-1].bias)
    x = torch.randn(4, SMALL_DIMS[0])
    on_out, off_out = on.encoders[0].eval()(x), off.encoders[0].eval()(x)
    assert on_out.std(dim=0).sum() > 0  # the skip path still carries the input
    torch.testing.assert_close(off_out, off_out[:1].expand_as(off_out))  # nothing left but a constant


def test_modality_token_switch():
    prepend, add, off = (
        build_model(small(modality_token=m), SMALL_DIMS).eval() for m in ("prepend", "add", "none")
    )
    assert off.modality_tokens is None and prepend.modality_tokens.shape == add.modality_tokens.shape == (
        4,
        16,
    )
    assert count_parameters(prepend) - count_parameters(off) == 4 * 16
    shared = {k: v for k, v in prepend.state_dict().items() if k != "modality_tokens"}
    off.load_state_dict(shared)
    add.load_state_dict(prepend.state_dict())
    features, present = inputs(SMALL_DIMS)
    outputs = [m(features, present) for m in (prepend, add, off)]
    assert not torch.allclose(outputs[0], outputs[2]) and not torch.allclose(outputs[1], outputs[2])
    assert not torch.allclose(outputs[0], outputs[1])
    with torch.no_grad():
        add.modality_tokens.zero_()
    torch.testing.assert_close(add(features, present), off(features, present))  # add: a bias on each branch


def test_prepended_tokens_are_sequence_elements_read_by_the_mean():
    """prepend: [t_1..t_M, h_1..h_M], the first layer within each [t_b, h_b] pair, the second across all
    present elements; the classifier reads the mean over present elements."""
    model = build_model(small(), SMALL_DIMS).eval()
    features, present = inputs(SMALL_DIMS)
    present[1, 2] = False
    tokens = torch.stack([e(x) for e, x in zip(model.encoders, features, strict=True)], dim=1)
    sequence = torch.cat([model.modality_tokens.expand(5, -1, -1), tokens], dim=1)
    mask = torch.cat([present, present], dim=1)  # a missing branch: its token and its feature both masked
    first, second = model.attention.layers
    attended = second(first(sequence, src_mask=pair_mask(4)), src_key_padding_mask=~mask)
    expected = model.classifier(masked_mean(attended, mask))
    torch.testing.assert_close(model(features, present), expected)
    # The missing branch's token has no effect either.
    with torch.no_grad():
        model.modality_tokens[2] += 5.0
    torch.testing.assert_close(model(features, present)[1], expected[1])
    assert not torch.allclose(model(features, present)[0], expected[0])


def test_pair_mask_lets_each_element_see_its_own_branch_only():
    # [t_1, t_2, h_1, h_2]: t_1 and h_1 see each other, t_2 and h_2 see each other.
    allowed = ~pair_mask(2)
    assert allowed.tolist() == [
        [True, False, True, False],
        [False, True, False, True],
        [True, False, True, False],
        [False, True, False, True],
    ]


@pytest.mark.parametrize(("modality_token", "tied"), [("prepend", True), ("add", True), ("none", False)])
def test_swap_probe_the_token_marks_its_modality(modality_token, tied):
    """Identical encoders, two branches' inputs swapped: only a token tied to its branch tells them apart."""
    dims = [12] * 4
    model = build_model(small(modality_token=modality_token), dims).eval()
    for encoder in model.encoders[1:]:
        encoder.load_state_dict(model.encoders[0].state_dict())
    features, present = inputs(dims)
    swapped = [features[1], features[0], *features[2:]]
    change = (model(features, present) - model(swapped, present)).abs().max().item()
    if tied:
        assert change > 1e-3
    else:
        assert change < 1e-6


@pytest.mark.parametrize("value", [True, False])
def test_boolean_modality_token_is_refused_with_the_new_names(value):
    with pytest.raises(ValueError, match="prepend.*add.*former true.*none.*former false"):
        build_model(small(modality_token=value), SMALL_DIMS)
    with pytest.raises(ValueError, match="must be one of prepend, add, none"):
        build_model(small(modality_token="append"), SMALL_DIMS)


def test_norm_switch():
    on, off = build_model(small(), SMALL_DIMS), build_model(small(norm=False), SMALL_DIMS)
    assert count_parameters(on) - count_parameters(off) == 4 * 2 * 16
    assert not any(isinstance(m, nn.LayerNorm) for m in off.encoders.modules())
    assert all(isinstance(e.norm, nn.LayerNorm) for e in on.encoders)


def test_mean_pooling_has_no_attention_and_averages_tokens():
    attn, mean = build_model(small(), SMALL_DIMS), build_model(small(pooling="mean"), SMALL_DIMS).eval()
    d, ff = 16, 32
    layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d
    assert mean.attention is None and count_parameters(attn) - count_parameters(mean) == 2 * layer
    features, present = inputs(SMALL_DIMS)
    present[2, 0] = False
    tokens = torch.stack([e(x) for e, x in zip(mean.encoders, features, strict=True)], dim=1)
    sequence = torch.cat([mean.modality_tokens.expand(5, -1, -1), tokens], dim=1)
    expected = mean.classifier(masked_mean(sequence, torch.cat([present, present], dim=1)))
    torch.testing.assert_close(mean(features, present), expected)


def test_branches_switch_and_validation():
    model = build_model(small(branches=["audio", "text"]), [16, 16])
    assert [e.proj[0].in_features for e in model.encoders] == [16, 16]
    assert model.modality_tokens.shape[0] == 2
    uni = build_model(small(name="unimodal", branches=["text"]), [16])
    assert uni.encoder.net[1].in_features == 16
    with pytest.raises(ValueError, match="exactly one branch"):
        build_model(small(name="unimodal", branches=["text", "audio"]), [16, 16])
    with pytest.raises(ValueError, match="model.branches"):
        build_model(small(branches=["frame", "smell"]), [12, 3])
    with pytest.raises(ValueError, match="model.name"):
        build_model(small(name="transformer-xl"), SMALL_DIMS)
    with pytest.raises(ValueError, match="divisible"):
        build_model(small(heads=3), SMALL_DIMS)
    with pytest.raises(ValueError, match="model.pooling"):
        build_model(small(pooling="max"), SMALL_DIMS)
