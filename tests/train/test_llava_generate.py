"""Inference: the Captioner's strategies (K texts per image), its KV-cached greedy decoding
against a full recomputation, per-image nucleus seeds, and `curate caption`."""

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from curate.cli import main
from curate.models.llava.format import IGNORE
from curate.models.llava.generate import Captioner


@pytest.fixture(scope="module")
def captioner(llava_checkpoint):
    return Captioner.load(llava_checkpoint, "cpu")


@pytest.fixture(scope="module")
def images(pool_images):
    return pool_images[:5]


@pytest.mark.parametrize("strategy,k", [("greedy", 2), ("beam", 2), ("nucleus", 3)])
def test_k_texts_per_image(captioner, images, strategy, k):
    out = captioner.generate(images[:3], num_return=k, strategy=strategy, max_new_tokens=5, batch_size=2)
    assert len(out) == 3 and all(len(texts) == k and all(isinstance(t, str) for t in texts) for texts in out)


def test_greedy_with_cache_matches_full_recomputation(captioner, images):
    model, fmt = captioner.model, captioner.format
    steps = 6
    got = captioner.generate(images[:2], max_new_tokens=steps, batch_size=2)
    for image, texts in zip(images[:2], got):
        enc = fmt.encode([{"from": "human", "value": f"<image>\n{captioner.prompt}"}], [image], generation=True)
        ids = list(enc.ids)
        for _ in range(steps):  # no cache: the whole sequence every step
            grown = dataclasses.replace(enc, ids=ids, labels=[IGNORE] * len(ids))
            with torch.no_grad():
                token = int(model(fmt.collate([grown])).logits[0, -1].argmax())
            if token == fmt.eos_id:
                break
            ids.append(token)
        expected = model.tokenizer.decode(ids[len(enc.ids):], skip_special_tokens=True).strip()
        assert texts == [expected]


def test_nucleus_is_seeded_per_image(captioner, images):
    kwargs = {"strategy": "nucleus", "num_return": 2, "max_new_tokens": 6, "top_p": 0.95}
    together = captioner.generate(images, seeds=[11, 12, 13, 14, 15], batch_size=3, **kwargs)
    alone = captioner.generate(images[3:4], seeds=[14], **kwargs)
    assert together[3] == alone[0]  # its batch mates and batch position do not matter
    reseeded = captioner.generate(images[3:4], seeds=[99], **kwargs)
    assert reseeded[0] != alone[0]
    assert together[0] != together[3]


def test_beam_returns_its_best_beams_in_order(captioner, images):
    best = captioner.generate(images[:2], strategy="beam", num_beams=4, num_return=1, max_new_tokens=5)
    two = captioner.generate(images[:2], strategy="beam", num_beams=4, num_return=2, max_new_tokens=5)
    assert [b[0] for b in best] == [t[0] for t in two]
    with pytest.raises(ValueError, match="num_return 5 is more than num_beams 3"):
        captioner.generate(images[:1], strategy="beam", num_return=5)


def test_curate_caption_writes_k_captions_per_image(llava_checkpoint, pool_table, tmp_path):
    shards = tmp_path / "in.parquet"
    pq.write_table(pool_table.slice(0, 6).select(["uid", "text", "image"]), shards)
    result = CliRunner().invoke(main, ["caption", "--checkpoint", str(llava_checkpoint), "--input", str(shards),
                                       "--output", str(tmp_path / "out"), "--num-captions", "3", "--strategy",
                                       "nucleus", "--max-new-tokens", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out" / "captions.parquet")
    assert table.schema.field("caption_index").type == pa.int32()
    uids = pool_table["uid"].to_pylist()[:6]
    assert sorted(zip(table["uid"].to_pylist(), table["caption_index"].to_pylist())) == \
        sorted((u, i) for u in uids for i in range(3))
    bad = CliRunner().invoke(main, ["caption", "--checkpoint", str(shards), "--input", str(shards)])
    assert bad.exit_code == 2 and "not a LLaVA checkpoint" in bad.output
