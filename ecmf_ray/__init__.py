"""ecmf_ray: ECMF multimodal emotion recognition (MER2025-SEMI) as a distributed batch system on Ray."""

__version__ = "0.1.0"
