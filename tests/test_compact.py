"""Pruning, per-document clustering and the int8 / residual codecs: kernels against NumPy
references, codec error bounds and determinism, and derived indexes end to end."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import DOCS, maxsim_reference, segment_path
from mvr import ConfigError, Encoder, EncoderMismatchError, Index, IndexConfig
from mvr._kernels.cluster import cluster_documents
from mvr._kernels.codecs import INT8, RESIDUAL, CodedVectors, maxsim_codes_candidates
from mvr.storage.residual import ResidualCodec
from mvr.storage.tokens import encode_int8
from mvr.vectors.cluster import cluster_counts, interleave_documents, ward_documents
from mvr.vectors.prune import idf_weights, prune_mask
from mvr.errors import IndexFormatError


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- clustering --------------------------------------------------------------------------------
def _kmeans_reference(doc, c, iters):
    n = len(doc)
    centroids = doc[[int((i + 0.5) * n / c) for i in range(c)]].copy()
    if c == n:
        return centroids
    assign = np.full(n, -1)
    for _ in range(iters):
        new = np.argmax(doc @ centroids.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(c):
            members = doc[assign == j]
            if len(members):
                total = members.sum(axis=0)
                centroids[j] = total / np.linalg.norm(total)
    return centroids


def test_clustering_matches_a_numpy_transcription():
    rng = np.random.default_rng(0)
    lengths = np.array([7, 1, 0, 12, 30])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    vectors = _unit(rng, offsets[-1], 16)
    counts = cluster_counts(lengths, IndexConfig(cluster_ratio=0.3))
    assert counts.tolist() == [3, 1, 0, 4, 9]
    out, out_offsets = cluster_documents(vectors, offsets, counts, iters=10)
    assert out_offsets.tolist() == np.concatenate([[0], np.cumsum(counts)]).tolist()
    for d in range(len(lengths)):
        if lengths[d]:
            expected = _kmeans_reference(vectors[offsets[d] : offsets[d + 1]], counts[d], 10)
            np.testing.assert_allclose(out[out_offsets[d] : out_offsets[d + 1]], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    again, _ = cluster_documents(vectors, offsets, counts, iters=10)
    np.testing.assert_array_equal(out, again)  # deterministic
    same, _ = cluster_documents(vectors, offsets, lengths, iters=10)
    np.testing.assert_array_equal(same, vectors)  # as many clusters as tokens: the tokens
    assert cluster_counts(lengths, IndexConfig(cluster_count=5)).tolist() == [5, 1, 0, 5, 5]
    assert cluster_counts(lengths, IndexConfig(cluster_count=10**20)).tolist() == lengths.tolist()  # every token: a count past int64 was an OverflowError
    with pytest.raises(ValueError, match="between 1 and its length"):
        cluster_documents(vectors, offsets, lengths + 1)


def test_ward_pools_obvious_groups_and_keeps_short_documents():
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 2, 16)
    doc = np.concatenate([a + 0.01 * rng.standard_normal((5, 16)), b + 0.01 * rng.standard_normal((3, 16))]).astype(np.float32)
    doc /= np.linalg.norm(doc, axis=1, keepdims=True)
    short = _unit(rng, 2, 16)
    vectors = np.concatenate([doc, short])
    out, offsets = ward_documents(vectors, np.array([0, 8, 10]), np.array([2, 2]))
    assert offsets.tolist() == [0, 2, 4]
    pooled = out[:2]
    assert sorted(np.argmax(pooled @ np.stack([a, b]).T, axis=1).tolist()) == [0, 1]  # one centroid per group
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[2:], short)  # as many clusters as tokens: the tokens
    np.testing.assert_array_equal(ward_documents(vectors, np.array([0, 8, 10]), np.array([2, 2]))[0], out)


def test_idf_weighted_ward_merges_rare_tokens_last():
    # a and c nearly coincide, b stands apart: plain Ward pools a with c. Weighted by idf, the
    # rare c (id 9, in 1 of 4 documents) is pushed away from the common a (id 7, in 3) and b
    # (id 8, in 2), and it is a with b that merge.
    a, b, c = [1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.99, 0.0, 0.141]
    vectors = np.array([a, b, c, a, b, a], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([7, 8, 9, 7, 8, 7])
    offsets = np.array([0, 3, 4, 5, 6])
    weights = idf_weights(ids, offsets, 1.0)
    np.testing.assert_allclose(weights[:3], np.log(5 / np.array([3.5, 2.5, 1.5])), rtol=1e-6)
    counts = np.array([2, 1, 1, 1])
    plain, _ = ward_documents(vectors, offsets, counts)
    weighted, _ = ward_documents(vectors, offsets, counts, weights)
    kept_c = lambda out: bool(np.any(np.all(np.isclose(out[:2], vectors[2], atol=1e-6), axis=1)))
    assert not kept_c(plain) and kept_c(weighted)
    np.testing.assert_allclose(idf_weights(ids, offsets, 0.0), 1.0)


def test_interleave_documents_puts_each_documents_rows_together():
    a = np.arange(3, dtype=np.float32)[:, None]  # doc 0: [0, 1], doc 1: [], doc 2: [2]
    b = 10 + np.arange(4, dtype=np.float32)[:, None]  # doc 0: [10], doc 1: [11, 12], doc 2: [13]
    out, offsets = interleave_documents(a, np.array([0, 2, 2, 3]), b, np.array([0, 1, 3, 4]))
    assert offsets.tolist() == [0, 3, 5, 7]
    assert out[:, 0].tolist() == [0, 1, 10, 11, 12, 2, 13]


# -- pruning -----------------------------------------------------------------------------------
def test_pruning_rules_by_hand():
    classes = {"special": np.array([101, 102]), "punctuation": np.array([1010, 1012]), "stopwords": np.array([1996])}
    ids = np.array([101, 7592, 1010, 1996, 102, 101, 1012, 102, 101, 1996, 4937, 102], dtype=np.int32)
    offsets = np.array([0, 5, 8, 12])
    keep = prune_mask(ids, offsets, ("special",), classes, 0.5)
    assert keep.tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
    keep = prune_mask(ids, offsets, ("special", "punctuation"), classes, 0.5)
    assert keep[5:8].tolist() == [1, 1, 1]  # the middle document would lose everything: it keeps all
    assert keep[:5].tolist() == [0, 1, 0, 1, 0]
    # df: 101 and 102 are in all 3 documents, 1996 in 2 of 3 (> 0.5), the rest in one.
    keep = prune_mask(ids, offsets, ("df",), classes, 0.5)
    assert keep.tolist() == [0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]


# -- codecs ------------------------------------------------------------------------------------
@settings(deadline=None)  # the first example compiles the decode kernel
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12), elements=st.floats(-4, 4, width=32)))
def test_int8_round_trip_is_within_half_a_step(x):
    codes, scales = encode_int8(x)
    decoded = CodedVectors(INT8, x.shape[1], codes, scales=scales).decode()
    assert np.all(np.abs(decoded - x) <= scales[:, None] / 2 + 1e-6 * np.abs(x).max(initial=1))
    again = encode_int8(x)
    np.testing.assert_array_equal(again[0], codes)


@settings(deadline=None, max_examples=60)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_float16_through_torch_is_numpys_rounding_bit_for_bit(x):
    """A build spools and stores float16 through PyTorch's conversion (4x NumPy's): the same bits
    as ``astype`` (ties to even, subnormals, overflow to inf, quiet NaNs: the floats a build can
    meet; a signalling NaN comes back quiet, and a build refuses non-finite vectors), projected or not."""
    import warnings

    from mvr.vectors.pca import half, project, stored

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow in the cast, the reference here
        expected = x.astype(np.float16)
    assert half(x).dtype == np.float16 and half(x).view(np.uint16).tolist() == expected.view(np.uint16).tolist()
    assert stored(x, None).view(np.uint16).tolist() == expected.view(np.uint16).tolist()
    frozen = expected.copy()
    frozen.setflags(write=False)  # a read-only array (mapped from a file) is read, not written, and draws no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert half(frozen) is frozen and stored(frozen, None) is frozen
        if x.shape[1] >= 2 and np.isfinite(x).all() and np.abs(x).max(initial=0) < 6e4:  # the definition, projected: NumPy's casts
            projection = np.eye(x.shape[1], 2, dtype=np.float32)
            reference = project(expected.astype(np.float32), projection).astype(np.float16)
            assert stored(x, projection).view(np.uint16).tolist() == reference.view(np.uint16).tolist()


def _residual_reference(codec, codes, ids):
    dim = codec.values.shape[0]
    bits = codec.bits
    out = np.empty((len(codes), dim), dtype=np.float32)
    for i in range(len(codes)):
        for k in range(dim):
            b = (int(codes[i, (k * bits) // 8]) >> ((k * bits) % 8)) & ((1 << bits) - 1)
            out[i, k] = codec.centroids[ids[i], k].astype(np.float32) + codec.values[k, b]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_residual_codec_decodes_like_its_definition_and_is_deterministic(bits):
    rng = np.random.default_rng(bits)
    x = _unit(rng, 600, 16)
    codec = ResidualCodec.fit(x, 16, bits, seed=3)
    codes, ids = codec.encode(x)
    assert codes.shape == (600, 16 * bits // 8) and ids.dtype == np.uint16
    coded = CodedVectors(RESIDUAL, 16, codes, centroid_ids=ids, centroids=codec.centroids, values=codec.values, bits=bits)
    decoded = coded.decode()
    np.testing.assert_allclose(decoded, _residual_reference(codec, codes, ids), atol=1e-5)
    # every residual lands in the bucket its cutoffs name, so it decodes within that bucket's span
    twin = ResidualCodec.fit(x, 16, bits, seed=3)
    np.testing.assert_array_equal(twin.encode(x)[0], codes)
    np.testing.assert_array_equal(twin.centroids, codec.centroids)


def test_more_residual_bits_decode_closer():
    rng = np.random.default_rng(7)
    x = _unit(rng, 2000, 32)
    errors = []
    for bits in (1, 2, 4):
        codec = ResidualCodec.fit(x, 32, bits, seed=0)
        codes, ids = codec.encode(x)
        decoded = CodedVectors(RESIDUAL, 32, codes, centroid_ids=ids, centroids=codec.centroids, values=codec.values, bits=bits).decode()
        errors.append(float(np.mean(np.sum((decoded - x) ** 2, axis=1))))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_codes_kernel_scores_decoded_vectors_exactly(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, size=5)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    x = rng.standard_normal((int(offsets[-1]), 8)).astype(np.float32)
    codes, scales = encode_int8(x)
    coded = CodedVectors(INT8, 8, codes, scales=scales)
    decoded = coded.decode()
    query = rng.standard_normal((3, 8)).astype(np.float32)
    positions = np.arange(5, dtype=np.int64)
    expected = maxsim_reference(query, [decoded[offsets[d] : offsets[d + 1]] for d in range(5)])
    np.testing.assert_allclose(maxsim_codes_candidates(query, coded, offsets, positions, max(lengths.max(), 1)), expected, rtol=1e-4, atol=1e-4)


# -- indexes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory, models):
    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    return Index.build(docs, tmp_path_factory.mktemp("compact") / "src", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=("bm25s",)))


@pytest.mark.parametrize(
    "changes",
    [
        {"prune": ("special", "punctuation")},
        {"cluster_ratio": 0.5},
        {"cluster_ratio": 0.5, "cluster_method": "kmeans"},
        {"codec": "int8"},
        {"prune": ("special", "stopwords", "df"), "cluster_count": 4, "codec": "residual", "codec_bits": 2, "codec_centroids": 8},
    ],
)
def test_derived_index_scores_its_stored_vectors_exactly(source, tmp_path, changes):
    before = {p.name: p.stat().st_mtime_ns for p in source.path.rglob("*")}
    derived = Index.derive(source, tmp_path / "derived", **changes)
    assert {p.name: p.stat().st_mtime_ns for p in source.path.rglob("*")} == before  # the source is only read
    assert derived.n_docs == source.n_docs and derived.doc_ids.tolist() == source.doc_ids.tolist()
    stored = derived.tokens.decode(0, len(derived.tokens))
    docs = [stored[derived.doc_offsets[d] : derived.doc_offsets[d + 1]] for d in range(len(derived))]
    queries = ["purring cats", "lava from volcanoes"]
    exhaustive = derived.search(queries, k=len(derived), first_stage="exhaustive")
    encoded = derived.encode_queries(queries)
    for q in range(2):
        expected = maxsim_reference(encoded[q], docs)
        np.testing.assert_allclose(exhaustive.scores[q], np.sort(expected)[::-1], rtol=1e-4, atol=1e-4)
    hybrid = derived.search(queries, k=3, candidates=len(derived))  # FDE + bm25s over all documents
    np.testing.assert_array_equal(hybrid.indices, exhaustive.indices[:, :3])
    info = derived.info()
    assert info["codec"] == changes.get("codec", "float16")
    assert info["vectors_per_document"]["mean"] <= source.info()["vectors_per_document"]["mean"]
    assert info["bytes_per_token"] < source.info()["bytes_per_token"] or "prune" in changes
    pointer = json.loads((derived.path / "manifest.json").read_text())
    commit = json.loads((derived.path / pointer["commit"]).read_text())  # the index's config is its commit's
    manifest = json.loads((segment_path(derived) / "manifest.json").read_text())  # its one segment's
    for recorded in (commit, manifest):
        assert {k: recorded["config"][k] for k in changes} == {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
    assert manifest["counts"]["source_tokens"] == source.n_tokens


@pytest.mark.parametrize("method", ["ward", "kmeans"])
def test_clustering_keeps_special_tokens_as_they_are(source, tmp_path, method):
    texts = [source.document(i).full_text for i in range(len(source))]
    ids, offsets = source.encoder.document_token_ids(texts)
    special = np.isin(ids, source.encoder.token_classes()["special"])
    full = np.asarray(source.tokens.codes).view(np.float16)
    derived = Index.derive(source, tmp_path / method, cluster_ratio=0.3, cluster_method=method)
    assert derived.config.cluster_keep == ("special",)
    plain = Index.derive(source, tmp_path / f"{method}-plain", cluster_ratio=0.3, cluster_method=method, cluster_keep=())
    stored = np.asarray(derived.tokens.codes).view(np.float16)
    for d in range(len(source)):
        mine = stored[derived.doc_offsets[d] : derived.doc_offsets[d + 1]]
        wanted = full[offsets[d] : offsets[d + 1]][special[offsets[d] : offsets[d + 1]]]
        assert len(wanted) == 2  # [CLS] and [SEP]
        for row in wanted:  # each special token's own vector is stored, not pooled
            assert np.any(np.all(mine == row, axis=1))
        # the same count as without kept tokens (they use up part of it), or one more when the
        # kept tokens alone fill it and the rest still needs a centroid
        n_plain = plain.doc_offsets[d + 1] - plain.doc_offsets[d]
        assert len(mine) in (n_plain, max(n_plain, 2) + 1)


def test_manifests_from_before_cluster_keep_read_as_pooling_every_token(source, tmp_path):
    from mvr.storage.formats import upgrade_config

    assert IndexConfig.from_dict(upgrade_config({"cluster_ratio": 0.25})).cluster_keep == ()
    assert IndexConfig(cluster_ratio=0.25).cluster_keep == ("special",)
    # an unclustered index from before keeps the new default for what is derived from it
    old = tmp_path / "old"
    shutil.copytree(source.path, old)
    pointer = json.loads((old / "manifest.json").read_text())
    for file in (old / pointer["commit"], segment_path(old) / "manifest.json"):  # the commit's config and the segment's
        manifest = json.loads(file.read_text())
        del manifest["config"]["cluster_keep"]
        file.write_text(json.dumps(manifest))
    assert Index.derive(Index.open(old), tmp_path / "derived", cluster_ratio=0.5).config.cluster_keep == ("special",)


def test_compressed_index_built_from_the_corpus_and_the_cli(tmp_path, models, beir, capsys):
    from mvr.cli import main

    config = IndexConfig(cluster_ratio=0.5, codec="residual", codec_bits=4, codec_centroids=8, prune=("special",), sparse=())
    docs = [(i, x) for i, _, x in DOCS]
    built = Index.build(docs, tmp_path / "built", encoder=Encoder(models["plain"]), config=config)
    derived = Index.derive(Index.build(docs, tmp_path / "full", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=())), tmp_path / "derived", **{
        k: getattr(config, k) for k in ("cluster_ratio", "codec", "codec_bits", "codec_centroids", "prune")
    })
    np.testing.assert_array_equal(np.asarray(built.tokens.coded.codes), np.asarray(derived.tokens.coded.codes))  # one path, same bytes
    home = tmp_path / "home"
    assert main(["index", str(beir / "corpus.jsonl"), "--name", "full", "--index-dir", str(home), "--model", str(models["plain"]), "--sparse", "none", "--quiet"]) == 0
    assert "docs/s" in capsys.readouterr().out  # an encoding build says how fast it encoded
    assert main(["index", "--from", "full", "--name", "small", "--preset", "small", "--codec-centroids", "8", "--index-dir", str(home), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "(derived, no re-encoding)" in said and "docs/s" not in said  # not the source's encoding rate as this build's
    small = Index.open("small", home=home)
    assert small.config.codec == "residual" and small.config.codec_centroids == 8 and small.config.cluster_ratio is not None
    assert small.config.cluster_keep == ()  # the preset is the measured setting, which pooled every token
    assert main(["index", "--from", "full", "--name", "tiny", "--preset", "tiny", "--codec-centroids", "8", "--index-dir", str(home), "--quiet"]) == 0
    tiny = Index.open("tiny", home=home)
    assert (tiny.config.cluster_ratio, tiny.config.codec_bits) == (small.config.cluster_ratio, 1) and small.config.codec_bits == 4
    assert tiny.info()["bytes_per_token"] < small.info()["bytes_per_token"] < 768  # 1-bit codes, 4-bit codes, float16
    assert main(["index", "--from", "full", "--name", "fast", "--preset", "fast", "--cluster-keep", "special,punctuation", "--index-dir", str(home), "--quiet"]) == 0
    fast = Index.open("fast", home=home).config
    assert (fast.cluster_ratio, fast.cluster_idf_weight, fast.cluster_keep, fast.codec) == (0.24, 0.5, ("special", "punctuation"), "float16")
    with pytest.raises(ConfigError, match="already pruned"):
        Index.derive(small, tmp_path / "again", codec="int8")
    with pytest.raises(ConfigError, match="encoding the corpus again"):
        Index.derive(Index.open("full", home=home), tmp_path / "other", doc_maxlen=8)
    assert main(["index", str(beir / "corpus.jsonl"), "--from", "full", "--name", "x", "--index-dir", str(home)]) != 0
    assert "not both" in capsys.readouterr().err and not (home / "x").exists()
    # what only encoding sets is refused, not left as the source's in silence
    assert main(["index", "--from", "full", "--name", "x", "--preset", "small", "--pca-dim", "64", "--sparse", "none", "--passage-tokens", "64", "--index-dir", str(home)]) == 2
    assert capsys.readouterr().err.strip() == (
        "mvr: error: --pca-dim, --sparse, --passage-tokens cannot change without encoding the corpus again: a derived index (--from) keeps its source's; index the CORPUS instead.")
    assert not (home / "x").exists()


def test_an_index_refuses_what_another_setting_made(source, tmp_path, models):
    small = Index.derive(source, tmp_path / "small", cluster_ratio=0.5, codec="int8")
    # the source's FDE was built from other vectors: copied in, it is refused as stale
    shutil.rmtree(segment_path(small) / "fde")
    shutil.copytree(segment_path(source) / "fde", segment_path(small) / "fde")
    with pytest.raises(IndexFormatError, match="mvr fde"):
        Index.open(small.path).search("cats", first_stage="fde")
    # queries from another encoder are refused
    other = Encoder(models["plain-other"])
    with pytest.raises(EncoderMismatchError):
        Index.open(small.path, model=other).search("cats", first_stage="exhaustive")
    # a manifest that claims another codec does not open (the segment's: it says how its vectors are stored)
    manifest = json.loads((segment_path(small) / "manifest.json").read_text())
    manifest["config"]["codec"] = "residual"
    (segment_path(small) / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="residual"):
        Index.open(small.path)
    # early exit runs on every codec, and stops no later than plain reranking
    int8 = Index.derive(source, tmp_path / "int8", codec="int8")
    full = int8.search("cats", first_stage="bm25s", k=2)
    early = int8.search("cats", first_stage="bm25s", k=2, early_exit=len(int8))
    np.testing.assert_array_equal(early.indices, full.indices)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prune": ("special", "nouns")}, "unknown pruning rule"),
        ({"prune_max_df": 0.0}, "prune_max_df must lie in"),
        ({"cluster_ratio": 0.5, "cluster_count": 8}, "not both"),
        ({"cluster_ratio": 1.5}, "cluster_ratio must lie in"),
        ({"cluster_count": 0}, "cluster_count must be a positive integer"),
        ({"cluster_method": "spectral"}, "unknown cluster_method"),
        ({"codec": "pq"}, "unknown codec"),
        ({"codec_bits": 3}, "codec_bits must be 1, 2 or 4"),
        ({"codec_centroids": 70000}, "at most 65536"),
        ({"cluster_ratio": 0.5, "cluster_keep": ("nouns",)}, "unknown cluster_keep"),
        ({"cluster_ratio": 0.5, "cluster_idf_weight": -1.0}, "cluster_idf_weight must be"),
        ({"cluster_ratio": 0.5, "cluster_method": "kmeans", "cluster_idf_weight": 1.0}, "Ward clustering only"),
    ],
)
def test_bad_compaction_settings_say_what_is_allowed(settings, message):
    with pytest.raises(ConfigError, match=message):
        IndexConfig(**settings)


@pytest.mark.parametrize(
    "settings, unread",
    [
        ({"codec_bits": 4}, "codec_bits=4 .* only with codec=.residual."),
        ({"codec": "int8", "codec_centroids": 16}, "codec_centroids=16 .* only with codec=.residual."),
        ({"cluster_method": "kmeans"}, "cluster_method='kmeans' .* only with clustering"),
        ({"cluster_keep": ()}, "cluster_keep=.* only with clustering"),
        ({"cluster_ratio": 0.5, "cluster_iters": 3}, "cluster_iters=3 .* only with k-means"),
        ({"prune": ("special",), "prune_max_df": 0.3}, "prune_max_df=0.3 .* only with the df pruning rule"),
        ({"pca_sample": 1000}, "pca_sample=1000 is read only with PCA"),
    ],
)
def test_a_setting_the_build_would_not_read_is_refused(source, tmp_path, settings, unread):
    """Settings that only another setting reads were silently ignored (codec_bits on a float16
    index); a build and a derive now refuse them, before anything is written."""
    with pytest.raises(ConfigError, match=unread):
        Index.build([("a", "cats")], tmp_path / "built", config=IndexConfig(**settings))
    with pytest.raises(ConfigError, match=unread if "pca_sample" not in settings else "pca_sample"):  # a derived index keeps its source's PCA
        Index.derive(source, tmp_path / "derived", **settings)
    assert not any(tmp_path.iterdir())


def test_a_source_holding_a_setting_it_never_read_still_derives(source, tmp_path):
    """An index from before these checks may hold codec_bits=4 beside float16: derives from it were
    refused, naming a setting the caller never gave; the inherited one goes back to its default."""
    import dataclasses

    old = Index.open(shutil.copytree(source.path, tmp_path / "old"), model=source.encoder)
    old._state.config = dataclasses.replace(old.config, codec_bits=4, prune_max_df=0.3)  # as such an index's commit reads
    derived = Index.derive(old, tmp_path / "int8", codec="int8")
    assert (derived.config.codec, derived.config.codec_bits, derived.config.prune_max_df) == ("int8", 2, 0.5)
    assert Index.derive(old, tmp_path / "r1", codec="residual", codec_centroids=8).config.codec_bits == 4  # read now: kept
    with pytest.raises(ConfigError, match="codec_bits=2"):  # given, at its default value, and not read
        Index.derive(old, tmp_path / "f16", codec="int8", codec_bits=2)
    assert not (tmp_path / "f16").exists()


def test_index_command_refuses_flags_it_would_not_read(tmp_path, beir, capsys):
    """Flags given are checked even at their default value; a preset's own settings that the
    flags given leave unread are dropped with it (--preset small --codec float16: its 4 bits)."""
    from mvr.cli import main

    base = ["index", str(beir / "corpus.jsonl"), "--index-dir", str(tmp_path), "--sparse", "none", "--quiet"]
    for flags, said in [(["--codec-bits", "2"], "--codec-bits"), (["--preset", "small", "--codec", "int8", "--codec-bits", "4"], "--codec-bits"),
                        (["--preset", "fast", "--cluster-iters", "10"], "--cluster-iters"), (["--no-fde", "--fde-reps", "4"], "--no-fde leaves out the FDE"),
                        (["--no-fde", "--fde-factory", "Flat"], "--no-fde leaves out the FDE"),
                        (["--ray-workers", "2"], "--ray-workers sets how many Ray workers --ray encodes on")]:
        assert main([*base, "--name", "x", *flags]) == 2
        assert said in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main([*base, "--name", "small16", "--preset", "small", "--codec", "float16", "--doc-maxlen", "16"]) == 0
    assert main([*base, "--name", "plain", "--doc-maxlen", "16"]) == 0  # derived from: a --codec-bits at its default is refused there too
    assert main(["index", "--from", str(tmp_path / "plain"), "--path", str(tmp_path / "d"), "--codec", "int8", "--codec-bits", "2", "--quiet"]) == 2
    assert "--codec-bits" in capsys.readouterr().err and not (tmp_path / "d").exists()
    config = Index.open("small16", home=tmp_path).config
    assert (config.codec, config.codec_bits, config.cluster_ratio) == ("float16", 2, 0.28)


def test_an_index_derived_from_a_merged_one_is_reported(tmp_path, models, capsys):
    """A merged segment's counts carry no skipped_empty_documents: the summary after a derive
    failed with a KeyError, the derived index written."""
    from mvr.cli import main

    docs = [(i, x) for i, _, x in DOCS]
    index = Index.build(docs[:4], tmp_path / "src", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=(), fde=None))
    index.add(docs[4:], merge=False)
    index.optimize()
    assert main(["index", "--from", str(tmp_path / "src"), "--path", str(tmp_path / "int8"), "--codec", "int8", "--quiet"]) == 0
    assert "derived, no re-encoding" in capsys.readouterr().out


def test_index_command_needs_a_corpus_or_a_source(tmp_path, capsys):
    from mvr.cli import main

    assert main(["index", "--name", "x", "--index-dir", str(tmp_path)]) == 2
    assert "give a CORPUS to encode" in capsys.readouterr().err and not (tmp_path / "x").exists()
