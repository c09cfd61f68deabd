"""Named LLM sources (``enrich.sources``): each one the ``enrich`` keys with its own overrides.

The paper asks two LLMs: GPT-4 reads the transcript (a pseudo-label and keywords), Qwen-Omni watches and
listens to the clip (a pseudo-label, a description and emotional clues). A source says what its model is
shown besides the transcript (``media``) and which answer fields it contributes (``fields``). With no
``enrich.sources`` the ``enrich`` keys form one text source named ``llm``, as before sources existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

MEDIA: tuple[str, ...] = ("frames", "audio")
FIELDS: tuple[str, ...] = ("label", "keywords", "description")
DEFAULT_NAME = "llm"
# Keys that describe the text branch or the list itself, not one source's requests.
SHARED_KEYS: frozenset[str] = frozenset(
    {
        "enabled",
        "sources",
        "text_template",
        "template_separator",
        "use_label",
        "use_keywords",
        "use_description",
    }
)
_NAME = re.compile(r"^[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Source:
    """One LLM source: its name, what it is shown, what it gives, and its resolved ``enrich`` keys."""

    name: str
    media: tuple[str, ...]
    fields: tuple[str, ...]
    cfg: DictConfig

    def spec(self) -> dict[str, Any]:
        """What decides this source's answers (recorded in the feature spec of the text it enriches)."""
        c = self.cfg
        out: dict[str, Any] = {"name": self.name, "backend": str(c.backend), "media": list(self.media)}
        out["fields"] = list(self.fields)
        if c.backend == "precomputed":
            out["path"] = str(c.path)
        else:
            out.update(model=str(c.model), language=str(c.language))
        if self.media:
            out["media_limits"] = OmegaConf.to_container(c.media_limits, resolve=True)
        return out


def _subset(value: Any, allowed: tuple[str, ...], key: str, where: str) -> tuple[str, ...]:
    items = tuple(str(v) for v in (value or []))
    bad = [v for v in items if v not in allowed]
    if bad:
        raise ValueError(f"{where}: {key} {bad} not among {', '.join(allowed)}")
    return items


def resolve_sources(cfg_enrich: Any) -> list[Source]:
    """The configured sources, each with every ``enrich`` key (its overrides applied), checked."""
    defaults = OmegaConf.create(
        {k: v for k, v in OmegaConf.to_container(cfg_enrich, resolve=True).items() if k not in SHARED_KEYS}
    )
    entries = cfg_enrich.sources
    if not entries:
        return [Source(DEFAULT_NAME, (), FIELDS, defaults)]
    sources: list[Source] = []
    for i, entry in enumerate(entries):
        entry = OmegaConf.to_container(entry, resolve=True) if not isinstance(entry, dict) else dict(entry)
        name = str(entry.pop("name", ""))
        where = f"enrich.sources[{i}] ({name or 'no name'})"
        if not _NAME.match(name):
            raise ValueError(f"{where}: name must be an identifier (letters, digits, _), got '{name}'")
        if name in {s.name for s in sources}:
            raise ValueError(f"{where}: the name '{name}' is used twice")
        media = _subset(entry.pop("media", []), MEDIA, "media", where)
        fields = _subset(entry.pop("fields", list(FIELDS)), FIELDS, "fields", where)
        if not fields:
            raise ValueError(
                f"{where}: fields is empty; a source must give at least one of {', '.join(FIELDS)}"
            )
        unknown = sorted(set(entry) - set(defaults))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a source may set name, media, "
                             f"fields and any enrich key except {', '.join(sorted(SHARED_KEYS))}")  # fmt: skip
        cfg = OmegaConf.merge(defaults, entry)
        if media and cfg.backend == "vllm":
            raise ValueError(
                f"{where}: media needs backend openai (e.g. a vLLM server serving Qwen2.5-Omni) or "
                "precomputed; the in-job vllm backend sends text only"
            )
        sources.append(Source(name, media, fields, cfg))
    return sources
