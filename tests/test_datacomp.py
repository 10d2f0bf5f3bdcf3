"""DataComp's filtering track end to end: the recipes in pipelines/datacomp/ against DataComp's own
code (tests/datacomp_reference.py, transcribed from baselines/apply_filter.py) and against
hand-computed rows at each rule's edge, on metadata folders in DataComp's release format (a
Parquet and an .npz per file): hand-made ones, and one made from the pool by `curate sample
datacomp` (real captions, sizes of the rendered images, random vectors: these rules only need
geometry). Each run writes uids.npy, compared as DataComp's sorted u8,u8 arrays."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine
from curate.io.datacomp import import_embeddings
from curate.neighbours import kmeans
from curate.pipeline import load_pipeline, parse_pipeline
from curate.runner import run_pipeline
from curate.sample.datacomp import build_datacomp
from curate.schema import UID_DTYPE, uid_array
from curate.stages.synset_filter import default_synsets, read_synset_offsets
from tests import datacomp_reference as reference

RECIPES = Path(__file__).parents[1] / "pipelines" / "datacomp"
BOXES = pa.list_(pa.list_(pa.float64()))


def run_recipe(name: str, metadata: Path, out: Path, overrides: list[str] = ()) -> np.ndarray:
    """Run a recipe on a metadata folder; returns its uids.npy (checked to be DataComp's format)."""
    spec = load_pipeline(RECIPES / f"{name}.yaml", list(overrides))
    stats = run_pipeline(spec, LocalEngine(workers=2, progress=False), [str(metadata)], out)
    uids = np.load(out / "uids.npy")
    assert uids.dtype == UID_DTYPE and len(uids) == stats["kept"]
    assert np.array_equal(uids, np.sort(uids))  # sorted, as DataComp's resharder needs
    return uids


def write_metadata(folder: Path, rows: list[dict], vectors: dict[str, np.ndarray] | None = None, name="00000000"):
    """One DataComp metadata file: the Parquet of `rows` (uids given, or made from the row number)
    and its .npz (`vectors` by array name, or random ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    defaults = {"url": "http://example.test/x.jpg", "original_width": 512, "original_height": 512,
                "clip_b32_similarity_score": 0.3, "clip_l14_similarity_score": 0.3}
    full = [{"uid": f"{i + 1:032x}", **defaults, **row} for i, row in enumerate(rows)]
    table = pa.table({
        "uid": pa.array([r["uid"] for r in full], pa.string()),
        "url": pa.array([r["url"] for r in full], pa.string()),
        "text": pa.array([r["text"] for r in full], pa.string()),
        "original_width": pa.array([r["original_width"] for r in full], pa.int64()),
        "original_height": pa.array([r["original_height"] for r in full], pa.int64()),
        "clip_b32_similarity_score": pa.array([r["clip_b32_similarity_score"] for r in full], pa.float32()),
        "clip_l14_similarity_score": pa.array([r["clip_l14_similarity_score"] for r in full], pa.float32()),
        "face_bboxes": pa.array([[] for _ in full], BOXES),
        "sha256": pa.array(["0" * 64 for _ in full], pa.string()),
    })
    pq.write_table(table, folder / f"{name}.parquet")
    rng = np.random.default_rng(0)
    vectors = vectors or {}
    arrays = {}
    for key, dim in (("b32", 8), ("l14", 8)):
        for kind in ("img", "txt"):
            given = vectors.get(f"{key}_{kind}")
            made = rng.standard_normal((len(full), dim))
            arrays[f"{key}_{kind}"] = (given if given is not None else made / np.linalg.norm(made, axis=1,
                                                                                             keepdims=True)).astype(np.float16)
    np.savez(folder / f"{name}.npz", **arrays)
    return table


def kept(uids: np.ndarray, table: pa.Table) -> list[str]:
    """The texts (or uids) of `table`'s rows whose uid is in `uids`, in table order."""
    listed = set(map(tuple, uids.tolist()))
    pairs = uid_array(table.column("uid").to_pylist())
    by_uid = {tuple(p): u for p, u in zip(pairs.tolist(), table.column("uid").to_pylist())}
    chosen = {by_uid[p] for p in listed}
    return [t for u, t in zip(table.column("uid").to_pylist(), table.column("text").to_pylist()) if u in chosen]


@pytest.fixture(scope="module")
def model():
    return reference.fasttext_model()


@pytest.fixture(scope="module")
def pool_folder(pool_root, tmp_path_factory) -> Path:
    """The pool in DataComp's format (4 metadata files, random vectors), with its L/14 vectors imported."""
    out = tmp_path_factory.mktemp("datacomp")
    build_datacomp([str(pool_root / "pool")], out, eval_data=[str(pool_root / "eval")], rows_per_file=40,
                   image_size=128)
    import_embeddings(out / "metadata", out / "store_l14")
    return out


def test_basic_counts_as_datacomp_at_each_edge(tmp_path, model):
    rows = [
        {"text": "I a m"},  # 3 words, 5 characters: out ("more than 5")
        {"text": "I am a"},  # 3 words, 6 characters: kept
        {"text": "I a m "},  # 6 characters raw, 5 stripped: DataComp counts raw, so kept
        {"text": "I am  "},  # 2 words: out ("more than 2")
        {"text": "it is a"},  # 3 words: kept
        {"text": "a photo of a dog", "original_width": 200, "original_height": 600},  # aspect exactly 3.0: kept
        {"text": "a photo of a dog", "original_width": 600, "original_height": 200},  # kept
        {"text": "a photo of a dog", "original_width": 200, "original_height": 601},  # aspect above 3: out
        {"text": "a photo of a dog", "original_width": 199, "original_height": 300},  # shorter side 199: out
        {"text": "a photo\nof a dog"},  # a newline: the model reads it as a space, kept
        {"text": "un chien sur la plage"},  # French: out
    ]
    table = write_metadata(tmp_path / "metadata", rows)
    got = run_recipe("basic", tmp_path / "metadata", tmp_path / "out")
    assert kept(got, table) == ["I am a", "I a m ", "it is a", "a photo of a dog", "a photo of a dog",
                                "a photo\nof a dog"]
    assert np.array_equal(got, reference.basic(table, model))


def test_clip_score_fraction_keeps_int_nf_plus_one_and_ties(tmp_path):
    scores = [0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.3, 0.2, 0.1, 0.0]  # n = 10: int(10 * 0.3) = 3, the 4th best is 0.6
    table = write_metadata(tmp_path / "metadata", [{"text": f"s{s}", "clip_l14_similarity_score": s} for s in scores])
    got = run_recipe("clip_score_l14_30", tmp_path / "metadata", tmp_path / "out")
    assert kept(got, table) == ["s0.9", "s0.8", "s0.7", "s0.6", "s0.6", "s0.6"]  # the ties at 0.6 all kept
    assert np.array_equal(got, reference.clip_score_fraction(table, "clip_l14_similarity_score", 0.3))
    # at 0.5, int(5.0) + 1 = 6 samples where ceil(0.5 n) keeps 5: DataComp's rule is the recipe's
    half = run_recipe("clip_score_l14_30", tmp_path / "metadata", tmp_path / "half", ["stages[0].top_fraction=0.5"])
    assert kept(half, table) == ["s0.9", "s0.8", "s0.7", "s0.6", "s0.6", "s0.6"]
    distinct = write_metadata(tmp_path / "distinct", [{"text": f"d{i}", "clip_l14_similarity_score": 1 - i / 10}
                                                      for i in range(10)])
    six = run_recipe("clip_score_l14_30", tmp_path / "distinct", tmp_path / "six", ["stages[0].top_fraction=0.5"])
    assert kept(six, distinct) == [f"d{i}" for i in range(6)]
    assert np.array_equal(six, reference.clip_score_fraction(distinct, "clip_l14_similarity_score", 0.5))
    five = run_recipe("clip_score_l14_30", tmp_path / "distinct", tmp_path / "five",
                      ["stages[0].top_fraction=0.5", "stages[0].fraction_rule=ceil"])
    assert kept(five, distinct) == [f"d{i}" for i in range(5)]


def test_laion2b_needs_gcld3_english_and_b32_at_least_028(tmp_path):
    just_below = float(np.nextafter(np.float32(0.28), np.float32(0)))
    rows = [{"text": "a photo of a red car parked on the street", "clip_b32_similarity_score": 0.28},
            {"text": "a photo of a blue car parked on the road", "clip_b32_similarity_score": just_below},
            {"text": "une photo d'une voiture rouge garée dans la rue", "clip_b32_similarity_score": 0.5},
            {"text": "a photo of a green car\nparked by the house", "clip_b32_similarity_score": 0.4}]
    table = write_metadata(tmp_path / "metadata", rows)
    got = run_recipe("laion2b", tmp_path / "metadata", tmp_path / "out")
    assert kept(got, table) == [rows[0]["text"], rows[3]["text"]]  # 0.28 itself is kept, a float32 step below not
    assert np.array_equal(got, reference.clip_score_threshold(table, "clip_b32_similarity_score", 0.28, gcld3_en=True))


def test_text_based_takes_each_words_first_synset(tmp_path, model):
    rows = [{"text": "a photo of the crane"},  # crane's first synset (Hart Crane) is no class; its later ones are
            {"text": "a photo of the mouse"},  # mouse.n.01 is an ImageNet-21k class
            {"text": "a photo of some dogsss"},  # NLTK 3.8.1's morphy strips the s's again and again: dog
            {"text": "a photo of the the the"},  # no word with a synset in the list
            {"text": "une souris sur la table"}]  # not English
    table = write_metadata(tmp_path / "metadata", rows)
    got = run_recipe("text_based", tmp_path / "metadata", tmp_path / "out")
    assert kept(got, table) == ["a photo of the mouse", "a photo of some dogsss"]
    wordnet = reference.nltk_wordnet()
    assert np.array_equal(got, reference.text_based(table, model, read_synset_offsets(default_synsets()), wordnet))


def test_image_based_assigns_by_dot_product_and_breaks_ties_to_the_first_centroid(tmp_path, model):
    half = np.float16(np.sqrt(0.5))
    l14 = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [half, half, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], np.float16)
    rows = [{"text": "a dog on a sofa"}, {"text": "a cat on a mat"}, {"text": "a bird on a wire"},
            {"text": "a fish in a bowl"}, {"text": "dog"}]  # the last: one token, out by the caption prefilter
    vectors = {"l14_img": l14, "l14_txt": l14}
    table = write_metadata(tmp_path / "metadata", rows, vectors)
    import_embeddings(tmp_path / "metadata", tmp_path / "store")
    centroids = np.eye(4, dtype=np.float32)[:3]
    np.save(tmp_path / "centroids.npy", centroids)
    for targets, expected in ((np.array([[0.9, 0.1, 0, 0]], np.float32), ["a dog on a sofa", "a bird on a wire"]),
                              (np.array([[0.1, 0.9, 0, 0]], np.float32), ["a fish in a bowl"])):
        # the equidistant vector (bird) has equal dot products with centroids 0 and 1: it goes to 0, as torch.argmax
        np.save(tmp_path / "targets.npy", targets)
        got = run_recipe("image_based", tmp_path / "metadata", tmp_path / f"out{expected[0][2]}",
                         [f"stages[2].store={tmp_path / 'store'}", f"stages[2].centroids={tmp_path / 'centroids.npy'}",
                          f"stages[2].target_vectors=[{tmp_path / 'targets.npy'}]"])
        assert kept(got, table) == expected
        assert np.array_equal(got, reference.image_based(table, l14, centroids, targets, model))


def test_l2_kmeans_is_datacomps_clustering():
    vectors = np.random.default_rng(1).standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ours, _ = kmeans(vectors, 12, 0, 20, spherical=False)
    assert np.array_equal(ours, reference.train_kmeans(vectors, 12, seed=0))
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1)  # L2 centroids: not renormalised


def test_recipes_on_the_pool_in_datacomp_format(pool_folder, tmp_path, model):
    metadata = pool_folder / "metadata"
    table = reference.read_metadata(metadata)
    assert len(list(metadata.glob("*.npz"))) == len(list(metadata.glob("*.parquet"))) == 4
    expected = {
        "basic": reference.basic(table, model),
        "clip_score_l14_30": reference.clip_score_fraction(table, "clip_l14_similarity_score", 0.3),
        "clip_score_b32_threshold": reference.clip_score_threshold(table, "clip_b32_similarity_score", 0.25),
        "laion2b": reference.clip_score_threshold(table, "clip_b32_similarity_score", 0.28, gcld3_en=True),
        "text_based": reference.text_based(table, model, read_synset_offsets(default_synsets()),
                                           reference.nltk_wordnet()),
    }
    for name, uids in expected.items():
        got = run_recipe(name, metadata, tmp_path / name)
        assert 0 < len(got) < table.num_rows, name
        assert np.array_equal(got, uids), name
    # image-based, with DataComp's centroids fitted as image_based_clustering.py does: L2 k-means on the
    # prefiltered pool's vectors; and intersected with the L/14 top 30%
    l14 = reference.read_npz(metadata, "l14_img")
    centroids = reference.train_kmeans(l14[reference.caption_filter(table, model)].astype(np.float32), 8)
    np.save(tmp_path / "centroids.npy", centroids)
    targets = np.load(pool_folder / "targets" / "l14_img.npy")[:3]
    np.save(tmp_path / "targets.npy", targets)
    store = [f"stages[{{i}}].store={pool_folder / 'store_l14'}",
             f"stages[{{i}}].centroids={tmp_path / 'centroids.npy'}",
             f"stages[{{i}}].target_vectors=[{tmp_path / 'targets.npy'}]"]
    got = run_recipe("image_based", metadata, tmp_path / "image_based", [s.format(i=2) for s in store])
    assert np.array_equal(got, reference.image_based(table, l14, centroids, targets, model))
    assert 0 < len(got) < reference.caption_filter(table, model).sum()
    threshold = -np.sort(-table.column("clip_l14_similarity_score").to_numpy())[int(table.num_rows * 0.3)]
    both = run_recipe("image_based_clip_score", metadata, tmp_path / "image_based_clip_score",
                      [s.format(i=3) for s in store])
    assert np.array_equal(both, reference.image_based(table, l14, centroids, targets, model,
                                                      "clip_l14_similarity_score", threshold))
    assert 0 < len(both) < len(got)
    # fitted by the stage itself (L2 k-means, niter 20): the recipe as shipped runs
    fitted = run_recipe("image_based", metadata, tmp_path / "fitted",
                        [store[0].format(i=2), store[2].format(i=2), "stages[2].clusters=8"])
    assert 0 < len(fitted) <= reference.caption_filter(table, model).sum()


def test_recipes_on_the_pool_with_the_projects_clip_vectors(pool_root, pool_table, embedding_checkpoint, tmp_path,
                                                            model):
    """`curate sample datacomp --checkpoint`: the .npz vectors are the project's CLIP's (one scorer
    under both names), both score columns its image-text cosine, the targets its eval vectors; the
    recipes that read vectors or scores equal DataComp's code on them."""
    from curate.models.embedder import ClipEmbedder

    out = tmp_path / "datacomp"
    build_datacomp([str(pool_root / "pool")], out, checkpoint=str(embedding_checkpoint),
                   eval_data=[str(pool_root / "eval")], rows_per_file=40, image_size=128)
    metadata = out / "metadata"
    table = reference.read_metadata(metadata)
    images = dict(zip(pool_table.column("uid").to_pylist(), pool_table.column("image").to_pylist()))
    embedder = ClipEmbedder(str(embedding_checkpoint))
    for part in sorted(metadata.glob("*.parquet")):  # embedded a file at a time, as the builder does
        rows = pq.read_table(part, columns=["uid", "text"]).to_pylist()
        embedded = embedder.embed([images[r["uid"]] for r in rows], [r["text"] for r in rows])
        arrays = np.load(part.with_suffix(".npz"))
        assert np.array_equal(arrays["l14_img"], embedded.image.astype(np.float16))
        assert np.array_equal(arrays["l14_txt"], embedded.text.astype(np.float16))
        assert all(np.array_equal(arrays[f"b32_{kind}"], arrays[f"l14_{kind}"]) for kind in ("img", "txt"))
    l14 = reference.read_npz(metadata, "l14_img")
    cosines = np.einsum("ij,ij->i", l14.astype(np.float32), reference.read_npz(metadata, "l14_txt").astype(np.float32))
    for column in ("clip_l14_similarity_score", "clip_b32_similarity_score"):
        assert np.allclose(table.column(column).to_numpy(), cosines, atol=1e-6), column
    for name, expected in (
            ("clip_score_l14_30", reference.clip_score_fraction(table, "clip_l14_similarity_score", 0.3)),
            ("clip_score_b32_threshold", reference.clip_score_threshold(table, "clip_b32_similarity_score", 0.25))):
        assert np.array_equal(run_recipe(name, metadata, tmp_path / name), expected), name
    import_embeddings(metadata, out / "store_l14")
    centroids = reference.train_kmeans(l14[reference.caption_filter(table, model)].astype(np.float32), 8)
    np.save(tmp_path / "centroids.npy", centroids)
    targets = np.load(out / "targets" / "l14_img.npy")
    assert targets.shape[1] == l14.shape[1]  # the eval split embedded by the same CLIP
    got = run_recipe("image_based", metadata, tmp_path / "image_based",
                     [f"stages[2].store={out / 'store_l14'}", f"stages[2].centroids={tmp_path / 'centroids.npy'}",
                      f"stages[2].target_vectors=[{out / 'targets' / 'l14_img.npy'}]"])
    assert 0 < len(got) and np.array_equal(got, reference.image_based(table, l14, centroids, targets, model))


def test_image_runs_take_the_jsons_original_sizes(pool_folder, tmp_path):
    """Shards stored at 128 px as img2dataset does (the json keeps original_width/height): by the
    decoded size every image would be too small; the original sizes decide, as in the metadata run."""
    rules = {"stage": "image_size", "min_side": 200, "max_aspect_ratio": 3}
    engine = LocalEngine(workers=2, progress=False)
    with_images = parse_pipeline({"name": "i", "outputs": ["parquet", "uids"], "stages": [{"stage": "decode"}, rules]},
                                 "i.yaml")
    run_pipeline(with_images, engine, [str(pool_folder / "shards")], tmp_path / "images")
    metadata = parse_pipeline({"name": "m", "outputs": ["parquet", "uids"], "stages": [rules]}, "m.yaml")
    run_pipeline(metadata, engine, [str(pool_folder / "metadata")], tmp_path / "metadata")
    got, expected = np.load(tmp_path / "images" / "uids.npy"), np.load(tmp_path / "metadata" / "uids.npy")
    assert len(got) > 20 and np.array_equal(got, expected)
    kept = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "images" / "parquet").glob("*.parquet")))
    assert max(kept.column("width").to_pylist() + kept.column("height").to_pylist()) <= 128
    assert min(min(w, h) for w, h in zip(kept.column("original_width").to_pylist(),
                                         kept.column("original_height").to_pylist())) >= 200
