"""NudeNet's detector (the YOLOv8n ONNX model shipped in the nudenet wheel) on onnxruntime, for
whole batches: shared by the `nsfw` stage (exposed-body classes) and `face_blur` (its face classes).

NudeNet's own `detect` decodes its 2,100+ anchors in a Python loop, one image a call; here the
images of a batch go through the model in one run and the anchors of every image are decoded
with NumPy. Preprocessing is NudeNet's: the image padded with black to a square at its
bottom/right, resized (bilinear) to the model's side, RGB scaled to [0, 1]; boxes are kept at
confidence >= 0.2 and merged by class-agnostic NMS (score 0.25, IoU 0.45), as NudeNet does.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)  # the model's classes, in its output order (nudenet.nudenet.__labels)
CANDIDATE_SCORE = 0.2  # NudeNet keeps an anchor whose best class scores at least this
NMS_SCORE, NMS_IOU = 0.25, 0.45
ANIMATED_SIGNATURES = (b"GIF8", b"RIFF", b"\x89PNG")  # the formats whose files may hold several frames


def model_path() -> Path:
    """320n.onnx as shipped in the nudenet wheel."""
    try:
        import nudenet
    except ImportError as exc:
        raise ImportError("nsfw and face_blur run NudeNet's detector: pip install 'curate[safety]' "
                          "(nudenet and onnxruntime; NudeNet is AGPL-3.0)") from exc

    path = Path(nudenet.__file__).parent / "320n.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"NudeNet's model not found at {path}; reinstall nudenet")
    return path


def providers() -> list[str]:
    """CUDA first when onnxruntime has it (onnxruntime-gpu and a device), else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def decode_bgr(data: bytes | None) -> np.ndarray:
    """An encoded image as a 3-channel BGR uint8 array, as stored (the EXIF orientation not applied,
    as NudeNet reads it, so boxes fit the stored pixels that face_blur blurs): OpenCV, or Pillow
    for what OpenCV cannot open (GIF); raises ValueError naming what was wrong."""
    import cv2

    if not data:
        raise ValueError("no image bytes")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is not None:
        return image
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as opened:
            return np.ascontiguousarray(np.asarray(opened.convert("RGB"))[:, :, ::-1])
    except Exception as exc:  # any decoder failure is this image's rejection (re-raised as one error)
        raise _undecodable(data, exc) from exc


def decode_frames(data: bytes | None) -> list[np.ndarray]:
    """Every frame of an encoded image as BGR arrays, so a detector checks them all: one for a still
    image (decode_bgr), each frame of an animated GIF, WebP or PNG as Pillow composites it on the
    canvas (what a viewer shows); raises ValueError naming what was wrong."""
    if not data or not data.startswith(ANIMATED_SIGNATURES):
        return [decode_bgr(data)]
    from PIL import Image, ImageSequence

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if getattr(opened, "n_frames", 1) == 1:
                return [decode_bgr(data)]
            return [np.ascontiguousarray(np.asarray(frame.convert("RGB"))[:, :, ::-1])
                    for frame in ImageSequence.Iterator(opened)]
    except Exception as exc:  # any decoder failure is this image's rejection (re-raised as one error)
        raise _undecodable(data, exc) from exc


def _undecodable(data: bytes, exc: Exception) -> ValueError:
    """The one error an image a decoder fails on is rejected with."""
    return ValueError(f"undecodable image ({len(data)} bytes): {type(exc).__name__}: {exc}"[:200])


@dataclass
class Detections:
    """One image's boxes after NMS: pixel [x0, y0, x1, y1] (clipped to the image), class ids, scores."""

    boxes: np.ndarray  # float32 (n, 4)
    classes: np.ndarray  # int64 (n,)
    scores: np.ndarray  # float32 (n,)

    @classmethod
    def concat(cls, frames: list[Detections]) -> Detections:
        """The detections of several frames of one image (an animation's) as one."""
        return cls(*(np.concatenate([getattr(f, name) for f in frames]) for name in ("boxes", "classes", "scores")))


class NudeNet:
    """The detector, loaded once (a worker's `setup`); `detect` runs a list of BGR images."""

    def __init__(self, side: int = 320, batch_size: int = 16):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # the worker's share of the cores (engines set OMP_NUM_THREADS), not every core in every worker
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path()), options, providers=providers())
        self.input = self.session.get_inputs()[0].name
        self.side = side
        self.batch_size = batch_size

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for each image, the images run `batch_size` at a time."""
        found = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            blob, scales = self._blob(chunk)
            output = self.session.run(None, {self.input: blob})[0]  # (batch, 4 + classes, anchors)
            found += [_decode(output[k], scales[k], image.shape[:2]) for k, image in enumerate(chunk)]
        return found

    def detect_frames(self, images: list[list[np.ndarray]]) -> list[Detections]:
        """Detections for each image of its every frame together (a still image has one frame), the
        frames batched across images."""
        found = iter(self.detect([frame for frames in images for frame in frames]))
        return [Detections.concat([next(found) for _ in frames]) for frames in images]

    def _blob(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        """The model's input for a chunk (NCHW float32 RGB in [0, 1]) and each image's scale back."""
        import cv2

        blob = np.empty((len(images), 3, self.side, self.side), np.float32)
        scales = []
        for k, image in enumerate(images):
            height, width = image.shape[:2]
            square = max(height, width)
            padded = cv2.copyMakeBorder(image, 0, square - height, 0, square - width, cv2.BORDER_CONSTANT)
            resized = cv2.resize(padded, (self.side, self.side), interpolation=cv2.INTER_LINEAR)
            blob[k] = resized[:, :, ::-1].transpose(2, 0, 1)
            scales.append(square / self.side)
        blob *= 1 / 255.0
        return blob, scales


def _decode(output: np.ndarray, scale: float, shape: tuple[int, int]) -> Detections:
    """One image's anchors (4 + classes, anchors) to NMS-merged boxes in its pixels."""
    import cv2

    scores = output[4:]
    best = scores.max(axis=0)
    keep = np.flatnonzero(best >= CANDIDATE_SCORE)
    if not len(keep):
        return Detections(np.empty((0, 4), np.float32), np.empty(0, np.int64), np.empty(0, np.float32))
    cx, cy, w, h = output[:4, keep] * scale
    height, width = shape
    x0 = np.clip(cx - w / 2, 0, width)
    y0 = np.clip(cy - h / 2, 0, height)
    x1 = np.minimum(x0 + w, width)
    y1 = np.minimum(y0 + h, height)
    conf = best[keep]
    picked = np.asarray(cv2.dnn.NMSBoxes(np.stack([x0, y0, x1 - x0, y1 - y0], 1).tolist(), conf.tolist(),
                                         NMS_SCORE, NMS_IOU), np.int64).reshape(-1)
    boxes = np.stack([x0, y0, x1, y1], 1)[picked].astype(np.float32)
    return Detections(boxes, scores[:, keep].argmax(axis=0)[picked].astype(np.int64), conf[picked].astype(np.float32))
