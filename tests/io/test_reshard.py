"""curate reshard (DataComp's resharder): the listed uids out of WebDataset shards, new shards of N
samples with sizes.json, a validated uid file, and face boxes blurred (pixels inside changed,
outside unchanged)."""

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from curate.cli import main
from curate.io.reshard import load_uids, reshard
from curate.io.tar_shard import TarShard
from curate.sample.datacomp import build_datacomp
from curate.schema import uid_array
from tests.io.open_clip_runner import train_open_clip

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def shards(pool_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """The pool as img2dataset-style shards (160 samples in 4 tars) and its uids in shard order."""
    out = tmp_path_factory.mktemp("datacomp")
    build_datacomp([str(pool_root / "pool")], out, rows_per_file=40, image_size=128)
    uids = [json.loads(s["json"])["uid"] for s in wds.WebDataset(sorted(map(str, (out / "shards").glob("*.tar"))),
                                                                   shardshuffle=False)]
    return out / "shards", uids


def read_back(folder: Path) -> list[dict]:
    """Every sample of the output shards, through webdataset, in shard order."""
    names = sorted(p.name for p in folder.glob("*.tar"))
    return list(wds.WebDataset([str(folder / n) for n in names], shardshuffle=False))


def test_reshard_writes_exactly_the_listed_uids(shards, tmp_path):
    folder, uids = shards
    chosen = uids[3:120:3]  # 39 samples across the four input shards
    np.save(tmp_path / "uids.npy", uid_array(chosen + chosen[:2]))  # two listed twice: written twice, as DataComp does
    summary = reshard(tmp_path / "uids.npy", [str(folder)], tmp_path / "out", samples_per_shard=10)
    samples = read_back(tmp_path / "out")
    got = [json.loads(s["json"])["uid"] for s in samples]
    assert sorted(got) == sorted(chosen + chosen[:2])
    assert [s["__key__"] for s in samples if json.loads(s["json"])["uid"] == chosen[0]] == \
        [f"{chosen[0]}-0", f"{chosen[0]}-1"]
    assert all({"jpg", "txt", "json"} <= set(s) for s in samples)
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert list(sizes) == [f"{i:08d}.tar" for i in range(5)] and list(sizes.values()) == [10, 10, 10, 10, 1]
    assert summary == {"listed": 41, "read": len(uids), "written": 41, "not_found": 0, "shards": 5, "blurred": 0,
                       "skipped": {}}
    assert np.array_equal(np.load(tmp_path / "out" / "sample_ids.npy"), np.load(tmp_path / "uids.npy"))
    # a listed uid the shards lack is counted, not invented
    np.save(tmp_path / "more.npy", uid_array(chosen[:3] + ["f" * 32]))
    assert reshard(tmp_path / "more.npy", [str(folder)], tmp_path / "more")["not_found"] == 1


def test_the_uid_file_must_be_sorted_u8_u8(shards, tmp_path):
    folder, uids = shards
    pairs = uid_array(uids[:5])
    np.save(tmp_path / "unsorted.npy", pairs[::-1])
    with pytest.raises(ValueError, match=r"unsorted\.npy: not sorted \(row 1"):
        load_uids(tmp_path / "unsorted.npy")
    np.save(tmp_path / "strings.npy", np.array(uids[:5]))
    with pytest.raises(ValueError, match=r"dtype u8,u8.*got 1-d <U32"):
        load_uids(tmp_path / "strings.npy")
    (tmp_path / "text.npy").write_text("\n".join(uids[:5]))
    result = CliRunner().invoke(main, ["reshard", "--uids", str(tmp_path / "text.npy"), "--input", str(folder),
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not a NumPy .npy uid file" in result.output and "Traceback" not in result.output
    np.save(tmp_path / "ok.npy", pairs)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    result = CliRunner().invoke(main, ["reshard", "--uids", str(tmp_path / "ok.npy"), "--input", str(folder),
                                       "--output", str(tmp_path / "busy")])
    assert result.exit_code == 2 and "not empty" in result.output


def _face_tar(path: Path, images: list[np.ndarray], boxes: list[list]) -> list[str]:
    """A tar of PNG samples with face_bboxes in their json; returns the uids."""
    names, payloads, uids = [], [], []
    for i, (pixels, box) in enumerate(zip(images, boxes)):
        uid = f"{i + 1:032x}"
        ok, png = cv2.imencode(".png", pixels)
        assert ok
        names += [f"{i:09d}.png", f"{i:09d}.txt", f"{i:09d}.json"]
        payloads += [png.tobytes(), b"a face", json.dumps({"uid": uid, "face_bboxes": box}).encode()]
        uids.append(uid)
    shard = TarShard(path)
    shard.add(names, payloads)
    shard.close()
    return uids


def test_faces_are_blurred_inside_their_boxes_only(pool_table, tmp_path):
    """Boxes are normalized [x0, y0, x1, y1]; img2dataset's blurrer widens each by 10% of its longer
    side and feathers its edge, so pixels well outside are untouched (lossless WebP keeps them)."""
    image = np.asarray(Image.open(io.BytesIO(pool_table.column("image")[5].as_py())).convert("RGB"))[:, :, ::-1]
    image = np.ascontiguousarray(cv2.resize(image, (200, 160)))
    noisy = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)  # detail a blur must change
    box = [0.25, 0.25, 0.5, 0.5]  # x 50-100, y 40-80
    (tmp_path / "in").mkdir()
    uids = _face_tar(tmp_path / "in" / "00000000.tar", [noisy, noisy, image], [[box], [], [box]])
    np.save(tmp_path / "uids.npy", uid_array(uids))
    result = CliRunner().invoke(main, ["reshard", "--uids", str(tmp_path / "uids.npy"), "--input",
                                       str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--blur-faces"])
    assert result.exit_code == 0, result.output
    assert "3 of 3 listed samples written" in result.output and "2 blurred" in result.output
    samples = {json.loads(s["json"])["uid"]: s for s in read_back(tmp_path / "out")}
    blurred = cv2.imdecode(np.frombuffer(samples[uids[0]]["webp"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert "png" not in samples[uids[0]] and blurred.shape == noisy.shape
    inside = (slice(45, 75), slice(55, 95))
    assert np.abs(blurred[inside].astype(int) - noisy[inside]).mean() > 30  # noise averaged away
    outside = np.ones(noisy.shape[:2], bool)
    outside[20:100, 30:120] = False  # the box widened by 10% of its side and the feather's reach
    assert np.array_equal(blurred[outside], noisy[outside])
    assert samples[uids[1]]["png"] == cv2.imencode(".png", noisy)[1].tobytes()  # no boxes: bytes as they were
    drawing = cv2.imdecode(np.frombuffer(samples[uids[2]]["webp"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(drawing[outside], image[outside])
    # DataComp's lossy quality 100 changes pixels outside the box too
    CliRunner().invoke(main, ["reshard", "--uids", str(tmp_path / "uids.npy"), "--input", str(tmp_path / "in"),
                              "--output", str(tmp_path / "lossy"), "--blur-faces", "--webp-quality", "100"])
    lossy = {json.loads(s["json"])["uid"]: s for s in read_back(tmp_path / "lossy")}
    pixels = cv2.imdecode(np.frombuffer(lossy[uids[0]]["webp"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert not np.array_equal(pixels[outside], noisy[outside])


@pytest.mark.slow
def test_open_clip_train_streams_resharded_shards(shards, tmp_path):
    folder, uids = shards
    np.save(tmp_path / "uids.npy", uid_array(uids[:64]))
    reshard(tmp_path / "uids.npy", [str(folder)], tmp_path / "out", samples_per_shard=32)
    returncode, log, steps = train_open_clip(str(tmp_path / "out" / "{00000000..00000001}.tar"), tmp_path)
    assert returncode == 0, log[-3000:]
    assert steps and {total for _, total in steps} == {64} and steps[-1][0] == 64, steps  # sizes.json's count
