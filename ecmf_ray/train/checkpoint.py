"""Safetensors files for training state and fold models: tensors plus string metadata, never pickles."""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ecmf_ray import storage


def save_tensors(uri: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> int:
    """Write ``tensors`` with ``metadata`` (each value stored as JSON) to a local path or URI; the bytes written."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save_bytes(tensors, {k: json.dumps(v) for k, v in metadata.items()})
    storage.write_bytes(uri, data)
    return len(data)


def load_tensors(uri: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and JSON-decoded metadata written by :func:`save_tensors`."""
    data = storage.read_bytes(uri)
    header_len = int.from_bytes(data[:8], "little")
    raw = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    return load_bytes(data), {k: json.loads(v) for k, v in raw.items()}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer ``state_dict`` as ``optim.<param>.<name>`` tensors plus JSON-able param groups."""
    tensors = {
        f"optim.{pid}.{name}": value if torch.is_tensor(value) else torch.tensor(value)
        for pid, per_param in state["state"].items()
        for name, value in per_param.items()
    }
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in prefixed(tensors, "optim").items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": param_groups}
