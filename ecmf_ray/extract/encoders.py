"""The three encoders as callable classes over a batch: CLIP (frame + face), HuBERT (audio), RoBERTa (text).

Ray Data runs each class in its own actor pool (the model loads once, in ``__init__``), or all of them in
one pool's actors through :class:`EncoderChain`, as the sequential reference path calls them. Each call
consumes its input columns (crops, audio, text), adds ``<branch>_feature`` (NaN where the branch failed) and
passes the rest of the row on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ecmf_ray import hub
from ecmf_ray.extract import pooling, resources
from ecmf_ray.extract.rows import count_column, error_cell, error_column, feature_column, ok_rows

logger = logging.getLogger(__name__)

CLIP_OUTPUTS: tuple[str, ...] = ("image_embeds", "pooler")
# HuBERT's convolutional front end needs one receptive field (25 ms at 16 kHz) to produce a frame.
MIN_AUDIO_SAMPLES = 400


class EmptyText(ValueError):
    """The text branch's input has no tokens to pool."""


class AudioTooShort(ValueError):
    """The clip's audio is shorter than one HuBERT frame."""


def granted_gpus() -> tuple[list, dict[str, float]]:
    """The GPU ids and the resources Ray granted this worker (empty outside Ray)."""
    import ray

    if not ray.is_initialized():
        return [], {}
    return list(ray.get_gpu_ids()), dict(ray.get_runtime_context().get_assigned_resources())


def device_for(num_gpus: float, encoder: str) -> str:
    """``cuda`` for a stage with a GPU share where CUDA works; else ``cpu``, with a warning if a GPU was asked for.

    Called once per encoder instance (one Ray actor), so a pool on a node without working CUDA (a driver
    missing, a CPU-only torch) says so once per actor instead of running on the CPU without a word.
    """
    if not num_gpus:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    gpu_ids, resources = granted_gpus()
    logger.warning(
        "%s encoder: asked for num_gpus=%s; Ray granted GPU ids %s (resources %s), but CUDA is not "
        "available here (torch %s): running on the CPU",
        encoder,
        num_gpus,
        gpu_ids,
        resources,
        torch.__version__,
    )
    return "cpu"


def _set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(int(num_threads))


def _guarded(
    rows: Sequence[int], run: Callable[[Sequence[int]], dict[int, Any]]
) -> tuple[dict[int, Any], dict[int, BaseException]]:
    """``run`` over all rows at once; if that fails, row by row, so one bad input fails only itself."""
    if not rows:
        return {}, {}
    try:
        return run(rows), {}
    except Exception:
        if len(rows) == 1:
            raise
        logger.warning("a batch of %d failed; retrying row by row", len(rows), exc_info=True)
    done: dict[int, Any] = {}
    failed: dict[int, BaseException] = {}
    for row in rows:
        try:
            done.update(run([row]))
        except Exception as err:
            failed[row] = err
    return done, failed


def _fill(
    batch: dict[str, np.ndarray],
    branch: str,
    dim: int,
    stage: str,
    done: dict[int, np.ndarray],
    failed: dict[int, BaseException],
) -> None:
    """Write a branch's vectors (NaN elsewhere) and its new failures into ``batch``."""
    out = np.full((len(batch["video_id"]), dim), np.nan, dtype=np.float32)
    for row, vector in done.items():
        if np.isfinite(vector).all():
            out[row] = vector
        else:  # e.g. an fp16 overflow: never write a NaN/inf vector as if it were a feature
            failed[row] = FloatingPointError("the pooled vector has non-finite values")
    errors = batch[error_column(branch)].copy()
    for row, err in failed.items():
        errors[row] = error_cell(stage, err)
    batch[feature_column(branch)] = out
    batch[error_column(branch)] = errors


# ---------------------------------------------------------------------------------------------- CLIP


def clip_pixels(
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    dtype: torch.dtype,
    device: str,
) -> torch.Tensor:
    """uint8 ``(N, S, S, 3)`` crops to CLIP's normalised ``(N, 3, image_size, image_size)`` input.

    The crops are already square at the model's size (resized at decode time), so this is CLIP's
    rescale + normalise only; another size is resized here (bicubic, as CLIP's processor).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(dtype)


def clip_image_features(model: Any, pixel_values: torch.Tensor, output: str) -> torch.Tensor:
    """Per-image vectors: the projected ``image_embeds`` or the vision tower's pooled hidden state."""
    if output == "image_embeds":
        return model(pixel_values=pixel_values).image_embeds
    if output == "pooler":
        return model.vision_model(pixel_values=pixel_values).pooler_output
    raise ValueError(f"unknown CLIP output {output!r}; expected one of {CLIP_OUTPUTS}")


def clip_dim(model: Any, output: str) -> int:
    return int(model.config.projection_dim if output == "image_embeds" else model.config.hidden_size)


class ClipEncoder:
    """CLIP-ViT for both visual branches (dual-branch encoder): full frames and face crops."""

    def __init__(self, cfg: Any, num_threads: int | None = None):
        _set_threads(num_threads)
        c = cfg.extract.clip
        self.branches = [b for b in ("frame", "face") if b in cfg.extract.branches]
        self.output, self.pooling = str(c.output), str(c.pooling)
        self.forward_batch = int(c.forward_batch)
        self.device = device_for(c.num_gpus, "clip")
        self.dtype = hub.torch_dtype(str(c.dtype))
        self.model, processor = hub.load_clip(
            cfg.models.clip, cfg.storage.model_cache, str(c.dtype), self.device
        )
        self.mean, self.std = list(processor.image_mean), list(processor.image_std)
        self.image_size = int(self.model.config.image_size)
        self.dim = clip_dim(self.model, self.output)

    def _embed(self, images: np.ndarray) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), self.forward_batch):
            chunk = images[start : start + self.forward_batch]
            pixels = clip_pixels(chunk, self.mean, self.std, self.image_size, self.dtype, self.device)
            parts.append(clip_image_features(self.model, pixels, self.output).float().cpu())
        return torch.cat(parts)

    def _pool_videos(self, crops: np.ndarray, counts: np.ndarray) -> Callable[[Sequence[int]], dict]:
        def run(rows: Sequence[int]) -> dict[int, Any]:
            images = np.concatenate([crops[r, : counts[r]] for r in rows])
            embeddings = torch.split(self._embed(images), [int(counts[r]) for r in rows])
            return {
                r: pooling.pool_frames(e, self.pooling).numpy() for r, e in zip(rows, embeddings, strict=True)
            }

        return run

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        for branch, column in (("frame", "frames"), ("face", "faces")):
            if branch not in self.branches:
                continue
            crops, counts = out.pop(column), batch[count_column(branch)]
            done, failed = _guarded(list(ok_rows(batch, branch)), self._pool_videos(crops, counts))
            _fill(out, branch, self.dim, "clip", done, failed)
        return out


# -------------------------------------------------------------------------------------------- HuBERT


def hubert_window_sums(
    model: Any, input_values: torch.Tensor, sample_mask: torch.Tensor, layers: Sequence[int], combine: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked sums and valid-frame counts of the combined layers for a padded batch of windows."""
    # Only the layer-norm HuBERTs (Large, the paper's) were trained with an attention mask.
    use_mask = model.config.feat_extract_norm == "layer"
    out = model(input_values, attention_mask=sample_mask if use_mask else None, output_hidden_states=True)
    hidden = pooling.combine_layers(pooling.select_layers(out.hidden_states, layers), combine)
    frames = model._get_feat_extract_output_lengths(sample_mask.sum(dim=-1)).clamp(min=0)
    return pooling.masked_sum(hidden, pooling.lengths_to_mask(frames, hidden.shape[1]))


def layer_output_dim(model: Any, layers: list[int], combine: str) -> int:
    """The feature size of ``layers`` combined; a layer the model does not have fails at start-up, not per clip."""
    pooling.layer_indices(int(model.config.num_hidden_layers) + 1, layers)
    return pooling.combined_dim(int(model.config.hidden_size), len(layers), combine)


class HubertEncoder:
    """HuBERT hidden states of the configured layers, combined, mean-pooled over valid frames."""

    def __init__(self, cfg: Any, num_threads: int | None = None):
        _set_threads(num_threads)
        h = cfg.extract.hubert
        self.layers, self.combine = [int(x) for x in h.layers], str(h.combine)
        self.windows_per_forward = int(h.batch_size)
        self.sample_rate = int(cfg.extract.audio.sample_rate)
        self.window = int(round(float(cfg.extract.audio.window_s) * self.sample_rate))
        self.device = device_for(h.num_gpus, "hubert")
        self.dtype = hub.torch_dtype(str(h.dtype))
        self.model, self.extractor = hub.load_hubert(
            cfg.models.hubert, cfg.storage.model_cache, str(h.dtype), self.device
        )
        self.dim = layer_output_dim(self.model, self.layers, self.combine)

    def _forward(self, windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        sums, counts = [], []
        for start in range(0, len(windows), self.windows_per_forward):
            inputs = self.extractor(
                windows[start : start + self.windows_per_forward],
                sampling_rate=self.sample_rate,
                padding=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            values = inputs["input_values"].to(self.device, self.dtype)
            mask = inputs["attention_mask"].to(self.device)
            s, c = hubert_window_sums(self.model, values, mask, self.layers, self.combine)
            sums.append(s.cpu())
            counts.append(c.cpu())
        return torch.cat(sums), torch.cat(counts)

    def _run(self, audio: list[np.ndarray]) -> Callable[[Sequence[int]], dict]:
        def run(rows: Sequence[int]) -> dict[int, Any]:
            windows, segments = [], []
            for r in rows:
                bounds = pooling.window_bounds(len(audio[r]), self.window)
                windows.extend(audio[r][a:b] for a, b in bounds)
                segments.append(len(bounds))
            sums, counts = self._forward(windows)
            vectors = pooling.segment_mean(sums, counts, segments)
            return {r: (v.numpy(), n) for r, v, n in zip(rows, vectors, segments, strict=True)}

        return run

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        audio = [np.frombuffer(b, dtype=np.float32) for b in out.pop("audio")]
        rows, short = [], {}
        for r in ok_rows(batch, "audio"):
            if len(audio[r]) < MIN_AUDIO_SAMPLES:
                short[int(r)] = AudioTooShort(
                    f"{len(audio[r])} samples; HuBERT needs at least {MIN_AUDIO_SAMPLES}"
                )
            else:
                rows.append(int(r))
        done, failed = _guarded(rows, self._run(audio))
        failed.update(short)
        _fill(out, "audio", self.dim, "hubert", {r: v for r, (v, _) in done.items()}, failed)
        windows = np.zeros(len(audio), dtype=np.int32)
        for r, (_, n) in done.items():
            windows[r] = n
        out[count_column("audio")] = windows
        return out


# ------------------------------------------------------------------------------------------- RoBERTa


def roberta_features(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    layers: Sequence[int],
    combine: str,
    max_length: int,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text vectors (combined layers, mean over real tokens: no padding, no [CLS]/[SEP]) and token counts."""
    enc = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    special = enc.pop("special_tokens_mask").bool()
    enc = {k: v.to(device) for k, v in enc.items()}
    out = model(**enc, output_hidden_states=True)
    hidden = pooling.combine_layers(pooling.select_layers(out.hidden_states, layers), combine)
    real = enc["attention_mask"].bool() & ~special.to(device)
    return pooling.masked_mean(hidden, real).cpu(), real.sum(dim=1).cpu()


class RobertaEncoder:
    """RoBERTa-wwm-ext over the text branch's input (transcript, or the enriched text)."""

    def __init__(self, cfg: Any, num_threads: int | None = None):
        _set_threads(num_threads)
        r = cfg.extract.roberta
        self.layers, self.combine = [int(x) for x in r.layers], str(r.combine)
        self.max_length = int(r.max_length)
        self.device = device_for(r.num_gpus, "roberta")
        self.model, self.tokenizer = hub.load_roberta(
            cfg.models.roberta, cfg.storage.model_cache, str(r.dtype), self.device
        )
        self.dim = layer_output_dim(self.model, self.layers, self.combine)

    def _run(self, texts: list[str]) -> Callable[[Sequence[int]], dict]:
        def run(rows: Sequence[int]) -> dict[int, Any]:
            vectors, counts = roberta_features(
                self.model,
                self.tokenizer,
                [texts[r] for r in rows],
                self.layers,
                self.combine,
                self.max_length,
                self.device,
            )
            return {r: (v.numpy(), int(n)) for r, v, n in zip(rows, vectors, counts, strict=True)}

        return run

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        texts = ["" if t is None else str(t).strip() for t in out.pop("text")]
        rows, empty = [], {}
        for r in ok_rows(batch, "text"):
            if texts[r]:
                rows.append(int(r))
            else:
                empty[int(r)] = EmptyText("empty text")
        done, failed = _guarded(rows, self._run(texts))
        for r in [r for r, (_, n) in done.items() if n == 0]:
            del done[r]
            failed[r] = EmptyText("the text has no tokens besides special tokens")
        failed.update(empty)
        _fill(out, "text", self.dim, "roberta", {r: v for r, (v, _) in done.items()}, failed)
        tokens = np.zeros(len(texts), dtype=np.int32)
        for r, (_, n) in done.items():
            tokens[r] = n
        out[count_column("text")] = tokens
        return out


ENCODERS: dict[str, type] = {"clip": ClipEncoder, "hubert": HubertEncoder, "roberta": RobertaEncoder}


class EncoderChain:
    """Several encoders in one process, each call running them in pipeline order.

    The sequential loop's encoders, and the actor of a single pool holding them all
    (``extract.encoder_pools: one``): one process importing torch and transformers instead of one per encoder.
    """

    def __init__(self, cfg: Any, num_threads: int | None = None):
        self.encoders = [ENCODERS[name](cfg, num_threads) for name in resources.encoder_stages(cfg)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for encoder in self.encoders:
            batch = encoder(batch)
        return batch
