"""LLM context enrichment for the text branch (ECMF section 3.2.2) and LLM labels for the relabel vote.

``ecmf enrich`` writes ``${run_dir}/enrich/enrichment.parquet``: one row per video and LLM source
(``enrich.sources``: the paper's text LLM and its audio-visual LLM, which is shown the clip's frames
and audio) with a pseudo-label, emotion keywords and a description, from an OpenAI-compatible
endpoint, a vLLM engine inside the Ray job, or a precomputed file. Later stages read it through
:mod:`ecmf_ray.enrich.text`.
"""

from ecmf_ray.enrich.table import enrichment_path, read_enrichment
from ecmf_ray.enrich.text import build_enriched_text, enriched_texts, llm_labels

__all__ = ["build_enriched_text", "enriched_texts", "enrichment_path", "llm_labels", "read_enrichment"]
