"""A small async client for OpenAI-compatible chat completions: bounded concurrency, per-request
timeouts, retries with exponential backoff on 408/429/5xx and network errors, and one reply per
request, never an exception.

Why not ``ray.data.llm``'s HTTP request processor (Ray 2.60): it raises once a row runs out of
retries (one bad row fails the whole dataset), does not retry a plain 500, has no per-request
timeout setting, and takes the API key in its config headers. Here a failed row becomes an error
on that row, and the key travels only inside a :class:`Secret`.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

RETRY_STATUS = frozenset({408, 429})


class Secret:
    """A string that does not show itself in repr, str or logs (the API key on its way to actors)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__


def api_key(env_name: str | None) -> Secret | None:
    """The key from the environment variable named in config; None when no variable is named.

    A named but unset variable is an error now, rather than thousands of 401s later.
    """
    if not env_name:
        return None
    value = os.environ.get(str(env_name))
    if not value:
        raise ValueError(f"enrich.api_key_env names ${env_name}, but it is not set in the environment")
    return Secret(value)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): the server's Retry-After when it
        gives one in seconds, else exponential backoff with jitter (so workers do not retry in step)."""
        if retry_after is not None:
            try:
                return min(float(retry_after), self.backoff_max_s)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return min(self.backoff_s * 2**attempt, self.backoff_max_s) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Reply:
    """The answer text of one request, or why there is none; ``attempts`` counts HTTP tries.

    ``truncated``: the model stopped at ``max_tokens`` (``finish_reason: length``), so the text is cut.
    """

    content: str | None
    error: str | None
    attempts: int
    truncated: bool = False


def _answer(body: Any, attempts: int) -> Reply:
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a chat-completions response: {str(body)[:200]}") from None
    if not isinstance(content, str):
        raise ValueError(f"message content is not text: {content!r}"[:200])
    return Reply(content, None, attempts, truncated=choice.get("finish_reason") == "length")


async def post_chat(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    policy: RetryPolicy,
) -> Reply:
    """One chat request with retries; errors come back in the :class:`Reply`, never raised."""
    error = "not sent"
    for attempt in range(policy.max_retries + 1):
        retry_after = None
        try:
            async with session.post(
                url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status == 200:
                    try:
                        return _answer(await resp.json(content_type=None), attempt + 1)
                    except ValueError as err:  # a malformed body will not improve on retry
                        return Reply(None, str(err), attempt + 1)
                error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                if resp.status not in RETRY_STATUS and resp.status < 500:
                    return Reply(None, error, attempt + 1)
                retry_after = resp.headers.get("Retry-After")
        except asyncio.TimeoutError:
            error = f"timed out after {timeout_s:g} s"
        except aiohttp.ClientError as err:
            error = f"{type(err).__name__}: {err}"
        if attempt < policy.max_retries:
            await asyncio.sleep(policy.delay(attempt, retry_after))
    return Reply(None, f"{error} (after {policy.max_retries + 1} attempts)", policy.max_retries + 1)


async def post_many(
    url: str,
    payloads: Sequence[dict[str, Any]],
    key: Secret | None,
    timeout_s: float,
    policy: RetryPolicy,
    concurrency: int,
) -> list[Reply]:
    """Send every payload, at most ``concurrency`` in flight; replies in input order."""
    headers = {"Authorization": f"Bearer {key.reveal()}"} if key else {}
    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, payload: dict[str, Any]) -> Reply:
        async with limit:
            return await post_chat(session, url, payload, headers, timeout_s, policy)

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(session, p) for p in payloads)))
