"""Stages on CLIP embeddings, on real pool images: embedding near-dup, SemDeDup, DataComp's
image-based filter and decontamination by embedding. The scorer has random weights, so
duplicates are judged against brute force on its own vectors (see `embedding_checkpoint`);
whether planted re-encoded, resized and cropped copies are found and distinct drawings kept
apart is shown with stand-in vectors in the store (see `thumbnail_vector`)."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from curate.engines import LocalEngine
from curate.engines.driver import run_global_stage
from curate.io.embedding_store import EmbeddingStore, sample_keys
from curate.models.embedder import file_fingerprint
from curate.neighbours import components, spherical_kmeans
from curate.sample.near_copies import jpeg, near_copies
from curate.stages import clustered, semdedup
from curate.stages.clustered import uid_hash
from curate.stages.decontaminate_embedding import DecontaminateEmbedding, DecontaminateEmbeddingConfig
from curate.stages.embed_dedup import EmbedDedup, EmbedDedupConfig
from curate.stages.embeddings import Embeddings
from curate.stages.image_based_filter import ImageBasedFilter, ImageBasedFilterConfig
from curate.stages.semdedup import SemDedup, SemDedupConfig
from tests.stages.test_dedup import run_global


def reencoded(data: bytes, quality: int = 90) -> bytes:
    return jpeg(Image.open(io.BytesIO(data)), quality)


def thumbnail_vector(data: bytes) -> np.ndarray:
    """Stand-in for a trained CLIP's image embedding: the blurred, mean-centred 16 x 16 colour
    thumbnail. A CLIP that tells drawings apart cannot be had here (no weights from a hub; the
    clip-tiny this project trains on CPU in minutes scores distinct drawings up to cosine 0.998
    and 3-px crops down to 0.89). On pool drawings of 256 px or more this puts near copies at
    cosine >= 0.98 to their original and distinct drawings at <= 0.86."""
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.BOX)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)).resize((16, 16), Image.BOX), np.float32).ravel()
    pixels -= pixels.mean()
    return pixels / max(np.linalg.norm(pixels), 1e-6)  # a blank image: the zero vector, near nothing


def store_stand_in_vectors(config, table: pa.Table) -> None:
    """Put `thumbnail_vector`s into the config's store as its scorer's embeddings, so the stages
    read them and embed nothing themselves."""
    vectors = np.stack([thumbnail_vector(image) for image in table["image"].to_pylist()])
    store = EmbeddingStore(config.store, file_fingerprint(config.checkpoint, config.model))
    store.put(sample_keys(table), vectors, vectors, np.zeros(len(vectors), np.float32))


@pytest.fixture(scope="module")
def large_drawings(pool_table) -> list[dict]:
    """Distinct, not blank pool drawings at least 256 px on the short side (so a few pixels' crop is a small one)."""
    rows, seen = [], set()
    for row in pool_table.select(["uid", "text", "image"]).to_pylist():
        image = Image.open(io.BytesIO(row["image"]))
        if row["image"] not in seen and min(image.size) >= 256 and image.convert("L").getextrema()[0] < 250:
            seen.add(row["image"])
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def planted(pool_table):
    """Distinct pool drawings (uids 0...) plus an exact copy and a re-encoded copy of the first 10 (uids f...)."""
    originals, seen = [], set()
    for row in pool_table.select(["uid", "text", "image"]).to_pylist():
        if row["image"] not in seen:
            seen.add(row["image"])
            originals.append(row)
    originals = originals[:60]
    rows = [{"uid": f"0{i:031x}", "text": r["text"], "image": r["image"]} for i, r in enumerate(originals)]
    for i, r in enumerate(originals[:10]):
        rows += [{"uid": f"f0{i:030x}", "text": r["text"], "image": r["image"]},
                 {"uid": f"f1{i:030x}", "text": r["text"], "image": reencoded(r["image"])}]
    return pa.Table.from_pylist(rows).sort_by("uid")  # table order is uid order, as the stages see it


def dropped(verdict):
    return {u: v for u, r, v in zip(verdict.table["uid"].to_pylist(), verdict.reasons, verdict.values) if r}


def vectors_of(config, table):
    embedded = Embeddings(config).for_table(table)
    return embedded.image, embedded.score


def test_embed_dedup_groups_and_keeps_by_the_rule(planted, embedding_checkpoint, tmp_path):
    config = EmbedDedupConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"), threshold=0.995,
                              index="flat")
    table = planted.append_column("clip_score", pa.array(np.linspace(0, 1, planted.num_rows), pa.float32()))
    _, verdict = run_global(EmbedDedup(config), table)
    got = dropped(verdict)
    uids = table["uid"].to_pylist()
    vectors, _ = vectors_of(config, table)
    sims = vectors @ vectors.T
    left, right = np.nonzero(np.triu(sims >= 0.995, k=1))
    group = components(len(uids), left, right)
    scores = table["clip_score"].to_numpy()
    expected = {}
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        keeper = max(members, key=lambda i: (scores[i], -int(uids[i], 16)))
        expected.update({uids[i]: uids[keeper] for i in members if i != keeper})
    assert got == expected  # exactly the brute-force groups, each keeping its highest clip_score
    assert set(verdict.reasons) == {None, "near_duplicate_embedding"}
    # every planted copy is found: it and its original are one group, which keeps one sample
    # (this random scorer also chains some distinct drawings into a group: not asserted either way)
    for i in range(10):
        family = [uids.index(u) for u in (f"0{i:031x}", f"f0{i:030x}", f"f1{i:030x}")]
        assert len(set(group[family])) == 1 and sum(uids[j] not in got for j in family) <= 1


def test_embed_dedup_finds_near_copies_and_keeps_distinct_drawings_apart(large_drawings, embedding_checkpoint,
                                                                        tmp_path):
    """Recall of planted copies is 1 at threshold 0.95 (each re-encoded, resized or cropped copy
    joins its original's group), and no two distinct drawings share a group."""
    assert len(large_drawings) >= 30
    rows = [{"uid": f"0{i:031x}", "text": r["text"], "image": r["image"]} for i, r in enumerate(large_drawings)]
    families = {}
    for i, r in enumerate(large_drawings[:15]):
        copies = [{"uid": f"f{k}{i:030x}", "text": r["text"], "image": c}
                  for k, c in enumerate(near_copies(r["image"]).values())]
        rows += copies
        families.update({c["uid"]: f"0{i:031x}" for c in copies} | {f"0{i:031x}": f"0{i:031x}"})
    table = pa.Table.from_pylist(rows).sort_by("uid")
    table = table.append_column("clip_score", pa.array(np.random.default_rng(0).random(table.num_rows), pa.float32()))
    config = EmbedDedupConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"), threshold=0.95,
                              index="flat")
    store_stand_in_vectors(config, table)
    _, verdict = run_global(EmbedDedup(config), table)
    got = dropped(verdict)
    family_of = lambda uid: families.get(uid, uid)  # noqa: E731 - an unplanted drawing is its own family
    kept = [u for u in table["uid"].to_pylist() if u not in got]
    assert sorted(family_of(u) for u in kept) == sorted({family_of(u) for u in table["uid"].to_pylist()})
    assert all(family_of(uid) == family_of(keeper) for uid, keeper in got.items())
    assert len(got) == 15 * 4
    scores = dict(zip(table["uid"].to_pylist(), table["clip_score"].to_pylist()))
    for uid, keeper in got.items():  # the family member with the highest clip_score is the one kept
        assert scores[keeper] == max(s for u, s in scores.items() if family_of(u) == family_of(uid))


def test_semdedup_keeps_no_close_pair_within_a_cluster(planted, embedding_checkpoint, tmp_path):
    config = SemDedupConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"), clusters=5, epsilon=0.002)
    _, verdict = run_global(SemDedup(config), planted)
    got = dropped(verdict)
    uids = planted["uid"].to_pylist()
    vectors, _ = vectors_of(config, planted)
    _, assignment = spherical_kmeans(vectors, 5, 0, 20)
    index = {u: i for i, u in enumerate(uids)}
    for uid, value in got.items():  # each dropped sample is that close to the one it names, in its cluster
        assert vectors[index[uid]] @ vectors[index[value]] > 1 - 0.002
        assert assignment[index[uid]] == assignment[index[value]]
    kept = [i for i, u in enumerate(uids) if u not in got]
    sims = vectors[kept] @ vectors[kept].T
    same = assignment[kept][:, None] == assignment[kept][None, :]
    assert not np.any(np.triu((sims > 1 - 0.002) & same, k=1))
    for i in range(10):  # exact copies have cosine 1: one of each family at most survives
        assert len({f"0{i:031x}", f"f0{i:030x}"} - set(got)) <= 1


def test_semdedup_decides_the_same_in_small_tiles(planted, embedding_checkpoint, tmp_path, monkeypatch):
    config = SemDedupConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"), clusters=3, epsilon=0.01)
    _, whole = run_global(SemDedup(config), planted)
    monkeypatch.setattr(semdedup, "BLOCK", 4)  # clusters of ~25 members: several tiles each way
    _, tiled = run_global(SemDedup(config), planted)
    assert dropped(tiled) == dropped(whole) and len(dropped(whole)) > 0


def test_cluster_decisions_do_not_depend_on_workers_or_partitioning(planted, embedding_checkpoint, tmp_path):
    """SemDeDup, embed_dedup split into k-means clusters and the image-based filter give the same
    decisions on 1 and 2 local workers, with other tasks and shuffle partitions."""
    target = tmp_path / "target"
    target.mkdir()
    pq.write_table(planted.slice(20, 3).select(["uid", "text", "image"]), target / "t.parquet")
    store = str(tmp_path / "s")
    table = planted.append_column("clip_score", pa.array(np.linspace(1, 0, planted.num_rows), pa.float32()))
    stages = {
        "semdedup": SemDedup(SemDedupConfig(checkpoint=str(embedding_checkpoint), store=store, clusters=5,
                                            epsilon=0.01)),
        "embed_dedup": EmbedDedup(EmbedDedupConfig(checkpoint=str(embedding_checkpoint), store=store,
                                                   threshold=0.995, index="flat", cluster_rows=25)),
        "image_based_filter": ImageBasedFilter(ImageBasedFilterConfig(
            checkpoint=str(embedding_checkpoint), store=store, target=[str(target)], clusters=8)),
    }
    runs = {(name, workers): dropped(run_global_stage(stage, table, LocalEngine(workers, progress=False),
                                                      task_rows=task_rows, partition_rows=partition_rows)[1])
            for name, stage in stages.items() for workers, task_rows, partition_rows in ((1, 7, 5), (2, 16, 11))}
    for name in stages:
        assert runs[(name, 1)] == runs[(name, 2)] and 0 < len(runs[(name, 1)]) < table.num_rows, name
    # embed_dedup in 4 clusters finds a subset of the whole pool's groups: each dropped sample names
    # a keeper of its brute-force group; exact copies (cosine 1) share a cluster, so one at most survives
    config = stages["embed_dedup"].config
    uids = table["uid"].to_pylist()
    vectors, _ = vectors_of(config, table)
    group = components(len(uids), *np.nonzero(np.triu(vectors @ vectors.T >= 0.995, k=1)))
    index = {u: i for i, u in enumerate(uids)}
    assert all(group[index[uid]] == group[index[keeper]] for uid, keeper in runs[("embed_dedup", 1)].items())
    for i in range(10):
        assert len({f"0{i:031x}", f"f0{i:030x}"} - set(runs[("embed_dedup", 1)])) <= 1


def test_kmeans_fits_on_a_bounded_sample(planted, embedding_checkpoint, tmp_path, monkeypatch):
    """With fit_sample below the pool's size k-means sees exactly the rows with the smallest uid
    hashes (whatever the tasks), and every row, sampled or not, gets a cluster and a decision."""
    fitted = []
    original = clustered.kmeans
    monkeypatch.setattr(clustered, "kmeans",
                        lambda vectors, *args: fitted.append((vectors, *original(vectors, *args))) or fitted[-1][1:])
    config = SemDedupConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"), clusters=4,
                            epsilon=0.01, fit_sample=30)
    _, verdict = run_global(SemDedup(config), planted)
    _, again = run_global(SemDedup(config), planted, batch_rows=13)
    assert dropped(again) == dropped(verdict)
    uids = planted["uid"].to_pylist()
    vectors, _ = vectors_of(config, planted)
    sample = sorted(np.argsort(uid_hash(planted["uid"]), kind="stable")[:30], key=lambda i: uids[i])
    (seen, centroids, _), (seen_again, centroids_again, _) = fitted
    assert np.array_equal(seen, vectors[sample]) and np.array_equal(seen_again, seen)
    assert np.array_equal(centroids, centroids_again) and len(centroids) == 4
    assert verdict.table.num_rows == planted.num_rows  # every row decided: kept or rejected
    got = dropped(verdict)
    assignment = np.argmax(vectors @ centroids.T, axis=1)
    index = {u: i for i, u in enumerate(uids)}
    for uid, value in got.items():
        assert assignment[index[uid]] == assignment[index[value]]
        assert vectors[index[uid]] @ vectors[index[value]] > 1 - 0.01
    kept = [i for i, u in enumerate(uids) if u not in got]
    same = assignment[kept][:, None] == assignment[kept][None, :]
    assert not np.any(np.triu((vectors[kept] @ vectors[kept].T > 1 - 0.01) & same, k=1))
    assert set(got) - {uids[i] for i in sample}  # rows outside the sample were decided too


def test_image_based_filter_keeps_the_targets_clusters(planted, embedding_checkpoint, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    pq.write_table(planted.slice(20, 3).select(["uid", "text", "image"]), target / "t.parquet")
    config = ImageBasedFilterConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"),
                                    target=[str(target)], clusters=8)
    _, verdict = run_global(ImageBasedFilter(config), planted)
    got = dropped(verdict)
    uids = planted["uid"].to_pylist()
    vectors, _ = vectors_of(config, planted)
    _, assignment = spherical_kmeans(vectors, 8, 0, 20)
    targeted = set(assignment[20:23].tolist())  # a target's nearest centroid is the cluster it was put in
    assert {u for u, c in zip(uids, assignment) if c not in targeted} == set(got)
    assert all(value == str(assignment[uids.index(u)]) for u, value in got.items())
    assert 0 < len(got) < len(uids)


def test_planted_eval_images_are_removed_by_embedding(pool_root, pool_table, embedding_checkpoint, tmp_path):
    eval_table = pq.read_table(pool_root / "eval")
    eval_rows = eval_table.slice(0, 4).to_pylist()
    planted = [(f"e{k:031x}", r["image"], r["uid"]) for k, r in enumerate(eval_rows)]
    planted += [(f"f{k:031x}", reencoded(r["image"], 70), r["uid"]) for k, r in enumerate(eval_rows)]
    pool = pool_table.select(["uid", "text", "image"]).to_pylist()
    table = pa.table({"uid": [r["uid"] for r in pool] + [p[0] for p in planted],
                      "text": [r["text"] for r in pool] + ["a drawing"] * len(planted),
                      "image": pa.array([r["image"] for r in pool] + [p[1] for p in planted], pa.binary())})
    config = DecontaminateEmbeddingConfig(checkpoint=str(embedding_checkpoint), eval_data=[str(pool_root / "eval")],
                                          threshold=0.995)
    stage = DecontaminateEmbedding(config)
    stage.setup()
    verdict = stage.process(table)
    got = dropped(verdict)
    for uid, _, _ in planted:
        assert uid in got
    # whatever is removed is that close to the eval image it names
    embeddings = Embeddings(config)
    eval_vectors, _ = vectors_of(config, eval_table)
    eval_index = {u: i for i, u in enumerate(eval_table["uid"].to_pylist())}
    pool_vectors = embeddings.for_table(table).image
    row = {u: i for i, u in enumerate(table["uid"].to_pylist())}
    for uid, value in got.items():
        eval_uid = value.split(" ")[0]
        assert pool_vectors[row[uid]] @ eval_vectors[eval_index[eval_uid]] >= 0.995 - 1e-6
    assert len(got) < table.num_rows // 2


def test_decontamination_removes_near_copies_of_eval_images_only(pool_root, large_drawings, embedding_checkpoint,
                                                                 tmp_path):
    """Resized and cropped copies of eval images planted in a pool are removed, naming their eval
    image; no other drawing is (stand-in vectors, as above)."""
    eval_table = pq.read_table(pool_root / "eval", columns=["uid", "text", "image"])
    eval_rows = [r for r in eval_table.to_pylist() if min(Image.open(io.BytesIO(r["image"])).size) >= 256][:5]
    assert len(eval_rows) == 5
    planted = {f"e{k}{i:030x}": r["uid"] for i, r in enumerate(eval_rows) for k in range(4)}
    images = [c for r in eval_rows for c in near_copies(r["image"]).values()]
    table = pa.table({"uid": [r["uid"] for r in large_drawings] + list(planted),
                      "text": [r["text"] for r in large_drawings] + ["a drawing"] * len(planted),
                      "image": pa.array([r["image"] for r in large_drawings] + images, pa.binary())})
    config = DecontaminateEmbeddingConfig(checkpoint=str(embedding_checkpoint), store=str(tmp_path / "s"),
                                          eval_data=[str(pool_root / "eval")], threshold=0.95)
    store_stand_in_vectors(config, pa.concat_tables([table, eval_table.select(["uid", "text", "image"])]))
    stage = DecontaminateEmbedding(config)
    stage.setup()
    got = dropped(stage.process(table))
    assert {uid: value.split(" ")[0] for uid, value in got.items()} == planted


def test_decontamination_refuses_an_eval_set_without_images(fault_images, embedding_checkpoint, tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    corrupt = pa.array([fault_images["corrupt_image"]], pa.binary())
    pq.write_table(pa.table({"uid": ["a" * 32], "text": ["t"], "image": corrupt}), eval_dir / "e.parquet")
    stage = DecontaminateEmbedding(DecontaminateEmbeddingConfig(checkpoint=str(embedding_checkpoint),
                                                                eval_data=[str(eval_dir)]))
    with pytest.raises(ValueError, match=r"no image in eval_data .*eval.* could be embedded"):
        stage.setup()
