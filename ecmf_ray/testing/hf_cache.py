"""An offline Hugging Face cache holding the default hub ids, laid out as ``huggingface_hub`` writes one.

``models--ORG--NAME/blobs/<sha256>``, ``snapshots/<rev>/<file>`` links into the blobs, ``refs/main``. As the
real repositories publish them: CLIP ships ``model.safetensors`` (a full CLIPModel, text tower included),
HuBERT and RoBERTa only ``pytorch_model.bin`` (RoBERTa as hfl's BertForMaskedLM, keys prefixed ``bert.``).

Scales (random, seeded weights):

- ``real``: the published architectures (CLIP ViT-L/14 ~428M parameters with its text tower, HuBERT-Large
  ~316M, chinese-roberta-wwm-ext-large ~326M as a BertForMaskedLM); about 4.3 GB on disk;
- ``reduced``: the same layer counts (24 / 24 / 24, CLIP's text tower 12), patch size, conv front end and the
  21,128-token vocabulary, at width 32: layer indexing and loading are exercised, in seconds.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ecmf_ray import hub

SCALES = ("real", "reduced")
BERT_VOCAB_SIZE = 21128  # bert-base-chinese's vocabulary, which hfl's RoBERTa-wwm models use
_REDUCED_WIDTH = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)
# CLIP ViT-L/14's text tower (unused by the encoders, but in the published checkpoint).
_CLIP_TEXT = {
    "real": dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
    ),
    "reduced": dict(vocab_size=49408, num_hidden_layers=12, max_position_embeddings=77, **_REDUCED_WIDTH),
}
_CLIP_VISION = {
    "real": hub._CLIP_VISION["real"],
    "reduced": {**hub._CLIP_VISION["real"], **_REDUCED_WIDTH, "projection_dim": 24},
}
_HUBERT = {
    "real": hub._HUBERT["real"],
    # The real conv kernels and strides (7 layers) at 32 channels; positional conv grouped to fit width 32.
    "reduced": {
        **hub._HUBERT["real"],
        **_REDUCED_WIDTH,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
}
_BERT = {
    "real": hub._BERT["real"],
    "reduced": {**hub._BERT["real"], **_REDUCED_WIDTH},
}


def architectures(scale: str) -> dict[str, dict[str, Any]]:
    """Per model kind, the config keyword arguments at ``scale`` (CLIP as ``vision`` and ``text``)."""
    _check_scale(scale)
    return {
        "clip": {"vision": _CLIP_VISION[scale], "text": _CLIP_TEXT[scale]},
        "hubert": _HUBERT[scale],
        "roberta": _BERT[scale],
    }


def bert_vocab() -> list[str]:
    """hub's bert-base-chinese-like vocabulary padded with ``[unusedN]`` to the real 21,128 tokens."""
    vocab = hub.tiny_bert_vocab()
    return vocab + [f"[unused{i}]" for i in range(1, BERT_VOCAB_SIZE - len(vocab) + 1)]


def bin_bytes(state_dict: dict[str, Any]) -> bytes:
    """A ``pytorch_model.bin`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def write_hub_repo(hub_dir: Path, repo_id: str, files: dict[str, bytes | Path]) -> Path:
    """One model repo in huggingface_hub's cache layout; returns its snapshot folder.

    A file is given as its bytes or as a path, which is moved into the blobs (large weights never sit
    in memory as bytes).
    """
    repo = hub_dir / f"models--{repo_id.replace('/', '--')}"
    digests = {name: _digests(data) for name, data in files.items()}
    revision = hashlib.sha1(b"".join(digests[n][0] for n in sorted(files))).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / digests[name][1]
        if isinstance(data, Path):
            shutil.move(data, blob)
        else:
            blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def build_hf_home(home: Path, ids: dict[str, str], scale: str, tiny_cache: str) -> Path:
    """``$HF_HOME`` with ``ids`` (``clip``/``hubert``/``roberta`` → hub id) at ``scale``; returns ``home``.

    ``tiny_cache`` holds hub's tiny models, whose processor configs (the real repos' conventions) are reused.
    """
    _check_scale(scale)
    hub_dir = home / "hub"
    with tempfile.TemporaryDirectory(dir=home) as work:
        for kind, build in (("clip", _clip_files), ("hubert", _hubert_files), ("roberta", _roberta_files)):
            folder = Path(work, kind)
            folder.mkdir()
            write_hub_repo(hub_dir, ids[kind], build(folder, scale, tiny_cache))
    return home


def checkpoint_model(kind: str, scale: str) -> Any:
    """The model class a repo publishes (CLIPModel, HubertModel, BertForMaskedLM) at ``scale``, seeded.

    Under ``with torch.device("meta"):`` it counts parameters without memory.
    """
    from transformers import BertConfig, BertForMaskedLM, CLIPConfig, CLIPModel, HubertConfig, HubertModel

    _check_scale(scale)
    vision = _CLIP_VISION[scale]
    with hub._seeded(0):
        if kind == "clip":
            text = _CLIP_TEXT[scale]
            return CLIPModel(
                CLIPConfig(text_config=text, vision_config=vision, projection_dim=vision["projection_dim"])
            )
        if kind == "hubert":
            return HubertModel(HubertConfig(**_HUBERT[scale], architectures=["HubertModel"]))
        if kind == "roberta":
            return BertForMaskedLM(BertConfig(**_BERT[scale], architectures=["BertForMaskedLM"]))
    raise ValueError(f"unknown model kind {kind!r}; expected one of {hub.MODEL_KINDS}")


def _clip_files(folder: Path, scale: str, tiny_cache: str) -> dict[str, bytes | Path]:
    checkpoint_model("clip", scale).save_pretrained(folder)
    files = _listing(folder, ("config.json", "model.safetensors"))
    return files | _tiny_files("clip", tiny_cache, ("preprocessor_config.json",))


def _hubert_files(folder: Path, scale: str, tiny_cache: str) -> dict[str, bytes | Path]:
    model = checkpoint_model("hubert", scale)
    return _bin_repo(folder, model) | _tiny_files("hubert", tiny_cache, ("preprocessor_config.json",))


def _roberta_files(folder: Path, scale: str, tiny_cache: str) -> dict[str, bytes | Path]:
    from transformers import BertTokenizer

    model = checkpoint_model("roberta", scale)
    vocab = bert_vocab()
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, model_max_length=512)
    tokenizer.save_pretrained(tokenizer_dir)
    return _bin_repo(folder, model) | _listing(tokenizer_dir, os.listdir(tokenizer_dir))


def _bin_repo(folder: Path, model: Any) -> dict[str, bytes | Path]:
    """``config.json`` and ``pytorch_model.bin`` only, as TencentGameMate and hfl publish them."""
    weights = folder / "pytorch_model.bin"
    torch.save(model.state_dict(), weights)
    return {"config.json": model.config.to_json_string().encode(), "pytorch_model.bin": weights}


def _tiny_files(kind: str, tiny_cache: str, names: Iterable[str]) -> dict[str, bytes | Path]:
    tiny = hub.resolve_model_ref(f"{hub.TINY_PREFIX}{kind}", tiny_cache)
    return {name: Path(tiny, name).read_bytes() for name in names}


def _listing(folder: Path, names: Iterable[str]) -> dict[str, bytes | Path]:
    return {name: folder / name for name in sorted(names)}


def _digests(data: bytes | Path) -> tuple[bytes, str]:
    """The sha1 (the revision is made of them) and the sha256 hex (the blob's name) of a file's content."""
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                sha1.update(chunk)
                sha256.update(chunk)
    else:
        sha1.update(data)
        sha256.update(data)
    return sha1.digest(), sha256.hexdigest()


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
