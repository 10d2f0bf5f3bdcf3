"""DataComp's metadata folders: .npz arrays read a chunk at a time, and `curate embeddings import`
of them into an embedding store keyed by uid (in the Parquet's row order), which the embedding
stages then read without a scorer."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curate.cli import main
from curate.io.datacomp import import_embeddings, npz_chunks, npz_shape
from curate.io.embedding_store import EmbeddingStore
from curate.stages.embeddings import EmbeddingConfig, Embeddings


def metadata_file(folder, name, uids, arrays, compressed=False):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": uids, "url": [None] * len(uids), "text": ["a caption"] * len(uids)}),
                   folder / f"{name}.parquet")
    (np.savez_compressed if compressed else np.savez)(folder / f"{name}.npz", **arrays)


def unit(rows, dim, seed):
    v = np.random.default_rng(seed).standard_normal((rows, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_arrays_read_in_chunks_equal_numpy_load(tmp_path, compressed):
    arrays = {"l14_img": unit(1000, 24, 0), "l14_txt": unit(1000, 24, 1)}
    metadata_file(tmp_path, "a", [f"{i:032x}" for i in range(1000)], arrays, compressed)
    assert npz_shape(tmp_path / "a.npz", "l14_img") == (1000, 24)
    chunks = list(npz_chunks(tmp_path / "a.npz", "l14_img", rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert np.array_equal(np.concatenate(chunks), np.load(tmp_path / "a.npz")["l14_img"])
    with pytest.raises(ValueError, match=r"a\.npz: no array 'b32_img' \(it holds \['l14_img', 'l14_txt'\]\)"):
        npz_shape(tmp_path / "a.npz", "b32_img")


def test_import_keys_vectors_by_the_parquets_row_order(tmp_path):
    rows = {"00000000": 700, "00000001": 300}
    arrays = {}
    for seed, (name, n) in enumerate(rows.items()):
        uids = [f"{seed:02x}{i:030x}" for i in range(n)]
        arrays[name] = (uids, {"l14_img": unit(n, 16, 2 * seed), "l14_txt": unit(n, 16, 2 * seed + 1),
                               "b32_img": unit(n, 8, 9), "b32_txt": unit(n, 8, 10)})
        metadata_file(tmp_path / "metadata", name, *arrays[name])
    result = CliRunner().invoke(main, ["embeddings", "import", str(tmp_path / "metadata"), "--store",
                                       str(tmp_path / "store"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "1,000 vectors (16 wide) from 2 file(s)" in result.output
    store = EmbeddingStore.existing(tmp_path / "store")
    assert store.keyed_by == "uid" and store.dim == 16 and len(store) == 1000
    for uids, npz in arrays.values():
        # rows shuffled: each uid gets its own row's vectors, whatever order it is asked in
        order = np.random.default_rng(3).permutation(len(uids))
        table = pa.table({"uid": [uids[i] for i in order]})
        image, text, score = store.get(store.keys(table))
        assert np.array_equal(image, npz["l14_img"][order].astype(np.float32))
        assert np.array_equal(text, npz["l14_txt"][order].astype(np.float32))
        expected = (npz["l14_img"][order].astype(np.float32) * npz["l14_txt"][order].astype(np.float32)).sum(1)
        assert np.allclose(score, expected, atol=1e-6)
    # read without a checkpoint: a uid the store lacks is a failure of its row, not an error
    embeddings = Embeddings(EmbeddingConfig(store=str(tmp_path / "store")))
    table = pa.table({"uid": [arrays["00000001"][0][5], "f" * 32], "image": pa.nulls(2, pa.binary()),
                      "text": ["x", "y"]})
    embedded = embeddings.for_table(table)
    assert embedded.rows.tolist() == [0] and list(embedded.failures) == [1]
    assert np.array_equal(embedded.image[0], arrays["00000001"][1]["l14_img"][5].astype(np.float32))
    # b32 vectors go to a store of their own: one store holds one pair of arrays
    again = CliRunner().invoke(main, ["embeddings", "import", str(tmp_path / "metadata"), "--store",
                                      str(tmp_path / "store"), "--image-key", "b32_img"])
    assert again.exit_code == 2 and "holds embeddings of another model" in again.output


def test_import_refuses_misaligned_or_missing_files(tmp_path):
    metadata_file(tmp_path / "m", "a", [f"{i:032x}" for i in range(10)],
                  {"l14_img": unit(9, 4, 0), "l14_txt": unit(9, 4, 1)})
    with pytest.raises(ValueError, match=r"a\.npz: l14_img has 9 rows, but a\.parquet has 10"):
        import_embeddings(tmp_path / "m", tmp_path / "store")
    assert not (tmp_path / "store").exists()
    (tmp_path / "m" / "a.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \.npz beside a\.parquet"):
        import_embeddings(tmp_path / "m", tmp_path / "store")
