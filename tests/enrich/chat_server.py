"""A real chat-completions server on 127.0.0.1 for the enrich tests, and helpers to set up a run."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter

import pandas as pd
from aiohttp import web

from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import manifest_path, write_manifest

API_KEY = "sk-test-3f9c1a7e5d2b4c6e8a0f"
KEY_ENV = "ECMF_TEST_LLM_KEY"


def _answer(label: str, keywords: list[str], description: str) -> str:
    return json.dumps({"label": label, "keywords": keywords, "description": description}, ensure_ascii=False)


# Each transcript carries a marker that picks the server's behaviour for it.
ANSWERS = {
    "VALID": _answer("happy", ["开心", "笑"], "说话人语气轻快"),
    "FENCED": "```json\n" + _answer("Sad", ["难过"], "声音低沉") + "\n```",
    "MALFORMED": '{"label": "angry", "keywords": ["生气"',
    "OUTSIDE": _answer("excited", ["兴奋"], "很激动"),
    "RATE": _answer("worried", ["担心"], "语气犹豫"),  # a 429 first
    "BUSY": _answer("neutral", [], "平静"),  # a 503 first
    "SLOW": _answer("surprise", ["惊讶"], "突然提高音量"),  # slower than the client's timeout while slow
}


class ChatServer:
    """POST /v1/chat/completions in a background thread; counts requests per marker."""

    def __init__(self, key: str, delay_s: float = 3.0) -> None:
        self.key = key
        self.delay_s = delay_s
        self.slow = True
        self.requests: Counter[str] = Counter()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        marker = next(m for m in ANSWERS if m in text)
        self.requests[marker] += 1
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": "bad key"}, status=401)
        first = self.requests[marker] == 1
        if marker == "RATE" and first:
            return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "0"})
        if marker == "BUSY" and first:
            return web.Response(status=503, text="overloaded")
        if marker == "SLOW" and self.slow:
            await asyncio.sleep(self.delay_s)
        message = {"role": "assistant", "content": ANSWERS[marker]}
        return web.json_response({"choices": [{"index": 0, "message": message}]})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        # Cancel a handler when its client gives up, so a timed-out slow answer does not hold shutdown.
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> ChatServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def write_run(run_dir: str, texts: dict[str, str]) -> None:
    """A manifest with one unlabeled video per transcript."""
    rows = pd.DataFrame(
        {
            "video_id": list(texts),
            "video_path": [f"/data/video/{v}.mp4" for v in texts],
            "text": list(texts.values()),
            "label": None,
            "split": "unlabeled",
            "valence": None,
        }
    )
    write_manifest(rows, manifest_path(run_dir))


def http_config(run_dir: str, base_url: str, *extra: str):
    """The openai backend against the test server: short timeouts and backoff so tests stay fast."""
    return load_config(
        [],
        [
            f"run_dir={run_dir}",
            "enrich.backend=openai",
            "enrich.model=test-model",
            f"enrich.base_url={base_url}",
            f"enrich.api_key_env={KEY_ENV}",
            "enrich.timeout_s=0.5",
            "enrich.max_retries=1",
            "enrich.backoff_s=0.01",
            "enrich.batch_size=3",
            "enrich.concurrency=4",
            *extra,
        ],
    )
