"""Fusion models: ECMF, the MER2025 baseline's attention fusion, a concat-MLP and unimodal heads."""

from ecmf_ray.models.registry import MODELS, build_model, count_parameters, validate_model_config

__all__ = ["MODELS", "build_model", "count_parameters", "validate_model_config"]
