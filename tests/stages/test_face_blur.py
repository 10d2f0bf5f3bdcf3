import io
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image

from curate.stages.face_blur import BOXES, FaceBlur, FaceBlurConfig, pixel_box

ASTRONAUT_FACE = (173, 82, 275, 180)  # Eileen Collins' face in skimage.data.astronaut, pixels x0, y0, x1, y1


def encode(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def inside(boxes, shape) -> np.ndarray:
    """A mask of the pixels the stage blurs for `boxes` (normalized)."""
    mask = np.zeros(shape[:2], bool)
    for box in boxes:
        x0, y0, x1, y1 = pixel_box(box, shape[1], shape[0])
        mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    hopper_file = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    hopper = np.asarray(Image.open(hopper_file).convert("RGB"))
    return {"astronaut_png": encode(skimage.data.astronaut(), "PNG"),
            "astronaut_jpg": encode(skimage.data.astronaut(), "JPEG"),
            "hopper_jpg": encode(hopper, "JPEG")}


def stage_for(**config) -> FaceBlur:
    stage = FaceBlur(FaceBlurConfig(**config))
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def blurring() -> FaceBlur:
    return stage_for()


def batch(images: list[bytes], boxes: list | None = None) -> pa.Table:
    table = pa.table({"uid": [f"{i:032x}" for i in range(len(images))], "image": pa.array(images, pa.binary())})
    return table if boxes is None else table.append_column("face_bboxes", pa.array(boxes, BOXES))


def test_faces_found_in_real_photographs_and_blurred_inside_the_boxes_only(blurring, photos):
    verdict = blurring.process(batch([photos["astronaut_png"], photos["hopper_jpg"]]))
    assert list(verdict.reasons) == [None, None]
    astronaut, hopper = verdict.table.column("face_bboxes").to_pylist()
    assert len(astronaut) == 1 and len(hopper) == 1
    x0, y0, x1, y1 = pixel_box(astronaut[0], 512, 512)
    face = ASTRONAUT_FACE  # the detected box covers the face: overlap over the union at least 0.7
    overlap = max(0, min(x1, face[2]) - max(x0, face[0])) * max(0, min(y1, face[3]) - max(y0, face[1]))
    union = (x1 - x0) * (y1 - y0) + (face[2] - face[0]) * (face[3] - face[1]) - overlap
    assert overlap / union > 0.7
    before, after = pixels(photos["astronaut_png"]), pixels(verdict.table.column("image")[0].as_py())
    mask = inside(astronaut, before.shape)
    assert np.abs(after - before)[mask].mean() > 5  # the face is blurred
    assert np.array_equal(after[~mask], before[~mask])  # PNG is lossless: every other pixel is as it was
    assert Image.open(io.BytesIO(verdict.table.column("image")[0].as_py())).format == "PNG"


def test_jpeg_reencoded_once_in_its_own_format_and_tables(blurring, photos, monkeypatch):
    saves = []
    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save",
                        lambda self, *a, **k: saves.append(k.get("format")) or real_save(self, *a, **k))
    verdict = blurring.process(batch([photos["astronaut_jpg"]]))
    out = verdict.table.column("image")[0].as_py()
    assert saves == ["JPEG"]  # one encode of the image, no intermediate copies
    original, blurred = Image.open(io.BytesIO(photos["astronaut_jpg"])), Image.open(io.BytesIO(out))
    assert blurred.format == "JPEG" and blurred.size == original.size
    assert blurred.quantization == original.quantization  # re-encoded with the image's own tables
    before, after = pixels(photos["astronaut_jpg"]), pixels(out)
    mask = inside(verdict.table.column("face_bboxes")[0].as_py(), before.shape)
    assert np.abs(after - before)[mask].mean() > 5
    # outside the faces only the one re-encoding's rounding: far below the blur's change
    assert np.abs(after - before)[~mask].mean() < 1.0


def test_blur_false_writes_boxes_and_keeps_the_bytes(photos):
    stage = stage_for(blur=False)
    images = [photos["astronaut_png"], photos["hopper_jpg"]]
    verdict = stage.process(batch(images))
    assert verdict.table.column("image").to_pylist() == images
    assert [len(b) for b in verdict.table.column("face_bboxes").to_pylist()] == [1, 1]


def test_given_boxes_used_without_detection(blurring, photos):
    corner = [[0.0, 0.0, 0.25, 0.2]]  # no face there; the astronaut's face is elsewhere
    images = [photos["astronaut_png"], photos["astronaut_png"], b"not an image at all", photos["astronaut_png"]]
    verdict = blurring.process(batch(images, [corner, [], [], None]))
    # the undecodable row passes: given boxes (here none) need no decoding, so no detector ran on it
    assert list(verdict.reasons) == [None, None, None, None]
    boxes = verdict.table.column("face_bboxes").to_pylist()
    assert boxes[:3] == [corner, [], []] and len(boxes[3]) == 1  # the null row was detected
    before = pixels(photos["astronaut_png"])
    after = pixels(verdict.table.column("image")[0].as_py())
    mask = inside(corner, before.shape)
    assert np.abs(after - before)[mask].mean() > 5
    assert np.array_equal(after[~mask], before[~mask])  # the face itself is untouched: no detection used
    assert verdict.table.column("image")[1].as_py() == photos["astronaut_png"]  # [] means no faces: bytes kept
    # blurring the detected boxes later (boxes given, as `curate reshard --blur-faces` would) gives the same bytes
    later = blurring.process(batch([photos["astronaut_png"]], [boxes[3]]))
    assert later.table.column("image")[0].as_py() == verdict.table.column("image")[3].as_py()


def test_drawings_without_faces_keep_their_bytes(blurring, pool_table):
    images = pool_table.column("image").to_pylist()[:24]
    verdict = blurring.process(batch(images))
    boxes = verdict.table.column("face_bboxes").to_pylist()
    for original, out, found in zip(images, verdict.table.column("image").to_pylist(), boxes):
        assert (out == original) == (not found)
        assert all(0 <= v <= 1 for box in found for v in box)


def test_bad_rows_rejected_with_reasons(blurring, photos):
    verdict = blurring.process(batch([b"<html>404</html>", None, photos["astronaut_png"]],
                                     [None, None, [[0.5, 0.5, 0.2, 0.9]]]))
    assert list(verdict.reasons) == ["undecodable_image", "undecodable_image", "invalid_face_bboxes"]
    assert "[0.5, 0.5, 0.2, 0.9]" in verdict.values[2]


def animation(frames: list[np.ndarray], fmt: str) -> bytes:
    """An animated GIF or WebP of `frames` (RGB arrays), 80 ms a frame, looping."""
    out = io.BytesIO()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(out, format=fmt, save_all=True, append_images=images[1:], duration=80, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_every_frame_of_an_animation_is_searched_and_blurred(blurring, fmt):
    """A face only in the second of three frames is found, and the output keeps all three frames,
    each blurred there (one frame of output, or a face found only in the first, fails)."""
    astronaut = skimage.data.astronaut()
    blank = np.full_like(astronaut, 255)
    data = animation([blank, astronaut, blank], fmt)
    verdict = blurring.process(batch([data]))
    assert list(verdict.reasons) == [None]
    (boxes,) = verdict.table.column("face_bboxes").to_pylist()
    assert len(boxes) == 1
    out = Image.open(io.BytesIO(verdict.table.column("image")[0].as_py()))
    assert out.format == fmt and out.n_frames == 3 and out.info.get("loop") == 0
    before, after = Image.open(io.BytesIO(data)), out
    mask = inside(boxes, astronaut.shape)
    before.seek(1)
    after.seek(1)
    first, blurred = (np.asarray(im.convert("RGB")).astype(np.int16) for im in (before, after))
    change = np.abs(blurred - first)
    assert change[mask].mean() > 20  # the face is blurred in its frame
    # the rest of it changes by the re-encoding alone (a GIF's new palette): far less than the blur
    assert change[~mask].mean() < change[mask].mean() / 5
    assert after.info.get("duration") == 80
