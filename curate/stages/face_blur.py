"""Face blur stage: faces found by NudeNet's detector (its FACE_FEMALE / FACE_MALE classes, the
model shipped in its wheel) or given in the input, written as DataComp's `face_bboxes` and
blurred in the image bytes."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from pydantic import Field

from curate.detector import LABELS, Detections, NudeNet, decode_frames
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict

FACES = [LABELS.index("FACE_FEMALE"), LABELS.index("FACE_MALE")]
BOXES = pa.list_(pa.list_(pa.float64()))  # DataComp's face_bboxes: per face [x0, y0, x1, y1] in [0, 1]


class FaceBlurConfig(StageConfig):
    """Parameters of the face_blur stage."""

    blur: bool = Field(True, description="blur the faces in the image bytes; false only writes face_bboxes")
    min_confidence: float = Field(0.3, ge=0.0, le=1.0, description="a face detection at or above this counts")
    sigma: float = Field(0.1, gt=0.0, le=1.0,
                         description="Gaussian blur radius as a fraction of the face box's longer side")
    side: int = Field(640, ge=32, multiple_of=32,
                      description="the detector's input side in pixels (faces under ~5% of the image side are "
                                  "missed at 640)")
    batch_size: int = Field(8, gt=0, description="images per model run")


class FaceBlur(MapStage):
    """Find faces (NudeNet's face classes, or the input's face_bboxes), write face_bboxes, blur them in
    the image (re-encoded once, same format)."""

    name = "face_blur"
    Config = FaceBlurConfig
    reads = ("image",)
    writes = {"face_bboxes": BOXES, "image": pa.binary()}
    reasons = ("undecodable_image", "invalid_face_bboxes", "blur_failed")
    uses_model = True

    def setup(self) -> None:
        self._model = NudeNet(self.config.side, self.config.batch_size)

    def process(self, table: pa.Table) -> Verdict:
        n = table.num_rows
        images = table.column("image").to_pylist()
        given = table.column("face_bboxes").to_pylist() if "face_bboxes" in table.column_names else [None] * n
        boxes: list[list[list[float]] | None] = [None] * n
        problems: dict[int, tuple[str, str]] = {}
        decoded = {}
        for i, rows in enumerate(given):
            if rows is not None:
                error = _invalid(rows)
                if error:
                    problems[i] = ("invalid_face_bboxes", error)
                else:
                    boxes[i] = [list(map(float, box)) for box in rows]
                continue
            try:  # only rows without given boxes are decoded for the detector, every frame of an animation
                decoded[i] = decode_frames(images[i])
            except ValueError as exc:
                problems[i] = ("undecodable_image", str(exc))
        for i, found in zip(decoded, self._model.detect_frames(list(decoded.values()))):
            boxes[i] = self._faces(found, decoded[i][0].shape[:2])
        if self.config.blur:
            for i, rows in enumerate(boxes):
                if rows:
                    try:
                        images[i] = blur_faces(images[i], rows, self.config.sigma)
                    except Exception as exc:  # noqa: BLE001 - a failure on one image is that row's rejection
                        problems[i] = ("blur_failed", f"{type(exc).__name__}: {exc}"[:200])
                        boxes[i] = None
        table = set_column(set_column(table, "face_bboxes", boxes, BOXES), "image", images, pa.binary())
        verdict = Verdict(table)
        for i, (reason, value) in problems.items():
            verdict.reject(i, reason, value)
        return verdict

    def _faces(self, found: Detections, shape: tuple[int, int]) -> list[list[float]]:
        """The normalized face boxes of an image's detections over its frames: every face of any frame
        (an animation's frames share its canvas, and each frame is blurred at all of them)."""
        height, width = shape
        faces = found.boxes[np.isin(found.classes, FACES) & (found.scores >= self.config.min_confidence)]
        normalized = faces.astype(np.float64) / np.array([width, height, width, height])
        unique = dict.fromkeys(map(tuple, np.clip(normalized, 0.0, 1.0).tolist()))  # a face still across frames once
        return [list(box) for box in unique]


def _invalid(rows) -> str | None:
    """Why given face_bboxes are not DataComp's format (lists of [x0, y0, x1, y1] in [0, 1]), or None."""
    for box in rows:
        if box is None or len(box) != 4 or any(v is None for v in box):
            return f"a box is not 4 numbers: {box}"
        x0, y0, x1, y1 = box
        if not (0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1):
            return f"not a normalized [x0, y0, x1, y1] box: {box}"
    return None


def pixel_box(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A normalized box as whole pixels covering it (floor of the start, ceiling of the end)."""
    x0, y0, x1, y1 = box
    return (int(np.floor(x0 * width)), int(np.floor(y0 * height)),
            int(np.ceil(x1 * width)), int(np.ceil(y1 * height)))


def blur_faces(data: bytes, boxes: list[list[float]], sigma: float) -> bytes:
    """The image with a Gaussian blur inside each box (radius `sigma` x the box's longer side),
    pixels outside the boxes untouched, encoded once in its own format (a JPEG with its own
    quantization tables and subsampling, its EXIF and ICC profile kept). An animation keeps its
    frames, each blurred at every box, with their durations and loop count."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        fmt = image.format
        keep = {key: image.info[key] for key in ("exif", "icc_profile") if image.info.get(key)}
        out = io.BytesIO()
        if getattr(image, "n_frames", 1) > 1:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                frames.append(_blurred(frame.convert("RGBA"), boxes, sigma))
                durations.append(frame.info.get("duration", 100))  # a WebP frame's is known once it is loaded
            loop = {"loop": image.info["loop"]} if "loop" in image.info else {}  # absent: it plays once
            frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=durations, **loop, **keep,
                           **({"quality": 95} if fmt == "WEBP" else {}))
            return out.getvalue()
        work = image if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert(
            "RGBA" if "transparency" in image.info or image.mode.endswith("A") else "RGB")
        _blurred(work, boxes, sigma)
        if fmt == "JPEG" and work is image:
            work.save(out, format="JPEG", quality="keep", **keep)
        elif fmt == "JPEG":  # CMYK or another mode Pillow cannot blur: saved as RGB, without the old profile
            work.convert("RGB").save(out, format="JPEG", quality=95, **{k: v for k, v in keep.items() if k == "exif"})
        else:
            work.save(out, format=fmt, **keep, **({"quality": 95} if fmt == "WEBP" else {}))
    return out.getvalue()


def _blurred(image, boxes: list[list[float]], sigma: float):
    """`image` (a Pillow image, changed in place and returned) blurred inside each normalized box."""
    from PIL import ImageFilter

    for box in boxes:
        x0, y0, x1, y1 = pixel_box(box, *image.size)
        if x1 > x0 and y1 > y0:
            region = image.crop((x0, y0, x1, y1))
            image.paste(region.filter(ImageFilter.GaussianBlur(sigma * max(x1 - x0, y1 - y0))), (x0, y0))
    return image
