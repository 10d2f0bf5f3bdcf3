"""Recaption stage (CapFilt's captioner): K synthetic captions per image from the project's
LLaVA captioner, sampled per image from a seed derived from its uid, so the captions do not
depend on the engine, the worker count or which images share a batch."""

from __future__ import annotations

import hashlib
from typing import Literal

import pyarrow as pa
from pydantic import Field

from curate.io.embedding_store import digest
from curate.schema import set_column
from curate.stage import MapStage, StageConfig, Verdict, map_rows


class RecaptionConfig(StageConfig):
    """Parameters of the recaption stage."""

    checkpoint: str = Field(..., description="a LLaVA checkpoint from `curate train llava` (the captioner)")
    num_captions: int = Field(5, gt=0, description="captions per image (BLIP-2's CapFilt wrote 10)")
    strategy: Literal["nucleus", "greedy", "beam"] = Field("nucleus", description="decoding (BLIP: nucleus)")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling mass (BLIP: 0.9)")
    temperature: float = Field(1.0, gt=0)
    num_beams: int = Field(3, gt=0, description="beam width (strategy: beam)")
    max_new_tokens: int = Field(30, gt=0)
    prompt: str | None = Field(None, description="instruction to the captioner [default: its caption prompt]")
    seed: int = Field(0, description="mixed with each uid into that image's sampling seed")
    batch_size: int = Field(16, gt=0, description="images per generate call")
    cache: str | None = Field(
        None, description="folder keeping finished captions, so an interrupted run does not redo them")

    def written_paths(self) -> list[str]:
        return [self.cache] if self.cache else []


def sample_seed(uid: str, seed: int) -> int:
    """An image's sampling seed: a hash of its uid and the stage seed (63 bits)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest(), "little") >> 1


class Recaption(MapStage):
    """Write K synthetic captions per image with the LLaVA captioner (nucleus, greedy or beam), seeded by uid."""

    name = "recaption"
    Config = RecaptionConfig
    reads = ("image",)
    writes = {"synthetic_captions": pa.list_(pa.string()), "caption_generator": pa.string()}
    reasons = ("uncaptionable_image",)
    uses_model = True

    def setup(self) -> None:
        from curate.io.cache import ResultCache
        from curate.models.llava.generate import Captioner

        self._captioner = Captioner.load(self.config.checkpoint)
        settings = self.config.model_dump(exclude={"checkpoint", "batch_size", "cache"})
        self._generator = f"llava {self.config.checkpoint} (sha256 {self._captioner.fingerprint[:16]})"
        self._cache = ResultCache(self.config.cache, f"{self._generator}:{sorted(settings.items())}") \
            if self.config.cache else None

    def _captions(self, uids: list[str], images: list) -> list[list[str]]:
        config = self.config
        return self._captioner.generate(
            images, config.prompt, num_return=config.num_captions, strategy=config.strategy, top_p=config.top_p,
            temperature=config.temperature, num_beams=config.num_beams, max_new_tokens=config.max_new_tokens,
            seeds=[sample_seed(uid, config.seed) for uid in uids], batch_size=config.batch_size)

    def process(self, table: pa.Table) -> Verdict:
        from curate.images import open_rgb

        uids, images = table.column("uid").to_pylist(), table.column("image")
        digests = dict(zip(uids, (digest(images[i].as_py()) for i in range(table.num_rows))))
        cached = self._cache.get(uids) if self._cache else {}
        captions = {uid: row["captions"] for uid, row in cached.items()
                    if row["image_digest"] == digests[uid]}  # the same image as when captioned
        todo = [i for i, uid in enumerate(uids) if uid not in captions]
        failures: dict[int, str] = {}
        for start in range(0, len(todo), self.config.batch_size):  # each batch committed: a resume loses at most one
            chunk = todo[start : start + self.config.batch_size]
            opened, failed = map_rows([images[i].as_py() for i in chunk], open_rgb)
            failures.update((chunk[k], message) for k, message in failed.items())
            rows = [i for k, i in enumerate(chunk) if k not in failed]
            if not rows:
                continue
            new = self._captions([uids[i] for i in rows], [opened[k] for k in range(len(chunk)) if k not in failed])
            if self._cache:
                self._cache.put(pa.table({"uid": [uids[i] for i in rows],
                                          "image_digest": [digests[uids[i]] for i in rows], "captions": new}))
            captions.update((uids[i], c) for i, c in zip(rows, new))
        out = set_column(table, "synthetic_captions", [captions.get(uid) for uid in uids], pa.list_(pa.string()))
        out = set_column(out, "caption_generator", [self._generator] * len(uids), pa.string())
        verdict = Verdict(out)
        for i, message in failures.items():
            verdict.reject(i, "uncaptionable_image", message)
        return verdict
