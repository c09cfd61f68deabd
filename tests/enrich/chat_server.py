"""A real chat-completions server on 127.0.0.1 for the enrich tests, and helpers to set up a run."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import socket
import threading
import wave
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pandas as pd
from aiohttp import web

from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import manifest_path, write_manifest

API_KEY = "sk-test-3f9c1a7e5d2b4c6e8a0f"
KEY_ENV = "ECMF_TEST_LLM_KEY"


def _answer(label: str, keywords: list[str], description: str) -> str:
    return json.dumps({"label": label, "keywords": keywords, "description": description}, ensure_ascii=False)


# Answers longer than the request's max_tokens (counted here in characters) are cut there, with
# finish_reason "length", as a model stops at its token budget.
LONG_DESCRIPTION = "说话人先沉默，然后提高音量，语速越来越快。" * 20  # 400 characters
# Each transcript carries a marker that picks the server's behaviour for it.
ANSWERS = {
    "VALID": _answer("happy", ["开心", "笑"], "说话人语气轻快"),
    "FENCED": "```json\n" + _answer("Sad", ["难过"], "声音低沉") + "\n```",
    "MALFORMED": '{"label": "angry", "keywords": ["生气"',
    "OUTSIDE": _answer("excited", ["兴奋"], "很激动"),
    "RATE": _answer("worried", ["担心"], "语气犹豫"),  # a 429 first
    "BUSY": _answer("neutral", [], "平静"),  # a 503 first
    "SLOW": _answer("surprise", ["惊讶"], "突然提高音量"),  # slower than the client's timeout while slow
    "TEXTLONG": _answer("angry", ["生气", "吵架"], LONG_DESCRIPTION),  # cut at 256 characters, whole at 1024
}


# Markers that change only what the audio-visual source (a request with content parts) gets; its text-only
# requests for the same clip are answered as VALID.
AV_ANSWER = _answer("happy", [], "画面中的人在笑，声音轻快")
AV_LONG_ANSWER = _answer("worried", ["皱眉", "叹气"], LONG_DESCRIPTION * 3)  # cut even at 1024 characters
# a 429 first | a 429 always | malformed JSON | longer than any budget
AV_MARKERS = ("AVLIMIT", "AVDOWN", "AVBADJSON", "AVLONG")


class BadRequest(ValueError):
    """What vLLM answers with 400: a content part it cannot use."""


def check_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Check content parts as vLLM does for Qwen2.5-Omni; returns what they hold (text, images, audio).

    Images must be JPEG data URLs that decode; the audio must be a 16 kHz mono 16-bit WAV.
    """
    seen: dict[str, Any] = {"text": "", "images": [], "audio_s": None}
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            seen["text"] += part["text"]
        elif kind == "image_url":
            url = part["image_url"]["url"]
            prefix = "data:image/jpeg;base64,"
            if not url.startswith(prefix):
                raise BadRequest(f"image url is not a JPEG data URL: {url[:40]}")
            data = base64.b64decode(url[len(prefix) :], validate=True)
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if not data.startswith(b"\xff\xd8") or image is None:
                raise BadRequest("image part does not decode as JPEG")
            seen["images"].append(image.shape[:2])
        elif kind == "input_audio":
            audio = part["input_audio"]
            if audio.get("format") != "wav" or seen["audio_s"] is not None:
                raise BadRequest("one input_audio part in wav format expected")
            try:
                with wave.open(io.BytesIO(base64.b64decode(audio["data"], validate=True))) as w:
                    if (w.getnchannels(), w.getframerate(), w.getsampwidth()) != (1, 16000, 2):
                        raise BadRequest(f"audio is not 16 kHz mono 16-bit: {w.getparams()}")
                    seen["audio_s"] = w.getnframes() / w.getframerate()
            except (wave.Error, EOFError, binascii.Error) as err:
                raise BadRequest(f"audio part is not a WAV file: {err}") from None
        else:
            raise BadRequest(f"unknown content part type {kind!r}")
    return seen


class ChatServer:
    """POST /v1/chat/completions in a background thread; counts requests per marker and records each
    request's ``max_tokens`` in ``budgets``.

    A request whose user content is a list of parts is the audio-visual source's: its parts are checked
    (:func:`check_parts`), counted under ``av:<marker>`` and recorded in ``media``. A text request looks
    for the text markers first, an audio-visual one for the AV markers.
    """

    def __init__(self, key: str, delay_s: float = 3.0) -> None:
        self.key = key
        self.delay_s = delay_s
        self.slow = True
        self.requests: Counter[str] = Counter()
        self.budgets: dict[str, list[int]] = {}
        self.media: dict[str, list[dict[str, Any]]] = {}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = body["messages"][-1]["content"]
        seen = None
        if isinstance(content, list):
            try:
                seen = check_parts(content)
            except BadRequest as err:
                return web.json_response({"error": str(err)}, status=400)
            content = seen["text"]
        markers = (*AV_MARKERS, *ANSWERS) if seen else (*ANSWERS, *AV_MARKERS)
        marker = next((m for m in markers if m in content), "VALID")
        counter = f"av:{marker}" if seen else marker
        self.requests[counter] += 1
        self.budgets.setdefault(counter, []).append(body.get("max_tokens"))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"error": "bad key"}, status=401)
        first = self.requests[counter] == 1
        if seen is not None:
            self.media.setdefault(marker, []).append(seen)
            if marker == "AVLIMIT" and first or marker == "AVDOWN":
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "0"})
            answer = {"AVBADJSON": ANSWERS["MALFORMED"], "AVLONG": AV_LONG_ANSWER}.get(marker, AV_ANSWER)
        else:
            if marker == "RATE" and first:
                return web.json_response({"error": "rate limited"}, status=429, headers={"Retry-After": "0"})
            if marker == "BUSY" and first:
                return web.Response(status=503, text="overloaded")
            if marker == "SLOW" and self.slow:
                await asyncio.sleep(self.delay_s)
            answer = ANSWERS.get(marker, ANSWERS["VALID"])
        budget = body.get("max_tokens") or len(answer)
        finish = "length" if len(answer) > budget else "stop"
        message = {"role": "assistant", "content": answer[:budget]}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": finish}]})

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


def write_run(run_dir: str, texts: dict[str, str], paths: dict[str, str] | None = None) -> None:
    """A manifest with one unlabeled video per transcript (at ``paths[video_id]`` when given)."""
    paths = paths or {}
    rows = pd.DataFrame(
        {
            "video_id": list(texts),
            "video_path": [paths.get(v, f"/data/video/{v}.mp4") for v in texts],
            "text": list(texts.values()),
            "label": None,
            "split": "unlabeled",
            "valence": None,
        }
    )
    write_manifest(rows, manifest_path(run_dir))


def http_overrides(base_url: str) -> list[str]:
    """The openai backend against the test server: short timeouts and backoff so tests stay fast."""
    return [
        "enrich.backend=openai",
        "enrich.model=test-model",
        f"enrich.base_url={base_url}",
        f"enrich.api_key_env={KEY_ENV}",
        "enrich.timeout_s=0.5",
        "enrich.max_retries=1",
        "enrich.backoff_s=0.01",
        "enrich.batch_size=3",
        "enrich.concurrency=4",
    ]


def http_config(run_dir: str, base_url: str, *extra: str):
    """The base config with :func:`http_overrides` and ``extra``."""
    return load_config([], [f"run_dir={run_dir}", *http_overrides(base_url), *extra])
