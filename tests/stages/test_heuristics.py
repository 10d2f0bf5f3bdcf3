"""The simple map stages: caption, image_size, file_size, text_filter."""

import pyarrow as pa
import pytest
from pydantic import ValidationError

from curate.stages.caption import Caption, CaptionConfig
from curate.stages.file_size import FileSize, FileSizeConfig
from curate.stages.image_size import ImageSize, ImageSizeConfig
from curate.stages.text_filter import TextFilter, TextFilterConfig


def _uids(n):
    return [f"{i:032x}" for i in range(n)]


def test_caption_datacomp_rule():
    texts = [None, "   ", "two words", "three tiny w", "a b c", "three real words", "x" * 50]
    table = pa.table({"uid": _uids(len(texts)), "text": pa.array(texts, pa.string())})
    verdict = Caption(CaptionConfig(min_words=3, min_chars=6, max_chars=40)).process(table)
    assert verdict.reasons.tolist() == ["empty_caption", "empty_caption", "too_few_words", None, "too_few_chars", None,
                               "too_few_words"]
    long = Caption(CaptionConfig(max_chars=40)).process(pa.table({"uid": _uids(1), "text": ["word " * 20]}))
    assert long.reasons.tolist() == ["caption_too_long"]


def test_image_size_bounds():
    sizes = [(300, 300), (199, 500), (900, 200), (200, 601), (5000, 4000)]
    table = pa.table({"uid": _uids(5), "width": [w for w, _ in sizes], "height": [h for _, h in sizes]})
    verdict = ImageSize(ImageSizeConfig(min_side=200, max_side=4096, max_aspect_ratio=3)).process(table)
    assert verdict.reasons.tolist() == [None, "image_too_small", "aspect_ratio", "aspect_ratio", "image_too_large"]
    assert verdict.values.tolist() == [None, "199x500", "4.50", "3.00", "5000x4000"]


def test_image_size_from_datacomp_original_sizes():
    """No decode ran (a metadata run): DataComp's original_width/original_height decide; a row
    without a size is rejected, not guessed. Where both are present the original size wins, as in
    DataComp (a shard's image is stored resized); the decoded one counts where it has none."""
    table = pa.table({"uid": _uids(4), "original_width": pa.array([300, None, 150, 1000], pa.int64()),
                      "original_height": pa.array([300, 400, 300, 200], pa.int64())})
    stage = ImageSize(ImageSizeConfig(min_side=200, max_aspect_ratio=3))
    verdict = stage.process(table)
    assert verdict.reasons.tolist() == [None, "missing_size", "image_too_small", "aspect_ratio"]
    assert verdict.values[1] == "no original_width/original_height"
    decoded = table.append_column("width", pa.array([300] * 4, pa.int32())).append_column(
        "height", pa.array([300] * 4, pa.int32()))
    assert stage.process(decoded).reasons.tolist() == [None, None, "image_too_small", "aspect_ratio"]
    no_original = decoded.set_column(0, "uid", pa.array(_uids(4))).drop_columns(["original_width", "original_height"])
    assert stage.process(no_original).reasons.tolist() == [None] * 4
    unsized = decoded.set_column(decoded.column_names.index("width"), "width", pa.nulls(4, pa.int32()))
    assert stage.process(unsized).values[1] == "no original_width/original_height or width/height"


def test_image_size_needs_a_size():
    with pytest.raises(ValueError, match="run 'decode' before 'image_size'.*original_width"):
        ImageSize(ImageSizeConfig()).process(pa.table({"uid": _uids(1), "text": ["a caption"]}))


def test_file_size_laion_rule(real_jpeg):
    table = pa.table({"uid": _uids(3), "image": pa.array([real_jpeg, b"x" * 4999, None], pa.binary())})
    verdict = FileSize(FileSizeConfig(min_bytes=5000)).process(table)
    first = None if len(real_jpeg) >= 5000 else "file_too_small"
    assert verdict.reasons.tolist() == [first, "file_too_small", "file_too_small"]


def test_text_filter_patterns_and_whole_word_blocklist(tmp_path):
    words = tmp_path / "block.txt"
    words.write_text("# comment\nspam\n")
    stage = TextFilter(TextFilterConfig(patterns=[r"https?://"], blocklist=["ugly"], blocklist_file=str(words)))
    stage.setup()
    texts = ["see http://x.test", "an Ugly duckling", "spammy but fine", "SPAM offer", "a clean caption"]
    verdict = stage.process(pa.table({"uid": _uids(5), "text": texts}))
    assert verdict.reasons.tolist() == ["pattern", "blocklist", None, "blocklist", None]


def test_text_filter_rejects_bad_regex():
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        TextFilterConfig(patterns=["(unclosed"])
