"""Model references: a hub id, a local folder, a remote (``s3://``) folder or a ``tiny:`` test model.

Every reference resolves to something ``from_pretrained`` takes (a local folder or a hub id), so real and
tiny weights go through the very same loading code. Remote folders and tiny models are materialised once
per node under ``cache_dir``: built in a temporary sibling folder, then renamed into place under a file
lock, so several Ray actors starting together on one node do the work once and never see half a folder.

Weights load from ``model.safetensors`` when a model has one, else from ``pytorch_model.bin`` in place:
the default HuBERT and RoBERTa repos publish only the latter. A ``.bin`` is a pickle, so it is read with
``torch.load(weights_only=True)`` only (torch >= 2.6): tensors and plain containers, never an arbitrary
object, so a tampered checkpoint is refused instead of running code. No conversion step is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from filelock import FileLock

from ecmf_ray import storage

# transformers is imported inside the functions that need it: importing it takes seconds, and callers
# that only resolve references (config checks, the driver) should not pay for it.
if TYPE_CHECKING:
    from transformers import (
        BertModel,
        CLIPImageProcessor,
        CLIPVisionModelWithProjection,
        HubertModel,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        Wav2Vec2FeatureExtractor,
    )

logger = logging.getLogger(__name__)
_M = TypeVar("_M", bound="PreTrainedModel")

MODEL_KINDS = ("clip", "hubert", "roberta")
TINY_PREFIX = "tiny:"
_SEED = 0

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What the Hub accepts as a repo id ("name" or "owner/name").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# torch's RNG is process-global: serialise seeded builds so threads cannot interleave draws.
_BUILD_LOCK = threading.Lock()
# When a hub repo has only a .bin, transformers starts a background thread that asks the Hub's converter
# bot to open a safetensors pull request: from every actor, on every load. Loading needs none of that.
_NO_AUTO_CONVERSION = "DISABLE_SAFETENSORS_CONVERSION"

# Architecture sizes. "real" mirrors the released checkpoints; "tiny" keeps the same classes, small.
_CLIP_VISION = {
    "real": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=48,
    ),
}
# Only the tiny text tower is ever built: the encoders use CLIP's vision side.
_TINY_CLIP_TEXT = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=48,
    bos_token_id=1022,
    eos_token_id=1023,
)
# HuBERT-Large layout (layer-norm conv feature extractor, stable layer norm). The tiny one keeps the
# real conv kernels/strides (default config), so 16 kHz audio still gives ~50 frames per second.
_HUBERT = {
    "real": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    ),
}
# chinese-roberta-wwm-ext-large is a BERT architecture with bert-base-chinese's 21128-token vocab.
_BERT = {
    "real": dict(
        vocab_size=21128,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
    ),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
}
_SIZES = ("tiny", "real")
# Weights of a full CLIPModel checkpoint that the vision-only model does not use.
_CLIP_TEXT_KEYS = ("text_model.", "text_projection.", "logit_scale")


def torch_dtype(name: str) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` as a torch dtype."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def resolve_model_ref(ref: str, cache_dir: str) -> str:
    """A local folder holding the model, or a hub id unchanged (left to the HF cache / ``HF_HOME``)."""
    ref = str(ref).strip()
    cache_root = os.path.abspath(os.path.expanduser(str(cache_dir)))
    if ref.startswith(TINY_PREFIX):
        name = ref[len(TINY_PREFIX) :]
        if name not in MODEL_KINDS:
            raise ValueError(
                f"unknown tiny model {ref!r}; expected one of {[TINY_PREFIX + k for k in MODEL_KINDS]}"
            )
        target = os.path.join(cache_root, "tiny", f"{name}-{tiny_recipe_key(name)}")
        return _materialize(target, _TINY_BUILDERS[name])
    if storage.is_remote(ref):
        return _materialize(_remote_cache_path(ref, cache_root), lambda tmp: _download_folder(ref, tmp))
    if "://" in ref:
        raise ValueError(f"model reference {ref!r} has an unsupported scheme")
    path = os.path.expanduser(ref)
    if os.path.isdir(path):
        _check_model_folder(path, ref)
        return os.path.abspath(path)
    if ref.startswith(("/", "~", ".")) or not _HUB_ID.match(ref):
        raise FileNotFoundError(f"model folder {ref!r} does not exist (and is not a valid hub id)")
    return ref


def load_clip(
    ref: str, cache_dir: str, dtype: str = "fp32", device: str = "cpu"
) -> tuple[CLIPVisionModelWithProjection, CLIPImageProcessor]:
    """CLIP's vision tower with its projection (read from a full CLIPModel checkpoint) and its image processor.

    The text tower is expected to go unused, so a load report listing only unused weights is not printed by
    every actor; a missing vision weight raises instead of being silently left random.
    """
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    path = resolve_model_ref(ref, cache_dir)
    with _quiet_load_report():
        model, info = _from_pretrained(
            CLIPVisionModelWithProjection, path, dtype=torch_dtype(dtype), output_loading_info=True
        )
    if info["missing_keys"]:
        raise ValueError(f"{ref!r} lacks CLIP vision weights, e.g. {sorted(info['missing_keys'])[:3]}")
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(_CLIP_TEXT_KEYS))
    if unexpected:
        logger.warning("%s: unused weights outside CLIP's text tower: %s", ref, unexpected[:5])
    return _ready(model, device), CLIPImageProcessor.from_pretrained(path)


def load_hubert(
    ref: str, cache_dir: str, dtype: str = "fp32", device: str = "cpu"
) -> tuple[HubertModel, Wav2Vec2FeatureExtractor]:
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    path = resolve_model_ref(ref, cache_dir)
    model = _from_pretrained(HubertModel, path, dtype=torch_dtype(dtype))
    return _ready(model, device), Wav2Vec2FeatureExtractor.from_pretrained(path)


def load_roberta(
    ref: str, cache_dir: str, dtype: str = "fp32", device: str = "cpu"
) -> tuple[BertModel, PreTrainedTokenizerBase]:
    from transformers import AutoTokenizer, BertModel

    path = resolve_model_ref(ref, cache_dir)
    # hfl's checkpoint is a BertForMaskedLM: the body loads from its ``bert.`` weights, the MLM head goes unused.
    with _quiet_load_report():
        model = _from_pretrained(BertModel, path, dtype=torch_dtype(dtype))
    return _ready(model, device), AutoTokenizer.from_pretrained(path)


def _from_pretrained(model_class: type[_M], path: str, **kwargs: Any) -> Any:
    """``model_class.from_pretrained`` from safetensors, or a ``.bin`` read with ``weights_only=True`` only."""
    os.environ.setdefault(_NO_AUTO_CONVERSION, "1")
    # use_safetensors=None: safetensors when the model has them, else the .bin. weights_only is
    # transformers' default already; it is passed so that no version's default can unpickle objects.
    return model_class.from_pretrained(path, use_safetensors=None, weights_only=True, **kwargs)


def build_model_from_config(kind: str, size: str = "real") -> PreTrainedModel:
    """A randomly initialised (seeded) encoder of the given size; no download.

    ``clip`` gives the vision tower with projection (what :func:`load_clip` returns), ``hubert`` a HubertModel,
    ``roberta`` a BertModel. Build under ``with torch.device("meta"):`` to count parameters without memory.
    """
    from transformers import (
        BertConfig,
        BertModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        HubertConfig,
        HubertModel,
    )

    if size not in _SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {_SIZES}")
    builders: dict[str, Callable[[], PreTrainedModel]] = {
        "clip": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**_CLIP_VISION[size])),
        "hubert": lambda: HubertModel(HubertConfig(**_HUBERT[size])),
        "roberta": lambda: BertModel(BertConfig(**_bert_dims(size))),
    }
    if kind not in builders:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    with _seeded(_SEED):
        return builders[kind]().eval()


def tiny_bert_vocab() -> list[str]:
    """A bert-base-chinese-like WordPiece vocab: specials, lower-case ASCII, CJK punctuation, U+4E00..U+9FA5."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # The tokenizer lower-cases, so upper-case letters never reach the vocab.
    ascii_chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    # Word-continuation pieces, so English words and numbers split into characters instead of [UNK].
    pieces = ["##" + c for c in ascii_chars if c.isalnum()]
    cjk_punct = list("，。！？、；：“”‘’（）《》【】…—～·")
    cjk = [chr(c) for c in range(0x4E00, 0x9FA6)]
    return specials + ascii_chars + pieces + cjk_punct + cjk


def _bert_dims(size: str) -> dict[str, Any]:
    if size == "tiny":
        return {**_BERT["tiny"], "vocab_size": len(tiny_bert_vocab())}
    return _BERT["real"]


def _ready(model: _M, device: str) -> _M:
    return model.to(device).eval()


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[None]:
    """Drop transformers' per-load weight report when it only lists unused checkpoint weights.

    A filter, not a higher logger level: transformers 5 runs an extra tensor-parallel check (with its own
    warnings) when that logger's level is WARNING or above. Reports with missing, mismatched or
    unconvertible weights still get through.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop_report = _DropUnusedWeightsReport()
    report_logger.addFilter(drop_report)
    try:
        yield
    finally:
        report_logger.removeFilter(drop_report)


class _DropUnusedWeightsReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        return any(status in message for status in ("MISSING", "MISMATCH", "CONVERSION"))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for a build, leaving the caller's RNG state untouched."""
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_model_folder(path: str, ref: str) -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model folder {ref!r} has no config.json")


def _materialize(target: str, fill: Callable[[str], None]) -> str:
    """Create folder ``target`` once with ``fill(tmp_dir)``; safe against concurrent processes on one node."""
    # A complete folder only ever appears through the rename below, so existence means done.
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if os.path.isdir(target):
            return target
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would keep the cache private to whoever built it first
        try:
            fill(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, target)
        except OSError:
            # The lock may not hold everywhere (e.g. some network filesystems): if another process
            # won the rename race, its folder is just as good.
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(target):
                raise
    return target


def _remote_cache_path(uri: str, cache_root: str) -> str:
    scheme = uri.split("://", 1)[0]
    # The endpoint is part of the identity: the same bucket name on two S3 services is two folders.
    key = f"{os.environ.get('AWS_ENDPOINT_URL', '')}|{uri.rstrip('/')}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = re.sub(r"[^\w.-]", "_", uri.rstrip("/").rsplit("/", 1)[-1]) or "root"
    return os.path.join(cache_root, scheme, f"{name}-{digest}")


def _download_folder(uri: str, dest: str) -> None:
    """Copy every file under a remote folder into ``dest``, keeping the layout."""
    fs, root = storage.get_fs(uri)
    root = root.rstrip("/")
    files = fs.find(root)
    if not files:
        raise FileNotFoundError(f"remote model folder {uri!r} is empty or does not exist")
    logger.info("downloading %s (%d files) to %s", uri, len(files), dest)
    for key in files:
        rel = key[len(root) :].lstrip("/")
        if not rel:
            raise FileNotFoundError(f"remote model reference {uri!r} is a file, not a folder")
        local = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs.get_file(key, local)
    _check_model_folder(dest, uri)


def _save_tiny_clip(folder: str) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=_TINY_CLIP_TEXT,
        vision_config=_CLIP_VISION["tiny"],
        projection_dim=_CLIP_VISION["tiny"]["projection_dim"],
    )
    with _seeded(_SEED):
        model = CLIPModel(config)
    model.save_pretrained(folder)
    # OpenAI CLIP preprocessing: shortest edge 224, centre crop 224, bicubic, OpenAI mean/std.
    processor = CLIPImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=3,
        do_center_crop=True,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor.save_pretrained(folder)


def _save_tiny_hubert(folder: str) -> None:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    with _seeded(_SEED):
        model = HubertModel(HubertConfig(**_HUBERT["tiny"]))
    model.save_pretrained(folder)
    # Same conventions as TencentGameMate/chinese-hubert-large's preprocessor config.
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    extractor.save_pretrained(folder)


def _save_tiny_roberta(folder: str) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = tiny_bert_vocab()
    # vocab.txt as in the hfl/bert-base-chinese repos; save_pretrained adds tokenizer.json beside it.
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, model_max_length=512)
    tokenizer.save_pretrained(folder)
    with _seeded(_SEED):
        model = BertModel(BertConfig(**_bert_dims("tiny")))
    model.save_pretrained(folder)


_TINY_BUILDERS: dict[str, Callable[[str], None]] = {
    "clip": _save_tiny_clip,
    "hubert": _save_tiny_hubert,
    "roberta": _save_tiny_roberta,
}


def _tiny_recipe(kind: str) -> dict[str, Any]:
    """Everything that decides a tiny model's files: its sizes, the seed, the code that builds them (its
    builder and this module's helpers it calls), and the versions of the libraries that run that code."""
    from importlib.metadata import version

    sizes = {
        "clip": {"vision": _CLIP_VISION["tiny"], "text": _TINY_CLIP_TEXT},
        "hubert": _HUBERT["tiny"],
        "roberta": _BERT["tiny"],
    }[kind]
    helpers = [_seeded, *((_bert_dims, tiny_bert_vocab) if kind == "roberta" else ())]
    return {
        "sizes": sizes,
        "seed": _SEED,
        "code": [inspect.getsource(f) for f in (_TINY_BUILDERS[kind], *helpers)],
        "versions": {lib: version(lib) for lib in ("torch", "transformers")},
    }


def tiny_recipe_key(kind: str) -> str:
    """A short hash of tiny model ``kind``'s recipe (:func:`_tiny_recipe`): a changed recipe is built afresh
    under a new cache folder, never mixed up with files an older one built."""
    recipe = json.dumps(_tiny_recipe(kind), sort_keys=True, default=str)
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]
