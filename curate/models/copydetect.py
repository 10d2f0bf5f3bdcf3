"""The copy descriptor (SSCD-style): a small CNN whose unit vectors put an image and its altered
copies close together and distinct images apart; trained by `curate train copydetect`
(train/copydetect), used by near_dedup and decontaminate (`method: descriptor`).

A checkpoint is two files: `NAME.pt`, the network's state dict alone (loaded with
`torch.load(weights_only=True)`: no pickled code), and `NAME.json` beside it: the architecture,
the input size and normalisation, and the cosine threshold calibrated when it was trained (the
stages' default). An image is squashed to `size` x `size` RGB (trimmed of its uniform frame first where the
architecture says so); its descriptor is the normalised
sum of the network's outputs for the image and its mirror image, so a mirrored copy has exactly
the descriptor of its original.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from curate.copies import trim
from curate.images import to_rgb

FORMAT = "curate-copydetect"
VERSION = 1


class DescriptorArchitecture(BaseModel):
    """The network's shape and input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(96, ge=16, description="input side in pixels (images are squashed to size x size)")
    stem: int = Field(4, ge=1, description="the first convolution's kernel and stride (a patchify stem)")
    widths: tuple[int, ...] = Field((32, 64, 128), min_length=1, description="channels of each 3x3 stage; every "
                                                                             "stage after the first halves the grid")
    grid: int = Field(1, ge=1, description="cells a side the last stage is pooled into (generalised mean per cell, "
                                           "then concatenated): 1 pools the whole image, more keeps its layout")
    dim: int = Field(128, ge=8, description="descriptor size")
    trim: bool = Field(False, description="cut the image's uniform frame (curate.copies.trim) before squashing it")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


class CopyNet(torch.nn.Module):
    """Patchify stem, 3x3 conv stages (batch norm, ReLU), generalised-mean pooling (over the image or
    per cell of a grid) and a linear projection to a unit vector."""

    def __init__(self, arch: DescriptorArchitecture):
        super().__init__()
        layers, channels = [torch.nn.Conv2d(3, arch.widths[0], arch.stem, arch.stem, bias=False),
                            torch.nn.BatchNorm2d(arch.widths[0]), torch.nn.ReLU(inplace=True)], arch.widths[0]
        for i, width in enumerate(arch.widths):
            layers += [torch.nn.Conv2d(channels, width, 3, 1 if i == 0 else 2, 1, bias=False),
                       torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True)]
            channels = width
        self.features = torch.nn.Sequential(*layers)
        self.gem = torch.nn.Parameter(torch.tensor(3.0))
        self.grid = arch.grid
        self.project = torch.nn.Linear(channels * arch.grid ** 2, arch.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors (n x dim) of a batch of normalised images (n x 3 x size x size)."""
        powered = self.features(x).clamp(min=1e-6).pow(self.gem)
        features = F.adaptive_avg_pool2d(powered, self.grid).pow(1 / self.gem).flatten(1)
        return F.normalize(self.project(features), dim=-1)


def pixels(data: bytes, arch: DescriptorArchitecture) -> np.ndarray:
    """An encoded image as the network's input (3 x size x size float32, normalised): upright, 8-bit,
    trimmed of its uniform frame where the architecture says so, squashed to size x size."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (2 * arch.size, 2 * arch.size))  # JPEG: decode at a reduced scale, no larger than needed
        rgb = to_rgb(im)
    return image_pixels(trim(rgb) if arch.trim else rgb, arch)


def image_pixels(im: Image.Image, arch: DescriptorArchitecture) -> np.ndarray:
    """A PIL RGB image (trimmed or not, as `pixels` does) as the network's input."""
    array = np.asarray(im.resize((arch.size, arch.size), Image.BILINEAR), np.float32) / 255
    return ((array - np.array(arch.mean, np.float32)) / np.array(arch.std, np.float32)).transpose(2, 0, 1)


def describe(net: CopyNet, batch: torch.Tensor) -> torch.Tensor:
    """Flip-invariant descriptors: the normalised sum of the outputs for the images and their mirror images."""
    return F.normalize(net(batch) + net(torch.flip(batch, dims=[3])), dim=-1)


def config_path(checkpoint: str | Path) -> Path:
    """The JSON that goes with a checkpoint's weights file."""
    return Path(checkpoint).with_suffix(".json")


def save(path: str | Path, net: CopyNet, arch: DescriptorArchitecture, extra: dict) -> None:
    """Write the weights (state dict only) to `path` and the architecture and `extra` (threshold,
    training and calibration figures) to its JSON, the weights first."""
    from curate.io.writers import atomic, write_json_atomic

    path = Path(path)
    with atomic(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    write_json_atomic({"format": FORMAT, "version": VERSION, "architecture": arch.model_dump(mode="json"), **extra},
                      config_path(path))


def read_config(path: str | Path) -> dict:
    """A checkpoint's JSON, checked: the format and version this code reads."""
    meta_path = config_path(path)
    if not meta_path.exists():
        raise FileNotFoundError(f"copy descriptor {path}: no {meta_path.name} beside it (a `curate train copydetect` "
                                "checkpoint is NAME.pt with NAME.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: not a copy descriptor of format {FORMAT} version {VERSION} "
                         f"(found {meta.get('format')!r} version {meta.get('version')!r})")
    return meta


def load(path: str | Path, device: str = "cpu") -> tuple[CopyNet, dict]:
    """The network (eval mode, on `device`) and the JSON of a checkpoint, weights loaded weights-only."""
    meta = read_config(path)
    net = CopyNet(DescriptorArchitecture(**meta["architecture"]))
    net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return net.to(device).eval(), meta


class CopyDescriptor:
    """A checkpoint's embedder: unit descriptors of encoded images in batches; loads on first use
    (the GPU when torch sees one), once per checkpoint in a worker process. `images_described`
    counts the images it has run through the network."""

    _shared: dict[str, CopyDescriptor] = {}

    def __init__(self, checkpoint: str, batch_size: int = 256):
        self.checkpoint, self.batch_size = str(checkpoint), batch_size
        self.meta = read_config(checkpoint)
        self.arch = DescriptorArchitecture(**self.meta["architecture"])
        self._net: CopyNet | None = None
        self.images_described = 0

    @classmethod
    def shared(cls, checkpoint: str) -> CopyDescriptor:
        """One embedder per checkpoint in a process, whichever stages use it."""
        if str(checkpoint) not in cls._shared:
            cls._shared[str(checkpoint)] = cls(checkpoint)
        return cls._shared[str(checkpoint)]

    @property
    def threshold(self) -> float | None:
        """The cosine threshold calibrated at training (None when it was not calibrated)."""
        return self.meta.get("threshold")

    def embed(self, images: list[bytes | None]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows embedded, their unit descriptors float32 n x dim, failures by row: undecodable images)."""
        from curate.stage import map_rows

        arrays, failures = map_rows(images, lambda data: pixels(data, self.arch))
        rows = np.array([i for i in range(len(images)) if i not in failures], np.int64)
        if not len(rows):
            return rows, np.zeros((0, self.arch.dim), np.float32), failures
        if self._net is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self._net, _ = load(self.checkpoint, self.device)
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = torch.from_numpy(np.stack([arrays[i] for i in rows[start : start + self.batch_size]]))
                out.append(describe(self._net, batch.to(self.device)).float().cpu().numpy())
                self.images_described += len(batch)
        return rows, np.concatenate(out), failures
