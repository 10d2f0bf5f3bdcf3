"""Train the copy descriptor (curate/models/copydetect.py) contrastively on augmented copies of a
pool's own images, SSCD-style: two altered views of each image are positives, every other image of
the batch a negative (InfoNCE), and half of each batch are hard negatives, the training images
whose thumbnails are nearest an anchor's. The held-out families (curate/copies.py `heldout`) are
never read for training: the threshold is calibrated on planted copies of them at the end.

Runs in one process (CPU or GPU); a few minutes on a CPU at the default size.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, ConfigDict, Field

from curate import copies
from curate.models.copydetect import DescriptorArchitecture

LOG_EVERY = 20


class CopyDetectConfig(BaseModel):
    """What `curate train copydetect` trains, on what and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[str] = Field(..., min_length=1, description="inputs whose images are trained on (any curate input)")
    output: str = Field(..., description="run folder: copydetect.pt, copydetect.json, log.jsonl")
    steps: int = Field(600, ge=1, description="optimiser steps")
    batch_size: int = Field(128, ge=4, description="images a step (two views each)")
    lr: float = Field(3e-3, gt=0, description="peak AdamW learning rate (warm-up, then cosine decay)")
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature")
    hard_negatives: int = Field(8, ge=0, description="nearest images an anchor's batch partner is drawn from "
                                                     "(0: batches drawn uniformly)")
    mine_every: int = Field(100, ge=1, description="steps between re-mining the nearest images with the network "
                                                   "(before the first: by thumbnail)")
    koleo: float = Field(1.0, ge=0, description="weight of the KoLeo spreading term (SSCD's entropy regulariser)")
    heldout_percent: int = Field(copies.HELDOUT_PERCENT, ge=0, le=99,
                                 description="families held out of training (calibration uses them)")
    source_side: int = Field(144, ge=32, description="training images are shrunk to this longer side before augmenting")
    calibrate_originals: int = Field(200, ge=0, description="held-out originals copied to calibrate the threshold "
                                                            "(0: no calibration)")
    target_false_merge: float = Field(0.005, gt=0, lt=1, description="false-merge rate the threshold is chosen for")
    threads: int = Field(1, ge=1, description="torch CPU threads")
    seed: int = 0
    architecture: DescriptorArchitecture = DescriptorArchitecture()


def _view(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A training view: the benchmark's edits at wider ranges, each with some probability."""
    if rng.random() < 0.8:
        im = copies.crop(im, rng, 0.0, 0.25)
    if rng.random() < 0.4:
        im = im.rotate(rng.uniform(-12, 12), Image.BICUBIC, expand=False, fillcolor="white")
    if rng.random() < 0.8:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enhance(im).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.1:
        im = ImageOps.grayscale(im).convert("RGB")
    if rng.random() < 0.3:
        im = copies.border(im, rng)
    if rng.random() < 0.3:
        im = copies.text(im, rng)
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    if rng.random() < 0.3:
        scale = rng.uniform(0.3, 1.0)
        im = im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.BILINEAR)
    if rng.random() < 0.5:
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=int(rng.integers(20, 96)))
        im = Image.open(out).convert("RGB")
    return im


def _shrunk(data: bytes, side: int, trim: bool) -> Image.Image:
    """A training source: the image (trimmed of its frame where the architecture trims), its longer
    side at most `side`."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (side, side))
        rgb = im.convert("RGB")
    rgb = copies.trim(rgb) if trim else rgb
    rgb.thumbnail((side, side), Image.LANCZOS)
    return rgb


def _trimmed(im: Image.Image, arch: DescriptorArchitecture) -> Image.Image:
    """A view as the descriptor sees it: trimmed of its frame where the architecture trims."""
    return copies.trim(im) if arch.trim else im


def training_images(config: CopyDetectConfig) -> tuple[list[bytes], list[bytes]]:
    """The inputs' images split by family: (distinct training images, held-out images)."""
    found = copies.read_images(config.data)
    families = [copies.family(url, uid) for uid, url in zip(found["uid"], found["url"])]
    held = copies.heldout(families, config.heldout_percent)
    train = [d for d, h in zip(found["image"], held) if not h]
    if len(train) < config.batch_size:
        raise ValueError(f"{config.data}: {len(train)} training images (after holding out {config.heldout_percent}% "
                         f"of families), fewer than a batch of {config.batch_size}")
    keep = copies.distinct(copies.thumbnails(train))  # a drawing twice in a batch would be its own negative
    return [train[i] for i in keep], [d for d, h in zip(found["image"], held) if h]


def _partners(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each image's k nearest other images (n x k indices) by thumbnail or descriptor (L2)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    _, labels = index.search(vectors, k + 1)
    return labels[:, 1:]


def _describe_sources(net, sources: list[Image.Image], arch: DescriptorArchitecture, device) -> np.ndarray:
    """The network's descriptors of the unaltered training images (for mining)."""
    import torch

    from curate.models.copydetect import image_pixels

    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(sources), 256):
            batch = np.stack([image_pixels(im, arch) for im in sources[start : start + 256]])
            out.append(net(torch.from_numpy(batch).to(device)).cpu().numpy())
    net.train()
    return np.concatenate(out)


def koleo(z):
    """KoLeo (Sablayrolles et al.; SSCD's entropy term): minus the mean log distance of each vector
    to its nearest other one, which spreads a batch's descriptors over the sphere."""
    import torch

    with torch.no_grad():
        similarity = z @ z.T
        similarity.fill_diagonal_(-2)
        nearest = similarity.argmax(dim=1)
    return -torch.log((z - z[nearest]).norm(dim=1) + 1e-8).mean()


def _batch(n: int, size: int, partners: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct image indices: half anchors, half a near partner of one (or uniform)."""
    if partners is None or not partners.shape[1]:
        return rng.choice(n, size, replace=False)
    anchors = rng.choice(n, size // 2, replace=False)
    chosen = np.unique(np.r_[anchors, partners[anchors, rng.integers(0, partners.shape[1], len(anchors))]])
    rest = np.setdiff1d(np.arange(n), chosen)
    return np.r_[chosen, rng.choice(rest, size - len(chosen), replace=False)]


def train_copydetect(config: CopyDetectConfig, progress: bool = True) -> dict:
    """Train, save OUTPUT/copydetect.pt and .json (with the calibrated threshold) and return the JSON."""
    import torch
    import torch.nn.functional as F

    from curate.models.copydetect import CopyNet, image_pixels, save

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train, held = training_images(config)
    sources = [_shrunk(d, config.source_side, config.architecture.trim) for d in train]
    partners = _partners(copies.thumbnails(train), config.hard_negatives) if config.hard_negatives else None
    arch = config.architecture
    net = CopyNet(arch).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / config.steps))))
    log = (out / "log.jsonl").open("w")
    size = min(config.batch_size, len(sources))
    labels = torch.arange(2 * size, device=device).roll(size)  # view i's positive is view i +- size
    for step in range(config.steps):
        chosen = _batch(len(sources), size, partners, rng)
        if partners is not None and step and step % config.mine_every == 0:
            partners = _partners(_describe_sources(net, sources, arch, device), config.hard_negatives)
        views = [image_pixels(_trimmed(_view(sources[i], rng), arch), arch) for _ in range(2) for i in chosen]
        z = net(torch.from_numpy(np.stack(views)).to(device))
        logits = (z @ z.T) / config.temperature
        logits.fill_diagonal_(-math.inf)
        loss = F.cross_entropy(logits, labels) + config.koleo * koleo(z[:size])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % LOG_EVERY == 0 or step == config.steps - 1:
            record = {"step": step, "loss": round(loss.item(), 4), "lr": schedule.get_last_lr()[0],
                      "seconds": round(time.time() - started, 1)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            if progress:
                print(json.dumps(record), flush=True)
    log.close()
    net.eval()
    path = out / "copydetect.pt"
    extra = {"trained": {"data": config.data, "images": len(sources), "steps": config.steps,
                         "batch_size": size, "seed": config.seed, "heldout_percent": config.heldout_percent,
                         "seconds": round(time.time() - started, 1)}, "threshold": None}
    save(path, net.cpu(), arch, extra)
    if config.calibrate_originals and held:
        from curate.calibrate import calibrate_descriptor

        result = calibrate_descriptor(str(path), held, config.calibrate_originals, config.target_false_merge,
                                      seed=config.seed + 1)
        extra.update(threshold=result["threshold"], calibration=result)
        save(path, net, arch, extra)
    return json.loads(path.with_suffix(".json").read_text())
