"""Feature extraction: decode + faces (CPU tasks), CLIP / HuBERT / RoBERTa actor pools, the feature store.

Modules: ``decode`` (frames and audio of one clip), ``faces`` (detectors and crops), ``media`` (the
decode+faces batch stage), ``encoders`` (the three encoders), ``pooling`` (the pure math), ``rows``
(batch columns and error cells), ``store`` (shards, resume, consolidation), ``pipeline`` (the Ray Data
job), ``reference`` (the same stages as a sequential loop).
"""
