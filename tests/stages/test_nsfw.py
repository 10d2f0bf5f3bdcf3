import io

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image

from curate.detector import LABELS
from curate.stages.nsfw import UNSAFE, Nsfw, NsfwConfig


def stage_for(**config) -> Nsfw:
    stage = Nsfw(NsfwConfig(**config))
    stage.setup()
    return stage


def library_scores(images: list[bytes], classes: list[str]) -> np.ndarray:
    """The same score from NudeNet's own `detect`, one image a call. Its reader swaps red and blue
    (cvtColor RGBA2BGR on a 3-channel image) before blobFromImage swaps them back, so an RGB array
    handed to it reaches the model as RGB, as the stage feeds it."""
    from nudenet import NudeDetector

    detector = NudeDetector()
    scores = []
    for data in images:
        rgb = np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        found = [d["score"] for d in detector.detect(rgb) if d["class"] in classes]
        scores.append(max(found, default=0.0))
    return np.array(scores, np.float32)


def batch(images: list) -> pa.Table:
    return pa.table({"uid": [f"{i:032x}" for i in range(len(images))], "image": pa.array(images, pa.binary())})


def test_scores_are_the_real_models_and_decide_against_the_threshold(pool_table):
    """Pool drawings scored with every class counted (they show feet, bellies and faces, rarely
    exposed parts), so the threshold falls among real, non-zero scores."""
    images = pool_table.column("image").to_pylist()
    scores = library_scores(images, list(LABELS))
    positive = np.sort(scores[scores > 0])
    assert len(positive) >= 4, "the pool should give the detector something to score"
    threshold = float(positive[len(positive) // 2])
    verdict = stage_for(classes=list(LABELS), threshold=threshold).process(batch(images))
    got = verdict.table.column("nsfw_score").to_numpy()
    np.testing.assert_allclose(got, scores, atol=1e-5)
    rejected = np.array([r == "nsfw" for r in verdict.reasons])
    assert rejected.any() and not rejected.all()
    assert np.array_equal(rejected, got > threshold)
    for i in np.flatnonzero(rejected):
        label, value = verdict.values[i].split(":")
        assert label in LABELS and float(value) == pytest.approx(got[i], abs=1e-3)
        assert label in verdict.table.column("nsfw_classes")[i].as_py()


def test_default_classes_keep_the_pool(pool_table):
    """With NudeNet's exposed classes only, clip-art drawings score low and are kept; the listed
    classes are unsafe ones seen at min_confidence or more."""
    images = pool_table.column("image").to_pylist()[:60]
    verdict = stage_for().process(batch(images))
    scores = verdict.table.column("nsfw_score").to_numpy()
    np.testing.assert_allclose(scores, library_scores(images, UNSAFE), atol=1e-5)
    assert all(r is None for r in verdict.reasons)
    assert all(set(c) <= set(UNSAFE) for c in verdict.table.column("nsfw_classes").to_pylist())


def test_undecodable_images_rejected_with_null_score(pool_table):
    good = pool_table.column("image")[0].as_py()
    verdict = stage_for().process(batch([b"<html>404</html>", good, None]))
    assert list(verdict.reasons) == ["undecodable_image", None, "undecodable_image"]
    assert verdict.table.column("nsfw_score").to_pylist()[0] is None
    assert verdict.table.column("nsfw_score").to_pylist()[1] is not None


def test_unknown_class_is_a_config_error():
    with pytest.raises(ValueError, match="unknown NudeNet classes.*NOT_A_CLASS"):
        NsfwConfig(classes=["NOT_A_CLASS"])


def test_every_frame_of_an_animation_is_scored():
    """A class seen only in an animation's second frame decides (a score of the first frame alone
    would keep it): here the face class, the astronaut's face in frame 2 of 3 of a GIF."""
    astronaut = skimage.data.astronaut()
    frames = [Image.fromarray(f) for f in (np.full_like(astronaut, 255), astronaut, np.full_like(astronaut, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=80)
    still = io.BytesIO()
    frames[0].save(still, format="GIF")
    verdict = stage_for(classes=["FACE_FEMALE"], threshold=0.5).process(batch([out.getvalue(), still.getvalue()]))
    assert list(verdict.reasons) == ["nsfw", None]
    assert verdict.table.column("nsfw_classes").to_pylist() == [["FACE_FEMALE"], []]
