"""Inference: captions (or answers) from a LLaVA checkpoint, batched with a KV cache, by greedy
decoding, beam search or nucleus sampling. `Captioner` is the API the recaption stage and the
captioning evaluation call; `curate caption` writes its output for a set of shards."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from curate.models.llava.config import CAPTION_PROMPT
from curate.models.llava.model import Llava, load_checkpoint
from curate.models.llava.tokens import IMAGE

Strategy = Literal["greedy", "beam", "nucleus"]


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


class Captioner:
    """A LLaVA model ready to describe images; `fingerprint` identifies the checkpoint's content."""

    def __init__(self, model: Llava, fingerprint: str, prompt: str = CAPTION_PROMPT):
        self.model = model.eval()
        self.format = model.input_format()
        self.fingerprint = fingerprint
        self.prompt = prompt
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | None = None) -> Captioner:
        """The model in a LLaVA checkpoint, on `device` (cuda when available), with the caption
        prompt it was trained with."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, rest = load_checkpoint(checkpoint, device)
        prompt = (rest.get("config") or {}).get("caption_prompt", CAPTION_PROMPT)
        return cls(model, _file_digest(Path(checkpoint)), prompt)

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompt: str | None = None, *, num_return: int = 1,
                 strategy: Strategy = "greedy", top_p: float = 0.9, temperature: float = 1.0, num_beams: int = 3,
                 max_new_tokens: int = 32, seeds: list[int] | None = None,
                 batch_size: int = 16) -> list[list[str]]:
        """`num_return` texts per image answering `prompt` (None: the stage-1 caption prompt).
        Nucleus sampling draws image i's tokens from a generator seeded by seeds[i] (default 0),
        so its texts do not depend on the other images of its batch; beam search returns the
        `num_return` best of `num_beams` beams; greedy repeats its one answer."""
        if strategy not in ("greedy", "beam", "nucleus"):
            raise ValueError(f"unknown strategy {strategy!r}: greedy, beam or nucleus")
        if strategy == "beam" and num_return > num_beams:
            raise ValueError(f"num_return {num_return} is more than num_beams {num_beams}")
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        if num_return < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError("num_return, max_new_tokens and batch_size must be at least 1")
        seeds = seeds if seeds is not None else [0] * len(images)
        turn = [{"from": "human", "value": f"{IMAGE}\n{prompt or self.prompt}"}]
        texts: list[list[str]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = self.format.collate([self.format.encode(turn, [image], generation=True) for image in chunk])
            batch = {key: value.to(self.device) for key, value in batch.items()}
            if strategy == "beam":
                texts += self._beam(batch, num_beams, num_return, max_new_tokens)
            else:
                rows = 1 if strategy == "greedy" else num_return
                generators = [torch.Generator(self.device).manual_seed(s) for s in seeds[start:start + batch_size]]
                tokens = self._sample(batch, rows, strategy, top_p, temperature, max_new_tokens, generators)
                decoded = self._decode(tokens)
                texts += [decoded[i * rows:(i + 1) * rows] * (num_return // rows) for i in range(len(chunk))]
        return texts

    def _prefill(self, batch: dict[str, torch.Tensor], repeats: int):
        """Run the prompts once (each repeated `repeats` times); returns next-token log-probs, the
        cache, the padding mask and the next positions."""
        model = self.model
        embeds = model.embed(batch["input_ids"], batch["pixel_values"]).repeat_interleave(repeats, 0)
        mask = batch["attention_mask"].repeat_interleave(repeats, 0)
        prefix = batch["prefix_len"].repeat_interleave(repeats, 0)
        positions = batch["position_ids"].repeat_interleave(repeats, 0)
        out = model.lm(inputs_embeds=embeds, attention_mask=model.lm_mask(mask, prefix), position_ids=positions,
                       use_cache=True)
        return out.logits[:, -1].float(), out.cache, mask, positions[:, -1:] + 1

    def _step(self, tokens: torch.Tensor, cache, mask: torch.Tensor, position: torch.Tensor):
        """Feed one token per row; returns next-token logits and the grown mask."""
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = self.model.lm(inputs_embeds=self.model.lm.get_input_embeddings()(tokens[:, None]), attention_mask=mask,
                            position_ids=position, cache=cache, use_cache=True)
        return out.logits[:, -1].float(), mask

    def _sample(self, batch, rows: int, strategy: str, top_p: float, temperature: float, max_new_tokens: int,
                generators: list[torch.Generator]) -> torch.Tensor:
        logits, cache, mask, position = self._prefill(batch, rows)
        eos = self.format.eos_id
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        out = []
        for _ in range(max_new_tokens):
            if strategy == "greedy":
                token = logits.argmax(-1)
            else:
                probs = _nucleus(logits / temperature, top_p)
                token = torch.cat([torch.multinomial(probs[i * rows:(i + 1) * rows], 1, generator=g)[:, 0]
                                   for i, g in enumerate(generators)])
            token = token.masked_fill(done, eos)
            out.append(token)
            done |= token == eos
            if bool(done.all()):
                break
            logits, mask = self._step(token, cache, mask, position)
            position = position + 1
        return torch.stack(out, 1)

    def _beam(self, batch, beams: int, num_return: int, max_new_tokens: int) -> list[list[str]]:
        """Beam search with length-normalised scores; a beam ends at <im_end>."""
        logprobs, cache, mask, position = self._prefill(batch, beams)
        images, eos = batch["input_ids"].shape[0], self.format.eos_id
        vocab = logprobs.shape[-1]
        scores = torch.full((images, beams), float("-inf"), device=logprobs.device)
        scores[:, 0] = 0.0  # the beams start as copies: let only the first one expand
        sequences = torch.empty(images * beams, 0, dtype=torch.long, device=logprobs.device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(images)]
        for step in range(max_new_tokens):
            candidates = (scores[:, :, None] + logprobs.log_softmax(-1).view(images, beams, vocab)).view(images, -1)
            top, index = candidates.topk(2 * beams, dim=-1)
            source, token = index // vocab, index % vocab
            keep_scores, keep_rows, keep_tokens = [], [], []
            for i in range(images):
                kept = []
                for score, beam, tok in zip(top[i].tolist(), source[i].tolist(), token[i].tolist()):
                    if score == float("-inf"):
                        break
                    seq = sequences[i * beams + beam].tolist()
                    if tok == eos:
                        finished[i].append((score / (len(seq) + 1), seq))
                    elif len(kept) < beams:
                        kept.append((score, i * beams + beam, tok))
                    if len(kept) == beams:
                        break
                kept += [(float("-inf"), i * beams, eos)] * (beams - len(kept))
                for score, row, tok in kept:
                    keep_scores.append(score), keep_rows.append(row), keep_tokens.append(tok)
            rows = torch.tensor(keep_rows, device=logprobs.device)
            tokens = torch.tensor(keep_tokens, device=logprobs.device)
            scores = torch.tensor(keep_scores, device=logprobs.device).view(images, beams)
            sequences = torch.cat([sequences[rows], tokens[:, None]], 1)
            if all(len(f) >= beams for f in finished) or step == max_new_tokens - 1:
                break
            cache.reorder_cache(rows)
            mask = mask[rows]
            logprobs, mask = self._step(tokens, cache, mask, position)
            position = position + 1
        for i in range(images):  # beams still running at the end count with what they have
            for b in range(beams):
                if scores[i, b] > float("-inf"):
                    finished[i].append((float(scores[i, b]) / sequences.shape[1], sequences[i * beams + b].tolist()))
        best = [sorted(f, key=lambda item: -item[0])[:num_return] for f in finished]
        return [self._decode([seq for _, seq in b]) for b in best]

    def _decode(self, sequences) -> list[str]:
        eos = self.format.eos_id
        texts = []
        for seq in (sequences.tolist() if torch.is_tensor(sequences) else sequences):
            seq = seq[:seq.index(eos)] if eos in seq else seq
            texts.append(self.model.tokenizer.decode(seq, skip_special_tokens=True).strip())
        return texts


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Probabilities renormalised over the smallest set of tokens whose mass reaches top_p."""
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)
