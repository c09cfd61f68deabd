"""The ``openai`` backend: an OpenAI-compatible chat-completions endpoint (GPT-4-class service, or a
vLLM/SGLang server on the cluster), asked from a Ray Data actor pool through :mod:`.client`."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pandas as pd
from ray.data import ActorPoolStrategy

from ecmf_ray.enrich.client import RetryPolicy, Secret, api_key, post_many

# Requests wait on the network, not the CPU: a small CPU share lets the pool run beside other stages.
ACTOR_NUM_CPUS = 0.25


class ChatCompletions:
    """Ray Data callable class: a batch of ``payload`` JSON strings in, ``content`` / ``error`` /
    ``truncated`` out.

    Every row comes back, with its answer or its error; a failing row never fails the batch.
    """

    def __init__(
        self, url: str, key: Secret | None, timeout_s: float, concurrency: int, policy: RetryPolicy
    ) -> None:
        self._post = functools.partial(
            post_many, url, key=key, timeout_s=timeout_s, policy=policy, concurrency=concurrency
        )
        self._loop = asyncio.new_event_loop()  # one loop per actor, reused across batches

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        # A row that already failed (its clip could not be decoded) is not sent; its error goes on.
        failed = batch["error"].notna().tolist() if "error" in batch else [False] * len(batch)
        errors = [batch["error"].iloc[i] if f else None for i, f in enumerate(failed)]
        pending = [i for i, f in enumerate(failed) if not f]
        payloads = [json.loads(batch["payload"].iloc[i]) for i in pending]
        replies = self._loop.run_until_complete(self._post(payloads)) if payloads else []
        content: list[str | None] = [None] * len(batch)
        truncated = [False] * len(batch)
        for i, reply in zip(pending, replies, strict=True):
            content[i], errors[i], truncated[i] = reply.content, reply.error, reply.truncated
        return pd.DataFrame(
            {
                "video_id": batch["video_id"].to_numpy(),
                "key": batch["key"].to_numpy(),
                "content": pd.Series(content, dtype=object),
                "error": pd.Series(errors, dtype=object),
                "truncated": truncated,
            }
        )


def chat_url(base_url: str) -> str:
    """``…/v1`` (the OpenAI client convention) or a full ``…/chat/completions`` URL."""
    base = str(base_url).rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def ask_endpoint(cfg_enrich: Any, requests: Any) -> Any:
    """Requests Dataset (``video_id, key, payload``) -> replies Dataset
    (``video_id, key, content, error, truncated``)."""
    policy = RetryPolicy(
        int(cfg_enrich.max_retries), float(cfg_enrich.backoff_s), float(cfg_enrich.backoff_max_s)
    )
    return requests.map_batches(
        ChatCompletions,
        fn_constructor_kwargs={
            "url": chat_url(cfg_enrich.base_url),
            "key": api_key(cfg_enrich.api_key_env),
            "timeout_s": float(cfg_enrich.timeout_s),
            "concurrency": int(cfg_enrich.concurrency),
            "policy": policy,
        },
        batch_size=None,
        batch_format="pandas",
        compute=ActorPoolStrategy(size=int(cfg_enrich.workers)),
        num_cpus=ACTOR_NUM_CPUS,
    )
