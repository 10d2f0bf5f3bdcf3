"""The CLIP embedder: images and captions embedded in batches by a scorer checkpoint, and the
fingerprint that identifies the scorer (what an embedding store is keyed to)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.images import open_rgb
from curate.stage import map_rows


def file_fingerprint(path: str | Path, model: str | None) -> str:
    """What identifies a scorer: the sha256 of its weights file and the architecture named with it."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return f"{sha.hexdigest()}:{model or ''}"


@dataclass
class Embedded:
    """Embeddings of a batch's rows: `rows` are the rows that have them (the others are in
    `failures`, with why), and `image`, `text` (float32, unit-norm) and `score` follow `rows`."""

    rows: np.ndarray
    image: np.ndarray
    text: np.ndarray
    score: np.ndarray
    failures: dict[int, str]

    @classmethod
    def none(cls, rows: np.ndarray, failures: dict[int, str]) -> Embedded:
        """No embeddings: nothing was asked, or every image failed."""
        empty = np.zeros((0, 0), np.float32)
        return cls(rows, empty, empty, np.zeros(0, np.float32), failures)



class ClipEmbedder:
    """A CLIP scorer that embeds images and captions in batches; the model loads on first use,
    on the GPU when torch sees one. `images_embedded` counts the images it has encoded."""

    _shared: dict[tuple, ClipEmbedder] = {}

    def __init__(self, checkpoint: str, model: str | None = None, batch_size: int = 64):
        self.checkpoint, self.model_name, self.batch_size = checkpoint, model, batch_size
        self.fingerprint = file_fingerprint(checkpoint, model)
        self.images_embedded = 0
        self._clip = None

    @classmethod
    def shared(cls, checkpoint: str, model: str | None = None, batch_size: int = 64) -> ClipEmbedder:
        """One embedder per scorer in a worker process, whichever stages use it."""
        key = (str(checkpoint), model, batch_size)
        if key not in cls._shared:
            cls._shared[key] = cls(str(checkpoint), model, batch_size)
        return cls._shared[key]

    def _load(self):
        import torch

        from curate.models.clip import load_checkpoint

        if self._clip is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self._clip, _ = load_checkpoint(self.checkpoint, self.model_name, device=self.device)
            self._clip.model.eval()
        return self._clip

    def _preprocess(self, data: bytes):
        return self._clip.preprocess(open_rgb(data))

    def embed(self, images: list[bytes | None], texts: list[str | None]) -> Embedded:
        """Unit-norm image and text embeddings and their cosine; undecodable images are failures."""
        import torch

        if not images:  # every row of the batch is stored already: no model to load
            return Embedded.none(np.zeros(0, np.int64), {})
        clip = self._load()
        tensors, failures = map_rows(images, self._preprocess)
        rows = np.array([i for i in range(len(images)) if i not in failures], np.int64)
        image_out, text_out = [], []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                image_batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                text_batch = clip.tokenizer([texts[i] or "" for i in chunk]).to(self.device)
                image_out.append(self._encode(clip.model.encode_image, image_batch))
                text_out.append(self._encode(clip.model.encode_text, text_batch))
                self.images_embedded += len(chunk)
        if not image_out:
            return Embedded.none(rows, failures)
        image, text = np.concatenate(image_out), np.concatenate(text_out)
        return Embedded(rows, image, text, (image * text).sum(1, dtype=np.float32), failures)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings (float32, n x dim) of captions alone (e.g. synthetic ones)."""
        import torch

        clip = self._load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = clip.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                out.append(self._encode(clip.model.encode_text, tokens))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    @staticmethod
    def _encode(encoder, batch) -> np.ndarray:
        import torch

        return torch.nn.functional.normalize(encoder(batch).float(), dim=-1).cpu().numpy()
