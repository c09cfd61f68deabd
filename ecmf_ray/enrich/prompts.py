"""Chat requests built from the prompt templates in ``enrich.prompts.<language>``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ecmf_ray.labels import EMOTIONS

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for each name in ``values``.

    Not ``str.format``: prompts show JSON examples, whose braces must stay as written.
    """
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def chat_messages(prompts: Mapping[str, str], text: str) -> list[dict[str, str]]:
    """System and user messages for one transcript; ``{text}`` and ``{labels}`` are filled in."""
    values = {"text": text, "labels": ", ".join(EMOTIONS)}
    return [
        {"role": "system", "content": fill(prompts["system"], values)},
        {"role": "user", "content": fill(prompts["user"], values)},
    ]


def chat_payload(cfg_enrich: Any, text: str) -> dict[str, Any]:
    """The chat-completions request body for one transcript (also the cache key's input)."""
    language = str(cfg_enrich.language)
    if language not in cfg_enrich.prompts:
        raise ValueError(
            f"enrich.language '{language}' has no prompts; choose one of {', '.join(cfg_enrich.prompts)}"
        )
    payload: dict[str, Any] = {
        "model": str(cfg_enrich.model),
        "messages": chat_messages(cfg_enrich.prompts[language], text),
        "temperature": float(cfg_enrich.temperature),
        "max_tokens": int(cfg_enrich.max_tokens),
    }
    if cfg_enrich.json_mode:
        payload["response_format"] = {"type": "json_object"}
    return payload
