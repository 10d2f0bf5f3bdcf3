import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.engines import LocalEngine
from curate.pipeline import parse_pipeline
from curate.runner import run_pipeline
from curate.stages.pii import Pii, PiiConfig, iban_valid, luhn

# captions written for the test: (caption, the PII in it, the types, the redacted caption)
CAPTIONS = [
    ("Contact jane.doe@example.com or call +1 650-253-0000 today", ["jane.doe@example.com", "650-253-0000"],
     ["EMAIL", "PHONE"], "Contact <EMAIL> or call <PHONE> today"),
    ("Our shop: 221 Baker Street, London", ["221 Baker Street"], ["ADDRESS"], "Our shop: <ADDRESS>, London"),
    ("write to P.O. Box 42, Springfield", ["Box 42"], ["ADDRESS"], "write to <ADDRESS>, Springfield"),
    ("paid with 4111 1111 1111 1111 yesterday", ["4111 1111 1111 1111"], ["CREDIT_CARD"],
     "paid with <CREDIT_CARD> yesterday"),
    ("my ssn is 123-45-6789", ["123-45-6789"], ["SSN"], "my ssn is <SSN>"),
    ("IBAN GB82 WEST 1234 5698 7654 32 for the gift", ["GB82 WEST"], ["IBAN"], "IBAN <IBAN> for the gift"),
    ("server at 192.168.1.20 is down", ["192.168.1.20"], ["IP_ADDRESS"], "server at <IP_ADDRESS> is down"),
    ("Anruf unter 030 901820", ["901820"], [], "Anruf unter 030 901820"),  # Berlin, but the regions are US only
    ("rufen Sie +49 30 901820 an", ["+49 30 901820"], ["PHONE"], "rufen Sie <PHONE> an"),  # a +code is read anywhere
]
CLEAN = [
    "three cats sleeping on the road",  # a number and a street word, not an address
    "version 1.2.3.4.5 released",  # not an IP address
    "order 4111 1111 1111 1112 shipped",  # fails Luhn: not a card
    "code GB00 WEST 1234 5698 7654 32",  # fails mod 97: not an IBAN
    "call 555-0100 for the show",  # a fictional number: libphonenumber does not take it as valid
    "ssn 000-12-3456 is never issued",
    None,
]


def stage_for(**config) -> Pii:
    stage = Pii(PiiConfig(**config))
    stage.setup()
    return stage


def batch(texts: list) -> pa.Table:
    return pa.table({"uid": [f"{i:032x}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})


def test_redact_replaces_each_find_with_its_tag():
    texts = [c for c, *_ in CAPTIONS] + CLEAN
    verdict = stage_for(mode="redact").process(batch(texts))
    assert all(r is None for r in verdict.reasons)  # redacting keeps every row
    assert verdict.table.column("text").to_pylist() == [r for *_, r in CAPTIONS] + CLEAN
    assert verdict.table.column("pii_types").to_pylist() == [t for _, _, t, _ in CAPTIONS] + [[]] * len(CLEAN)


def test_reject_names_the_types_never_the_text():
    texts = [c for c, *_ in CAPTIONS] + CLEAN
    kept, ledger = stage_for(mode="reject").process(batch(texts)).split("pii")
    expected = [(f"{i:032x}", ",".join(t)) for i, (_, _, t, _) in enumerate(CAPTIONS) if t]
    assert list(zip(ledger.column("uid").to_pylist(), ledger.column("value").to_pylist())) == expected
    assert set(ledger.column("reason").to_pylist()) == {"pii"}
    assert kept.num_rows + ledger.num_rows == len(texts)
    assert kept.column("text").to_pylist() == ["Anruf unter 030 901820"] + CLEAN  # reject mode does not rewrite


def test_columns_mode_only_records():
    texts = [c for c, *_ in CAPTIONS]
    verdict = stage_for(mode="columns", types=["EMAIL", "SSN"]).process(batch(texts))
    assert verdict.table.column("text").to_pylist() == texts
    assert verdict.table.column("pii_types").to_pylist()[:5] == [["EMAIL"], [], [], [], ["SSN"]]


def test_regions_read_national_formats():
    verdict = stage_for(phone_regions=["US", "DE"]).process(batch(["Anruf unter 030 901820"]))
    assert verdict.table.column("text").to_pylist() == ["Anruf unter <PHONE>"]
    with pytest.raises(ValueError, match="XX"):
        stage_for(phone_regions=["XX"])


def test_checksums():
    assert luhn("4111 1111 1111 1111") and not luhn("4111 1111 1111 1112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB00 WEST 1234 5698 7654 32")


def test_a_run_ledger_holds_no_caption_text(tmp_path, pool_table):
    """A whole run in reject mode: the ledger file has the uid, stage, reason and types, and no
    piece of any caption's PII; the rest of the pool is kept."""
    images = pool_table.column("image").to_pylist()[:len(CAPTIONS)]
    rows = pa.table({"uid": [f"{i:032x}" for i in range(len(CAPTIONS))], "text": [c for c, *_ in CAPTIONS],
                     "image": pa.array(images, pa.binary())})
    pq.write_table(rows, tmp_path / "input.parquet")
    pipeline = parse_pipeline({"name": "pii", "stages": [{"stage": "pii", "mode": "reject"}]}, "<pii>")
    stats = run_pipeline(pipeline, LocalEngine(workers=1, progress=False), [str(tmp_path / "input.parquet")],
                         tmp_path / "out")
    ledger = pq.read_table(tmp_path / "out" / "rejected.parquet")
    assert stats["rejected"] == ledger.num_rows == sum(1 for _, _, t, _ in CAPTIONS if t)
    dumped = str(ledger.to_pylist())
    for caption, secrets, _, _ in CAPTIONS:
        for secret in secrets:
            assert secret not in dumped
        assert caption not in dumped


def test_candidate_search_loses_nothing(pool_table):
    """RE2 picks the captions the Python checks see: on pool captions, the test's captions and their
    variants with Unicode spaces, digits and letters, the answer is that of checking every caption
    for every type."""
    base = [c for c, *_ in CAPTIONS] + [c for c in CLEAN if c] + pool_table.column("text").to_pylist()
    variants = [v for c in base[:len(CAPTIONS) + len(CLEAN) - 1]
                for v in (c.replace(" ", "\u00a0"), c.replace("1", "\u0661"), c + " café", "12B " + c)]
    texts = base + variants + ["at 12B Baker Street", "221\u2009Baker Street", "jane@example.com\u3000x"]
    stage = stage_for(mode="redact")
    verdict = stage.process(batch(texts))
    everything = [sorted({kind for *_, kind in stage._spans(t, list(stage.config.types))}) for t in texts]
    assert verdict.table.column("pii_types").to_pylist() == everything
    assert sum(map(bool, everything)) > len(CAPTIONS)  # the variants and the pool's emails are found too
