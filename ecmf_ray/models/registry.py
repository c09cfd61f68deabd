"""Build any model from the ``model:`` config section, so ablations and variants are configs, not code.

Every model maps ``(features, present)`` to logits: ``features`` is one ``(B, D_b)`` tensor per
branch in ``model.branches`` order, ``present`` a ``(B, M)`` bool mask of branches that have a
feature for that video.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ecmf_ray.features import BRANCHES
from ecmf_ray.labels import NUM_CLASSES
from ecmf_ray.models.baselines import AttentionFusion, ConcatMLP
from ecmf_ray.models.ecmf import ECMFFusion


def _ecmf(cfg: Mapping[str, Any], dims: Sequence[int], num_classes: int) -> nn.Module:
    return ECMFFusion(
        dims,
        num_classes,
        hidden=int(cfg["hidden"]),
        dropout=float(cfg["dropout"]),
        heads=int(cfg["heads"]),
        attention_layers=int(cfg["attention_layers"]),
        ffn_mult=int(cfg["ffn_mult"]),
        residual=bool(cfg["residual"]),
        modality_token=cfg["modality_token"],
        norm=bool(cfg["norm"]),
        pooling=str(cfg["pooling"]),
    )


def _mer_attention(cfg: Mapping[str, Any], dims: Sequence[int], num_classes: int) -> nn.Module:
    return AttentionFusion(dims, num_classes, hidden=int(cfg["hidden"]), dropout=float(cfg["dropout"]))


def _concat_mlp(cfg: Mapping[str, Any], dims: Sequence[int], num_classes: int) -> nn.Module:
    return ConcatMLP(dims, num_classes, hidden=int(cfg["hidden"]), dropout=float(cfg["dropout"]))


def _unimodal(cfg: Mapping[str, Any], dims: Sequence[int], num_classes: int) -> nn.Module:
    # A weak single-branch classifier (the relabel vote's voters) is the concat-MLP on one branch.
    if len(dims) != 1:
        raise ValueError(
            f"model.name=unimodal takes exactly one branch, got model.branches={list(cfg['branches'])}"
        )
    return _concat_mlp(cfg, dims, num_classes)


MODELS: dict[str, Callable[[Mapping[str, Any], Sequence[int], int], nn.Module]] = {
    "ecmf": _ecmf,
    "mer_attention": _mer_attention,
    "concat_mlp": _concat_mlp,
    "unimodal": _unimodal,
}


def validate_model_config(cfg: Mapping[str, Any]) -> list[str]:
    """The branches a model config uses, after checking name, branches and head count."""
    if cfg["name"] not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(MODELS)}, not {cfg['name']!r}")
    branches = [str(b) for b in cfg["branches"]]
    unknown = [b for b in branches if b not in BRANCHES]
    if not branches or unknown or len(set(branches)) != len(branches):
        raise ValueError(f"model.branches must be distinct names from {', '.join(BRANCHES)}; got {branches}")
    if isinstance(cfg["modality_token"], bool):
        # Before prepending was the default, true meant "add"; say so rather than guess.
        raise ValueError(
            f"model.modality_token={str(cfg['modality_token']).lower()} is no longer accepted: use prepend "
            "(the paper's token, a sequence element of its own), add (the former true: added to the branch "
            "vector) or none (the former false)"
        )
    if cfg["name"] == "ecmf" and int(cfg["hidden"]) % int(cfg["heads"]):
        raise ValueError(f"model.hidden ({cfg['hidden']}) must be divisible by model.heads ({cfg['heads']})")
    return branches


def build_model(cfg: Mapping[str, Any], dims: Sequence[int], num_classes: int = NUM_CLASSES) -> nn.Module:
    """The model named by ``cfg["name"]`` for input sizes ``dims`` (one per ``cfg["branches"]``)."""
    branches = validate_model_config(cfg)
    if len(dims) != len(branches):
        raise ValueError(f"{len(dims)} feature sizes given for {len(branches)} branches {branches}")
    return MODELS[cfg["name"]](cfg, [int(d) for d in dims], num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
