"""The ``review`` job: an aiohttp server for the review page of one run.

Every request must carry the access token (``?token=`` or the ``X-Review-Token`` header), else 403.
Routes: ``/`` (the page), ``/static/*`` (its script and style, shipped in the package), ``/api/state``
(clips, problems, decisions), ``POST /api/decide`` (``{video_id, label}``; 400 for a bad label or clip,
nothing written) and ``/video/<video_id>`` (the clip, with HTTP range requests: aiohttp's
``FileResponse`` for a local file, fsspec ranged reads for an object store).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import mimetypes
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.review.decisions import CHOICES, DecisionError, DecisionStore, reviewed_path
from ecmf_ray.review.queue import Review, load_review

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CHUNK = 1 << 20  # bytes per read when streaming a clip from an object store

REVIEW_KEY = web.AppKey("review", Review)
STORE_KEY = web.AppKey("store", DecisionStore)
TOKEN_KEY = web.AppKey("token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.query.get("token") or request.headers.get("X-Review-Token") or ""
    if not hmac.compare_digest(given.encode(), request.app[TOKEN_KEY].encode()):
        raise web.HTTPForbidden(text="403: this page needs the access token printed by `ecmf review`")
    return await handler(request)


async def page(request: web.Request) -> web.Response:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    return web.Response(text=html.replace("__TOKEN__", request.app[TOKEN_KEY]), content_type="text/html")


def state(review: Review, store: DecisionStore) -> dict:
    decisions = store.decisions()
    return {
        "items": review.items,
        "problems": review.problems,
        "rerun": review.rerun,
        "choices": list(CHOICES),
        "decisions": {
            r["video_id"]: {"label": r["label"], "decided_at": r["decided_at"]}
            for r in decisions.to_dict("records")
        },
    }


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(state(request.app[REVIEW_KEY], request.app[STORE_KEY]))


async def decide(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        video_id, label = body["video_id"], body["label"]
        if not (isinstance(video_id, str) and isinstance(label, str)):
            raise DecisionError("video_id and label must be strings")
        row = request.app[STORE_KEY].decide(video_id, label)
    except (ValueError, KeyError, TypeError) as err:  # DecisionError, bad JSON, a missing field
        logger.warning("review: refused a decision: %s", err)
        raise web.HTTPBadRequest(text=f"400: {err}") from None
    return web.json_response(row)


async def stream_range(request: web.Request, uri: str) -> web.StreamResponse:
    """``uri`` on an object store, the requested byte range only (206), or all of it (200)."""
    fs, path = storage.get_fs(uri)
    loop = asyncio.get_running_loop()
    size = int(await loop.run_in_executor(None, fs.size, path))
    try:
        wanted = request.http_range
    except ValueError:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"}) from None
    start, stop = wanted.start or 0, size if wanted.stop is None else min(wanted.stop, size)
    if start < 0:  # a suffix range: the last -start bytes
        start = max(size + start, 0)
    if start >= stop and size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=206 if "Range" in request.headers else 200)
    response.content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    response.content_length = stop - start
    response.headers["Accept-Ranges"] = "bytes"
    if response.status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    await response.prepare(request)
    with fs.open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            chunk = await loop.run_in_executor(None, f.read, min(CHUNK, left))
            if not chunk:
                break
            await response.write(chunk)
            left -= len(chunk)
    await response.write_eof()
    return response


async def video(request: web.Request) -> web.StreamResponse:
    video_id = request.match_info["video_id"]
    uri = request.app[REVIEW_KEY].videos.get(video_id)
    if uri is None:
        raise web.HTTPNotFound(text=f"404: no video for '{video_id}'")
    if storage.is_remote(uri):
        return await stream_range(request, uri)
    return web.FileResponse(uri)


def build_app(review: Review, store: DecisionStore, token: str) -> web.Application:
    app = web.Application(middlewares=[require_token])
    app[REVIEW_KEY], app[STORE_KEY], app[TOKEN_KEY] = review, store, token
    app.router.add_get("/", page)
    app.router.add_get("/api/state", get_state)
    app.router.add_post("/api/decide", decide)
    app.router.add_get("/video/{video_id}", video)
    app.router.add_static("/static", STATIC)
    return app


async def serve(app: web.Application, host: str, port: int, token: str) -> None:
    """Serve ``app`` on ``host:port`` (0: a free port) and print its URL, until cancelled."""
    sock = socket.create_server((host, port))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    print(f"review: open http://{url_host}:{bound}/?token={token}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_review(cfg: DictConfig) -> dict:
    """Serve the review page of ``cfg.run_dir`` until interrupted; the number of decided clips."""
    review = load_review(cfg)
    store = DecisionStore(reviewed_path(str(cfg.run_dir)), [i["video_id"] for i in review.items])
    print(f"review: {len(review.items)} clip(s); decisions go to {store.uri}")
    print(f"review: then rerun: {review.rerun}")
    token = secrets.token_urlsafe(24)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the review
        asyncio.run(serve(build_app(review, store, token), str(cfg.review.host), int(cfg.review.port), token))
    return {"reviewed": store.uri, "decided": len(store.decisions())}
