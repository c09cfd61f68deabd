"""Faces for the face branch: the release's own OpenFace crops, or detected in the sampled frames.

``extract.faces.source`` picks where they come from per clip (:mod:`ecmf_ray.extract.sources`):

- ``openface``: the MER2025 release's ``openface_face/NAME/NAME.npy`` (uint8 BGR frames, about
  ``(n, 112, 112, 3)``), the faces the paper and the baselines encode: K sampled uniformly by the same rule
  as video frames, turned to RGB and resized to the crop size. No detector runs.
- ``detect``: the largest face per sampled frame, squared with a margin (detectors below).
- ``auto``: the clip's face file where it exists, detection otherwise.

Two detectors, picked by ``extract.faces.detector``:

- ``haar``: OpenCV's frontal-face Haar cascade, whose XML ships inside opencv-python-headless 4.x, so it
  runs offline with nothing to download (the default, and what the tests use).
- ``yunet``: OpenCV's ``FaceDetectorYN`` (a small CNN, much more robust to pose and light) loaded from
  ``extract.faces.model_path`` (the ``face_detection_yunet_*.onnx`` file), for clusters.

Both see a downscaled copy of each frame (``detect_size`` short side: detection cost grows with pixels,
and emotion-relevant faces are not tiny); boxes are scaled back and crops come from the decoded frame.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any, Protocol

import cv2
import numpy as np

from ecmf_ray import storage
from ecmf_ray.extract.decode import sample_indices
from ecmf_ray.extract.sources import clip_name, release_path

DETECTORS: tuple[str, ...] = ("haar", "yunet")
NO_FACE_POLICIES: tuple[str, ...] = ("center", "skip")
OPENFACE_DIR = "openface_face"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class NoFaceFound(ValueError):
    """No sampled frame had a face and the policy is ``skip``."""


class NoFaceFile(FileNotFoundError):
    """The video has no OpenFace face file (an error with ``extract.faces.source=openface``)."""


class BadFaceFile(ValueError):
    """An OpenFace face file that is unreadable or not uint8 frames ``(n, H, W, 3)``."""


def openface_path(video_path: str, openface_dir: str | None) -> str:
    """``<openface_dir>/NAME/NAME.npy`` for ``.../video/NAME.mp4``; by default ``openface_face/`` beside ``video/``."""
    name = clip_name(video_path)
    return release_path(video_path, OPENFACE_DIR, openface_dir, name, f"{name}.npy")


def read_openface(path: str) -> np.ndarray:
    """The frames of an OpenFace face file (uint8 BGR ``(n, H, W, 3)``, n >= 1); never unpickles."""
    if not storage.exists(path):
        raise NoFaceFile(f"no OpenFace face file {path}")
    try:
        frames = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    except Exception as err:
        raise BadFaceFile(f"{path}: cannot read as a .npy array ({type(err).__name__}: {err})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape[1:3]:
        raise BadFaceFile(
            f"{path}: expected uint8 BGR frames shaped (n, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    if len(frames) == 0:
        raise BadFaceFile(f"{path}: holds no frames")
    return frames


def openface_crops(frames_bgr: np.ndarray, num: int, size: int) -> np.ndarray:
    """``num`` frames spread uniformly (as video frames are sampled), RGB, resized to ``(size, size)``."""
    height, width = frames_bgr.shape[1:3]
    picked = frames_bgr[sample_indices(len(frames_bgr), 0.0, num)]
    return np.stack(
        [crop_resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), center_box(height, width), size) for f in picked]
    )


class FaceDetector(Protocol):
    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Boxes ``(n, 4)`` as ``x, y, w, h`` in frame pixels, one array per frame of ``frames`` (K, H, W, 3)."""
        ...


def detection_scale(height: int, width: int, detect_size: int) -> float:
    """Factor that brings the frame's short side down to ``detect_size`` (never upscales)."""
    return min(1.0, detect_size / min(height, width))


class HaarDetector:
    def __init__(self, detect_size: int, min_size: float, scale_factor: float, min_neighbors: int):
        path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(
                f"cannot load the Haar cascade {path}; is opencv-python-headless 4.x installed?"
            )
        self.detect_size = detect_size
        self.min_size = min_size
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        if len(frames) == 0:
            return []
        height, width = frames.shape[1:3]
        scale = detection_scale(height, width, self.detect_size)
        side = max(1, round(self.min_size * min(height, width) * scale))
        out = []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            if scale < 1.0:
                gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            boxes = self.cascade.detectMultiScale(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
            )
            out.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale)
        return out


class YuNetDetector:
    def __init__(self, model_path: str, detect_size: int, min_size: float, score_threshold: float):
        if not model_path or not os.path.isfile(os.path.expanduser(model_path)):
            raise FileNotFoundError(
                f"extract.faces.model_path must point at the YuNet ONNX file for detector=yunet, got {model_path!r}"
            )
        self.model_path = os.path.expanduser(model_path)
        self.detect_size = detect_size
        self.min_size = min_size
        self.score_threshold = score_threshold
        self._net: Any = None
        self._input_size: tuple[int, int] | None = None

    def _net_for(self, size: tuple[int, int]) -> Any:
        if self._net is None:
            self._net = cv2.FaceDetectorYN.create(self.model_path, "", size, self.score_threshold)
        if self._input_size != size:
            self._net.setInputSize(size)
            self._input_size = size
        return self._net

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        if len(frames) == 0:
            return []
        height, width = frames.shape[1:3]
        scale = detection_scale(height, width, self.detect_size)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        net = self._net_for(size)
        min_side = self.min_size * min(height, width)
        out = []
        for frame in frames:
            image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            if scale < 1.0:
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            _, faces = net.detect(image)
            boxes = np.zeros((0, 4), np.float32) if faces is None else faces[:, :4].astype(np.float32) / scale
            out.append(boxes[np.minimum(boxes[:, 2], boxes[:, 3]) >= min_side])
        return out


@functools.lru_cache(maxsize=4)
def _cached_detector(
    kind: str, model_path: str | None, detect_size: int, min_size: float, scale_factor: float, score: float
) -> FaceDetector:
    if kind == "haar":
        return HaarDetector(detect_size, min_size, scale_factor, min_neighbors=4)
    if kind == "yunet":
        return YuNetDetector(model_path or "", detect_size, min_size, score)
    raise ValueError(f"unknown face detector {kind!r}; expected one of {DETECTORS}")


def build_detector(cfg_faces: Any) -> FaceDetector:
    """The configured detector, built once per process (Ray reuses workers across tasks)."""
    return _cached_detector(
        str(cfg_faces.detector),
        cfg_faces.model_path,
        int(cfg_faces.detect_size),
        float(cfg_faces.min_size),
        float(cfg_faces.scale_factor),
        float(cfg_faces.score_threshold),
    )


def largest_box(boxes: np.ndarray) -> np.ndarray | None:
    """The box ``x, y, w, h`` with the largest area, or None."""
    if len(boxes) == 0:
        return None
    return boxes[int(np.argmax(boxes[:, 2] * boxes[:, 3]))]


def square_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A square ``x0, y0, x1, y1`` around ``box`` grown by ``margin`` of its size, kept inside the frame.

    Near an edge the square shifts inwards rather than shrinking, so the face keeps its scale.
    """
    x, y, w, h = (float(v) for v in box)
    side = min(max(w, h) * (1.0 + 2.0 * margin), height, width)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0.0), width - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0.0), height - side)))
    s = int(round(side))
    return x0, y0, min(x0 + s, width), min(y0 + s, height)


def center_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square of the frame."""
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def crop_resize(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = frame[y0:y1, x0:x1]
    shrink = crop.shape[0] > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def face_crops(
    frames: np.ndarray, boxes: list[np.ndarray], *, size: int, margin: float, no_face: str
) -> tuple[np.ndarray, np.ndarray]:
    """Square crops ``(n, size, size, 3)`` of the largest face per frame, and which frames had a face.

    A frame without a face gives a centre crop (``no_face=center``) or nothing (``skip``).
    """
    if no_face not in NO_FACE_POLICIES:
        raise ValueError(f"unknown no_face policy {no_face!r}; expected one of {NO_FACE_POLICIES}")
    height, width = frames.shape[1:3]
    crops, found = [], []
    for frame, frame_boxes in zip(frames, boxes, strict=True):
        box = largest_box(frame_boxes)
        found.append(box is not None)
        if box is not None:
            crops.append(crop_resize(frame, square_box(box, margin, height, width), size))
        elif no_face == "center":
            crops.append(crop_resize(frame, center_box(height, width), size))
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return stacked, np.asarray(found, dtype=bool)
