"""Block-by-block builds (mvr/streaming.py): the .npy appender, the same index whatever the block
size, the same vectors and codes as the all-at-once path, and bad input."""

import numpy as np
import pytest

from mvr import ConfigError, CorpusError, IndexConfig
from mvr.build import build_blocks
from mvr.storage import ArrayWriter
from mvr.storage.residual import ResidualStore
from mvr.streaming import Block
from mvr.vectors import compact_vectors
from conftest import segment_path

ENCODER = {"name": "synthetic", "source": "tests", "weights_sha256": "0" * 64, "kind": "plain", "dim": 24, "query_maxlen": 32, "doc_maxlen": 64}


def corpus(n_docs: int = 120, dim: int = 24, seed: int = 0):
    """Unit vectors grouped around a few topics, 3-30 per document."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((12, dim)).astype(np.float32)
    lengths = rng.integers(3, 31, n_docs)
    vectors = topics[rng.integers(12, size=int(lengths.sum()))] + 0.4 * rng.standard_normal((int(lengths.sum()), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return vectors.astype(np.float32), offsets


def blocks_of(vectors, offsets, size: int, ids=None):
    n = len(offsets) - 1
    ids = ids or [f"doc{d}" for d in range(n)]
    for start in range(0, n, size):
        stop = min(n, start + size)
        yield Block(ids[start:stop], vectors[offsets[start] : offsets[stop]], offsets[start : stop + 1] - offsets[start], texts=[f"text {i}" for i in ids[start:stop]])


def build(tmp_path, name, vectors, offsets, size, config, sample=None):
    sample = sample or next(blocks_of(vectors, offsets, len(offsets) - 1))
    return build_blocks(blocks_of(vectors, offsets, size), tmp_path / name, sample=sample, model_dim=vectors.shape[1], encoder=ENCODER, config=config, n_docs=len(offsets) - 1)


SMALL = IndexConfig(fde=None, sparse=(), cluster_ratio=0.5, cluster_keep=(), codec="residual", codec_bits=2)


def test_array_writer_appends_rows_numpy_reads_back(tmp_path):
    rows = np.arange(5 * 6, dtype=np.uint16).reshape(5, 6)
    writer = ArrayWriter(tmp_path / "a.npy", np.uint16, (6,))
    writer.add(rows)
    writer.add(rows[:2])
    with pytest.raises(ValueError, match="expected"):
        writer.add(np.zeros((1, 5), np.uint16))
    writer.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.concatenate([rows, rows[:2]]))
    assert np.load(tmp_path / "a.npy", mmap_mode="r").shape == (7, 6)
    empty = ArrayWriter(tmp_path / "b.npy", np.float32)
    empty.close()
    assert np.load(tmp_path / "b.npy").shape == (0,)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_array_writer_appends_a_raw_file_between_rows(tmp_path, monkeypatch, kernel_copy):
    """A build's spool goes into vectors.npy by the kernel's copy_file_range where it can, else
    (another system, a file system that cannot) through Python: the same file either way."""
    import errno
    import os

    if not kernel_copy:
        def refused(*args, **kwargs):
            raise OSError(errno.EXDEV, "not across these file systems")

        monkeypatch.setattr(os, "copy_file_range", refused)
    rows = np.random.default_rng(0).integers(0, 65535, size=(3000, 384), dtype=np.uint16)
    (tmp_path / "spool.raw").write_bytes(rows.tobytes() + b"\x01\x02")  # more than the rows asked for
    writer = ArrayWriter(tmp_path / "a.npy", np.uint16, (384,))
    writer.add(rows[:5])
    writer.add_file(tmp_path / "spool.raw", 2999)
    writer.add(rows[5:7])
    writer.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.concatenate([rows[:5], rows[:2999], rows[5:7]]))
    with pytest.raises(ValueError, match="spool.raw holds fewer than 3001 rows"):
        ArrayWriter(tmp_path / "b.npy", np.uint16, (384,)).add_file(tmp_path / "spool.raw", 3001)


def test_block_size_does_not_change_the_index(tmp_path):
    vectors, offsets = corpus()
    folders = [segment_path(build(tmp_path, f"b{size}", vectors, offsets, size, SMALL)) for size in (1, 7, 1000)]
    names = sorted(p.name for p in folders[0].iterdir() if p.suffix in (".npy", ".bin"))
    assert "codes.npy" in names and "centroid_ids.npy" in names
    for folder in folders[1:]:
        for name in names:
            assert (folders[0] / name).read_bytes() == (folder / name).read_bytes(), name


def test_float16_vectors_are_stored_as_given(tmp_path):
    vectors, offsets = corpus(40)
    index = build(tmp_path, "f16", vectors, offsets, 9, IndexConfig(fde=None, sparse=()))
    assert np.array_equal(np.load(segment_path(index) / "vectors.npy"), vectors.astype(np.float16))
    assert index.doc_ids.tolist() == [f"doc{d}" for d in range(40)]
    assert index.document(3).text == "text doc3"


def test_clusters_and_codes_match_the_all_at_once_path(tmp_path):
    vectors, offsets = corpus()
    index = build(tmp_path, "small", vectors, offsets, 16, SMALL)
    folder = segment_path(index)
    whole = compact_vectors(vectors, offsets, SMALL)
    assert np.array_equal(np.load(folder / "doc_offsets.npy"), whole.offsets)
    reference = tmp_path / "reference"
    reference.mkdir()
    ResidualStore.write(reference, whole.vectors, SMALL)  # fitted on the same vectors: the same codebook and codes
    for name in ("codes.npy", "centroid_ids.npy", "centroids.npy", "bucket_values.npy"):
        assert np.array_equal(np.load(folder / name), np.load(reference / name)), name
    # and exact MaxSim reads them: a stored document's own vectors score it highest
    query = vectors[offsets[5] : offsets[6]]
    hits = index.search_encoded(__import__("mvr").TokenVectors(query, np.array([0, len(query)])), 3, first_stage="exhaustive")
    assert hits.indices[0][0] == 5


def test_bad_blocks_get_one_line_errors(tmp_path):
    vectors, offsets = corpus(10)
    ids = ["a", "b", "c", "a", "e", "f", "g", "h", "i", "j"]
    sample = next(blocks_of(vectors, offsets, 10))
    with pytest.raises(CorpusError, match="duplicate document id 'a'"):
        build_blocks(blocks_of(vectors, offsets, 4, ids), tmp_path / "dup", sample=sample, model_dim=24, encoder=ENCODER, config=SMALL)
    with pytest.raises(CorpusError, match="no documents"):
        build_blocks(iter(()), tmp_path / "none", sample=sample, model_dim=24, encoder=ENCODER, config=SMALL)
    with pytest.raises(ConfigError, match="identity of the 24-dim model.*missing or wrong: name"):
        build_blocks(blocks_of(vectors, offsets, 4), tmp_path / "who", sample=sample, model_dim=24, encoder={"dim": 24}, config=SMALL)
    with pytest.raises(ConfigError, match="it says dim 24"):
        build_blocks(blocks_of(vectors, offsets, 4), tmp_path / "dim", sample=sample, model_dim=32, encoder=ENCODER, config=SMALL)
    with pytest.raises(ConfigError, match="corpus"):
        build_blocks(blocks_of(vectors, offsets, 4), tmp_path / "df", sample=sample, model_dim=24, encoder=ENCODER, config=IndexConfig(fde=None, sparse=(), prune=("df",)))
    assert not any((tmp_path / name).exists() for name in ("dup", "none", "who", "dim", "df"))


def test_blocks_that_do_not_fit_together_are_refused_before_anything_is_published(tmp_path):
    vectors, offsets = corpus(6)
    sample = next(blocks_of(vectors, offsets, 6))
    good = dict(ids=["a", "b"], vectors=vectors[: offsets[2]], offsets=offsets[:3])
    bad = {
        "offsets for 2": dict(good, ids=["a", "b", "c"]),
        "from 0 up": dict(good, offsets=offsets[1:4]),
        "as the offsets": dict(good, vectors=vectors[: offsets[2], :10]),
        "NaN": dict(good, vectors=np.full_like(vectors[: offsets[2]], np.nan)),
        "non-empty strings": dict(good, ids=[1, "1"]),
        "one string per id": dict(good, texts=["only one"]),
    }
    for message, fields in bad.items():
        with pytest.raises(CorpusError, match="ids must|offsets must|vectors must|NaN|texts and titles"):
            build_blocks(iter([Block(**fields)]), tmp_path / "bad", sample=sample, model_dim=24, encoder=ENCODER, config=SMALL)
        assert not (tmp_path / "bad").exists(), message
    with pytest.raises(ValueError, match="do not fit"):
        writer = ArrayWriter(tmp_path / "u16.npy", np.uint16)
        writer.add(np.array([-1.5]))
