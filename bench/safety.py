"""Benchmark: images/s per core of the nsfw and face_blur stages on pool images, against the bare
model call in a loop and Data-Juicer's ops.

Everything runs in this process pinned to one core, one ONNX Runtime and OpenCV thread, on the
same images (the first --images of the pool), best of --repeat:
  nsfw       the stage's process() in batches of 256 rows (decode, NudeNet at 320 px batched,
             scores and classes)
  face_blur  the stage's process() (decode, NudeNet at 640 px batched, boxes, blur and re-encode
             where there are faces)
  bare       NudeNet's own `NudeDetector.detect(image bytes)`, one image a call, at 320 px (the
             nsfw peer) and at 640 px (the face_blur peer), its session given one thread like the stage's
  Data-Juicer image_face_blur_mapper (OpenCV's Haar cascade, Pillow's blur), its op called on each
             sample in DJ's own venv (bench/.venv-dj, `make bench-dj`), pinned the same way;
             image_nsfw_filter does not run here: it loads Falconsai/nsfw_image_detection from the
             Hugging Face hub
and prints the ratios stage/bare (target >= 0.9) and face_blur/Data-Juicer.

Usage: .venv/bin/python bench/safety.py [--pool data/openclipart/pool] [--images 400] [--repeat 3]
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # read by the stages' ONNX Runtime sessions (a worker's share of cores)

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from common import ROOT

DJ_PYTHON = ROOT / "bench" / ".venv-dj" / "bin" / "python"
BATCH = 256

DJ_SCRIPT = """
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[3])})
import cv2
cv2.setNumThreads(1)
from data_juicer.ops.mapper.image_face_blur_mapper import ImageFaceBlurMapper
paths = json.load(open(sys.argv[1]))
best = None
for _ in range(int(sys.argv[4])):
    op = ImageFaceBlurMapper(save_dir=sys.argv[2])
    start = time.perf_counter()
    faces = 0
    for path in paths:
        out = op.process_single({"images": [path], "text": ""})
        faces += out["images"][0] != path
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
print("DJ_RESULT " + json.dumps({"seconds": best, "blurred": faces}))
"""


def timed(fns: list, repeat: int) -> tuple[list[float], list]:
    """Best wall time of `repeat` calls of each fn (one pinned core: wall time is that core's time),
    the fns taking turns so that a busy spell on the shared machine weighs on all alike; and their last results."""
    best, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            results[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best, results


def run_stage(stage, table: pa.Table) -> list:
    return [stage.process(table.slice(start, BATCH)) for start in range(0, table.num_rows, BATCH)]


def bare_detector(side: int):
    """NudeNet's own detector with a one-thread session (its constructor takes no session options)."""
    import onnxruntime as ort
    from nudenet import NudeDetector

    from curate.detector import model_path

    detector = NudeDetector(inference_resolution=side)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    detector.onnx_session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
    return detector


def bench_data_juicer(images: list[bytes], scratch: Path, core: int, repeat: int) -> tuple[float, int] | str:
    if not DJ_PYTHON.exists():
        return f"not run: no Data-Juicer venv at {DJ_PYTHON} (`make bench-dj`)"
    folder = scratch / "dj-images"
    folder.mkdir()
    paths = []
    for i, data in enumerate(images):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data)
        paths.append(str(path))
    (scratch / "dj-paths.json").write_text(json.dumps(paths))
    (scratch / "dj_face_blur.py").write_text(DJ_SCRIPT)
    (scratch / "dj-out").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([str(DJ_PYTHON), str(scratch / "dj_face_blur.py"), str(scratch / "dj-paths.json"),
                             str(scratch / "dj-out"), str(core), str(repeat)], capture_output=True, text=True, env=env)
    line = next((text for text in (result.stdout + result.stderr).splitlines() if "DJ_RESULT " in text), None)
    if result.returncode != 0 or line is None:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        return f"failed (exit code {result.returncode})"
    found = json.loads(line.split("DJ_RESULT ", 1)[1])
    return found["seconds"], found["blurred"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=ROOT / "data" / "openclipart" / "pool")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)),
                        help="the core everything is pinned to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    import cv2

    cv2.setNumThreads(1)
    from curate.stages.face_blur import FaceBlur, FaceBlurConfig
    from curate.stages.nsfw import Nsfw, NsfwConfig

    table = ds.dataset(args.pool, format="parquet").head(args.images, columns=["uid", "image"])
    images = table.column("image").to_pylist()
    n = len(images)
    nsfw, face_blur = Nsfw(NsfwConfig()), FaceBlur(FaceBlurConfig())
    nsfw.setup()
    face_blur.setup()
    bare_320, bare_640 = bare_detector(320), bare_detector(640)
    (nsfw_s, bare_320_s), _ = timed([lambda: run_stage(nsfw, table), lambda: [bare_320.detect(d) for d in images]],
                                    args.repeat)
    (blur_s, bare_640_s), (verdicts, _) = timed([lambda: run_stage(face_blur, table),
                                                 lambda: [bare_640.detect(d) for d in images]], args.repeat)
    with_faces = sum(len(b) > 0 for v in verdicts for b in v.table.column("face_bboxes").to_pylist())
    with tempfile.TemporaryDirectory() as tmp:
        dj = bench_data_juicer(images, Path(tmp), args.core, args.repeat)

    def rate(seconds: float) -> float:
        return n / seconds

    print(f"\n{n} pool images, one core (core {args.core}), best of {args.repeat}; images/s per core")
    print(f"nsfw       stage {rate(nsfw_s):7.1f}   bare NudeDetector.detect at 320 {rate(bare_320_s):7.1f}"
          f"   stage/bare {bare_320_s / nsfw_s:4.2f}x (target >= 0.9)")
    print(f"face_blur  stage {rate(blur_s):7.1f}   bare NudeDetector.detect at 640 {rate(bare_640_s):7.1f}"
          f"   stage/bare {bare_640_s / blur_s:4.2f}x (target >= 0.9); {with_faces} images with faces blurred")
    if isinstance(dj, str):
        print(f"Data-Juicer image_face_blur_mapper {dj}")
    else:
        print(f"Data-Juicer image_face_blur_mapper (Haar cascade) {rate(dj[0]):7.1f} ({dj[1]} images blurred)"
              f"   face_blur/Data-Juicer {dj[0] / blur_s:4.2f}x")
    print("Data-Juicer image_nsfw_filter: not run (it loads Falconsai/nsfw_image_detection from the Hugging Face hub)")


if __name__ == "__main__":
    main()
