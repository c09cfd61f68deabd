"""The async chat client on its own: retries on 429/5xx, timeouts, no retry on 401, secrets hidden."""

from __future__ import annotations

import asyncio

import pytest
from chat_server import API_KEY, KEY_ENV, ChatServer

from ecmf_ray.enrich.client import RetryPolicy, Secret, api_key, post_many

FAST = RetryPolicy(max_retries=2, backoff_s=0.01, backoff_max_s=0.05)


def _payload(text: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def _ask(server: ChatServer, texts: list[str], key: str = API_KEY, timeout_s: float = 0.5):
    url = f"{server.base_url}/chat/completions"
    return asyncio.run(post_many(url, [_payload(t) for t in texts], Secret(key), timeout_s, FAST, 4))


def test_retries_429_and_5xx_then_succeeds() -> None:
    with ChatServer(API_KEY) as server:
        replies = _ask(server, ["RATE", "BUSY", "VALID"])
    assert [r.attempts for r in replies] == [2, 2, 1]
    assert all(r.content and r.error is None for r in replies)


def test_timeout_is_retried_then_reported_on_the_row() -> None:
    with ChatServer(API_KEY, delay_s=2.0) as server:
        slow, ok = _ask(server, ["SLOW", "VALID"], timeout_s=0.3)
        assert server.requests["SLOW"] == FAST.max_retries + 1
    assert slow.content is None and "timed out" in slow.error and slow.attempts == 3
    assert ok.content is not None


def test_client_errors_are_not_retried() -> None:
    with ChatServer(API_KEY) as server:
        (reply,) = _ask(server, ["VALID"], key="wrong")
        assert server.requests["VALID"] == 1
    assert reply.error.startswith("HTTP 401") and reply.attempts == 1


def test_retry_after_wins_and_backoff_is_capped() -> None:
    policy = RetryPolicy(max_retries=5, backoff_s=1.0, backoff_max_s=4.0)
    assert policy.delay(0, retry_after="2") == 2.0
    assert policy.delay(0, retry_after="600") == 4.0
    assert 2.0 <= policy.delay(10) <= 4.0
    assert 0.5 <= policy.delay(0, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") <= 1.0


def test_key_comes_from_the_named_variable_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_key(None) is None
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=KEY_ENV):
        api_key(KEY_ENV)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    secret = api_key(KEY_ENV)
    assert secret.reveal() == API_KEY
    assert API_KEY not in repr(secret) + str(secret) + f"{secret}"


def test_an_answer_cut_at_max_tokens_says_so() -> None:
    url_payload = [{**_payload(t), "max_tokens": 256} for t in ("TEXTLONG", "VALID")]
    with ChatServer(API_KEY) as server:
        cut, whole = asyncio.run(
            post_many(f"{server.base_url}/chat/completions", url_payload, Secret(API_KEY), 0.5, FAST, 4)
        )
    assert cut.truncated and len(cut.content) == 256 and cut.error is None
    assert not whole.truncated and whole.content.endswith("}")
