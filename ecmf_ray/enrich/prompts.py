"""Chat requests built from the prompt templates in ``enrich.prompts.<language>`` (text sources) or
``enrich.media_prompts.<language>`` (sources shown the clip's frames and audio)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ecmf_ray.labels import EMOTIONS

PLACEHOLDER = re.compile(r"\{(\w+(?:\.\w+)?)\}")


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for each name in ``values``.

    Not ``str.format``: prompts show JSON examples, whose braces must stay as written.
    """
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def chat_messages(prompts: Mapping[str, str], text: str, parts: bool = False) -> list[dict[str, Any]]:
    """System and user messages for one transcript; ``{text}`` and ``{labels}`` are filled in.

    ``parts``: the user content as a list of content parts (text only so far; the media parts are put in
    front of it later, in the Ray Data tasks that decode the clip).
    """
    values = {"text": text, "labels": ", ".join(EMOTIONS)}
    user = fill(prompts["user"], values)
    return [
        {"role": "system", "content": fill(prompts["system"], values)},
        {"role": "user", "content": [{"type": "text", "text": user}] if parts else user},
    ]


def chat_payload(
    cfg_enrich: Any, text: str, media: bool = False, max_tokens: int | None = None
) -> dict[str, Any]:
    """The chat-completions request body for one transcript (also the cache key's input).

    ``media``: the request of a source shown the clip (its ``media_prompts``, content parts).
    ``max_tokens``: the answer's budget (default ``enrich.max_tokens``).
    """
    language = str(cfg_enrich.language)
    prompts = cfg_enrich.media_prompts if media else cfg_enrich.prompts
    if language not in prompts:
        raise ValueError(f"enrich.language '{language}' has no prompts; choose one of {', '.join(prompts)}")
    payload: dict[str, Any] = {
        "model": str(cfg_enrich.model),
        "messages": chat_messages(prompts[language], text, parts=media),
        "temperature": float(cfg_enrich.temperature),
        "max_tokens": int(cfg_enrich.max_tokens if max_tokens is None else max_tokens),
    }
    if cfg_enrich.json_mode:
        payload["response_format"] = {"type": "json_object"}
    return payload
