"""The ``vllm`` backend: a vLLM engine inside the Ray job on the cluster's GPUs, through
``ray.data.llm``'s vLLM processor.

Optional: vllm is imported only by the engine actors, and this module is imported only when
``enrich.backend=vllm`` (install vllm on the GPU nodes, or give it in ``enrich.vllm.runtime_env``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from omegaconf import OmegaConf


def _plain(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node else {}


def _to_replies(batch: pd.DataFrame) -> pd.DataFrame:
    failed = batch["__inference_error__"].fillna("").astype(str)
    # ray.data.llm gives no finish_reason: an answer that used its whole budget was cut there.
    budget = batch["payload"].map(lambda p: json.loads(p)["max_tokens"])
    generated = pd.to_numeric(batch["num_generated_tokens"], errors="coerce")
    return pd.DataFrame(
        {
            "video_id": batch["video_id"],
            "key": batch["key"],
            "content": batch["generated_text"].where(failed.eq(""), None),
            "error": failed.where(failed.ne(""), None),
            "truncated": failed.eq("") & generated.ge(budget),
        }
    )


def ask_engine(cfg_enrich: Any, requests: Any) -> Any:
    """Requests Dataset (``video_id, key, payload``) -> replies Dataset
    (``video_id, key, content, error, truncated``); each request's ``max_tokens`` is its payload's."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine = cfg_enrich.vllm
    config = vLLMEngineProcessorConfig(
        model_source=str(cfg_enrich.model),
        engine_kwargs=_plain(engine.engine_kwargs),
        runtime_env=_plain(engine.runtime_env) or None,
        concurrency=int(engine.concurrency),
        batch_size=int(cfg_enrich.batch_size),
        accelerator_type=engine.accelerator_type,
        # A failed row gets __inference_error__ instead of failing the dataset.
        should_continue_on_error=True,
    )
    temperature = float(cfg_enrich.temperature)

    def preprocess(row: dict) -> dict:
        payload = json.loads(row["payload"])
        sampling = {"temperature": temperature, "max_tokens": int(payload["max_tokens"])}
        return {"messages": payload["messages"], "sampling_params": sampling}

    processor = build_processor(
        config,
        preprocess=preprocess,
        # Identity: error rows skip postprocess and keep every column, so success rows must too.
        postprocess=lambda row: row,
    )
    return (
        processor(requests)
        .select_columns(
            ["video_id", "key", "payload", "generated_text", "num_generated_tokens", "__inference_error__"]
        )  # fmt: skip
        .map_batches(_to_replies, batch_format="pandas")
    )
