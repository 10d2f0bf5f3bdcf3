"""DataComp's baselines as its own code computes them, transcribed from mlfoundations/datacomp's
baselines/apply_filter.py (line numbers cited) over plain Python and NumPy, for the tests to
compare curate's recipes with. Only what cannot be had here is replaced: fasttext.tokenize (not
in fasttext-predict) by a transcription of fastText's Dictionary::readWord, torch by NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.metadata import WORDNET_DIR
from curate.schema import uid_array
from curate.stages.language import default_model_path


def fasttext_model():
    """The fastText language model the stages use (lid.176.ftz)."""
    import fasttext

    return fasttext.load_model(str(default_model_path()))


def fasttext_tokenize(text: str) -> list[str]:
    """fastText's tokenizer (fasttext.tokenize: Dictionary::readWord over the UTF-8 bytes)."""
    words, word = [], b""
    for byte in text.encode("utf-8"):
        c = bytes([byte])
        if c in b" \n\r\t\v\f\0":
            if word:
                words.append(word)
                word = b""
            if c == b"\n":
                words.append(b"</s>")
            continue
        word += c
    if word:
        words.append(word)
    return [w.decode("utf-8", "replace") for w in words]


def get_fasttext_language(text: str, model) -> str:
    """Lines 24-37."""
    text = text.replace("\n", " ")
    return model.predict(text)[0][0].split("__label__")[1]


def get_gcld3_language(text: str, model) -> str:
    """Lines 40-54."""
    return model.FindLanguage(text=text.replace("\n", " ")).language


def read_metadata(folder: Path) -> pa.Table:
    """Every Parquet of a metadata folder, in fs.ls order (sorted names)."""
    return pa.concat_tables(pq.read_table(p) for p in sorted(Path(folder).glob("*.parquet")))


def read_npz(folder: Path, key: str) -> np.ndarray:
    """An .npz array of every metadata file, in the same order."""
    return np.concatenate([np.load(p)[key] for p in sorted(Path(folder).glob("*.npz"))])


def basic(table: pa.Table, model) -> np.ndarray:
    """load_uids_with_basic_filter_helper, lines 200-234 (the uids kept, sorted as line 709 does)."""
    rows = table.to_pylist()
    keep = []
    for r in rows:
        english = get_fasttext_language(r["text"], model) == "en"
        caption = len(r["text"].split()) > 2 and len(r["text"]) > 5
        small, large = min(r["original_width"], r["original_height"]), max(r["original_width"], r["original_height"])
        image = small >= 200 and (large / small if small else np.inf) <= 3.0
        if english and caption and image:
            keep.append(r["uid"])
    return uid_array(keep)


def clip_score_fraction(table: pa.Table, key: str, fraction: float) -> np.ndarray:
    """get_threshold (lines 375-394) and load_uids_with_clip_score_helper (298-334)."""
    scores = table.column(key).to_numpy()
    n = int(len(scores) * fraction)
    threshold = -np.sort(-scores)[n]
    return uid_array([u for u, s in zip(table.column("uid").to_pylist(), scores) if s >= threshold])


def clip_score_threshold(table: pa.Table, key: str, threshold: float, gcld3_en: bool = False) -> np.ndarray:
    """load_uids_with_clip_score_helper, lines 298-334 (gcld3_en: the LAION-2B case, lines 315-324)."""
    rows = table.to_pylist()
    if gcld3_en:
        import gcld3

        model = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
        rows = [r for r in rows if get_gcld3_language(r["text"], model) == "en"]
    return uid_array([r["uid"] for r in rows if np.float32(r[key]) >= np.float32(threshold)])


def nltk_wordnet():
    """NLTK 3.8.1's WordNet reader (DataComp's version) over Debian's WordNet 3.0 files; NLTK's
    reader wants a `lexnames` file Debian does not ship, made here in a temporary folder."""
    import tempfile
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    folder = Path(tempfile.mkdtemp(prefix="wordnet-"))
    for path in WORDNET_DIR.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "lexnames").write_text("".join(f"{i:02d} lex{i} 0\n" for i in range(45)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used
        return WordNetCorpusReader(str(folder), None)


def does_contain_text_entity(text: str, entity_set: set, wordnet) -> bool:
    """Lines 237-260."""
    for word in text.split():
        synsets = wordnet.synsets(word)
        if len(synsets) == 0:
            continue
        if synsets[0].offset() in entity_set:
            return True
    return False


def text_based(table: pa.Table, model, entity_set: set, wordnet) -> np.ndarray:
    """load_uids_with_text_entity_helper, lines 263-295."""
    return uid_array([r["uid"] for r in table.to_pylist()
                      if get_fasttext_language(r["text"], model) == "en"
                      and does_contain_text_entity(r["text"], entity_set, wordnet)])


def caption_filter(table: pa.Table, model) -> np.ndarray:
    """Lines 57-77: the image-based baseline's prefilter, a boolean mask."""
    texts = table.column("text").to_pylist()
    words = np.array([len(fasttext_tokenize(x)) for x in texts])
    chars = np.array([len(x) for x in texts])
    # DataComp asks for the list at once (model.predict([...], k=1)); fasttext-predict's list call
    # returns labels only, so each line is asked alone: the same labels
    labels = [model.predict(x.replace("\n", " "), k=1)[0] for x in texts]
    english = np.array([x[0].replace("__label__", "") == "en" for x in labels])
    return english & (words > 1) & (chars > 5)


def get_centroid_ids(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """get_centroid_ids_gpu, lines 81-108: argmax of the dot products (the first on a tie)."""
    return np.argmax(np.einsum("ik,jk->ij", features.astype(np.float32), centroids.astype(np.float32)), axis=1)


def image_based(table: pa.Table, l14: np.ndarray, centroids: np.ndarray, targets: np.ndarray, model,
                key: str | None = None, threshold: float | None = None) -> np.ndarray:
    """load_uids_with_image_filter (lines 506-634) with image_filter_helper (111-197); with `key`
    and `threshold`, the CLIP-score intersection (lines 149-169)."""
    target_ids = np.unique(get_centroid_ids(targets, centroids))
    if key is not None:
        index = table.column(key).to_numpy() >= threshold
        table, l14 = table.filter(pa.array(index)), l14[index]
    mask = caption_filter(table, model)
    uids = np.array(table.column("uid").to_pylist(), object)[mask]
    labels = get_centroid_ids(l14[mask], centroids)
    return uid_array([u for u, label in zip(uids, labels) if label in target_ids])


def train_kmeans(embeddings: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """baselines/image_based_clustering.py's train_kmeans (lines 27-70) on the CPU: faiss.Clustering,
    L2, niter 20, no subsampling."""
    import faiss

    d = embeddings.shape[1]
    cluster = faiss.Clustering(d, num_clusters)
    cluster.niter = 20
    cluster.seed = seed
    cluster.max_points_per_centroid = 10000000
    index = faiss.IndexFlatL2(d)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        cluster.train(np.ascontiguousarray(embeddings, np.float32), index)
    finally:
        faiss.omp_set_num_threads(threads)
    return faiss.vector_float_to_array(cluster.centroids).reshape(num_clusters, d)
