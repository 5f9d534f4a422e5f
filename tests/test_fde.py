"""MUVERA FDEs: a plain NumPy transcription of the algorithm, hand-made Gray-code and Hamming-fill
cases, the Chamfer approximation on real encoded text, and the faiss first stage end to end."""

import json

import numpy as np
import pytest

from mvr import ConfigError, Index, IndexConfig, QueryError
from mvr.config import FDEConfig
from mvr.stages.fde import FDE
from mvr._kernels.fde import _hamming_to_partition, _partition
from conftest import segment_path


def reference_fde(points, fde: FDE, is_query: bool) -> np.ndarray:
    """Section 3 of the MUVERA paper, written plainly (mirrors the reference implementation)."""
    cfg = fde.config
    k, reps, d_proj = cfg.k_sim, cfg.reps, fde.d_proj
    out = []
    for r in range(reps):
        signs = points @ fde.simhash[r].T > 0  # (n, k)
        parts = []
        for row in signs:
            gray = 0
            for bit in row:
                gray = (gray << 1) + (int(bit) ^ (gray & 1))
            parts.append(gray)
        if cfg.d_proj is None:
            projected = points
        else:
            projected = np.zeros((len(points), d_proj), np.float32)
            for i in range(points.shape[1]):
                projected[:, fde.ams_index[r, i]] += fde.ams_sign[r, i] * points[:, i]
        blocks = np.zeros((2**k, d_proj), np.float64)
        counts = np.zeros(2**k, int)
        for p, vector in zip(parts, projected):
            blocks[p] += vector
            counts[p] += 1
        if not is_query:
            for p in range(2**k):
                if counts[p]:
                    blocks[p] /= counts[p]
                elif cfg.fill_empty and len(points) and k:
                    pattern = np.array([(p ^ (p >> 1)) >> (k - 1 - j) & 1 for j in range(k)], bool)
                    distances = (signs != pattern).sum(axis=1)
                    blocks[p] = projected[int(np.argmin(distances))]
        out.append(blocks.ravel())
    full = np.concatenate(out)
    if cfg.d_final:
        final = np.zeros(cfg.d_final)
        np.add.at(final, fde.cs_index, fde.cs_sign * full)
        return final
    return full


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "config",
    [
        FDEConfig(k_sim=3, d_proj=4, reps=3),
        FDEConfig(k_sim=2, d_proj=None, reps=2, fill_empty=False),
        FDEConfig(k_sim=4, d_proj=5, reps=2, d_final=37, seed=7),
        FDEConfig(k_sim=0, d_proj=3, reps=1),
        FDEConfig(k_sim=3, d_proj=4, reps=3, fill_empty=True),
        FDEConfig(k_sim=4, d_proj=5, reps=2, d_final=37, fill_empty=True),
        FDEConfig(k_sim=2, d_proj=None, reps=2, d_final=11, fill_empty=True),
    ],
)
def test_kernels_equal_the_numpy_transcription(config):
    """Documents of more tokens than partitions (summed, then projected) and of fewer (each
    token projected) alike."""
    rng = np.random.default_rng(0)
    dim = 12
    fde = FDE.draw(config, dim)
    lengths = [5, 1, 0, 9, 3]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    vectors = _unit(rng, int(offsets[-1]), dim).astype(np.float16)
    docs = fde.encode_documents(vectors.view(np.uint16), offsets)
    queries = fde.encode_queries(vectors.astype(np.float32), offsets)
    assert docs.shape == (5, config.out_dim(dim))
    for i in range(5):
        points = vectors[offsets[i] : offsets[i + 1]].astype(np.float32)
        np.testing.assert_allclose(docs[i], reference_fde(points, fde, False), atol=1e-5)
        np.testing.assert_allclose(queries[i], reference_fde(points, fde, True), atol=1e-5)
    assert not docs[2].any() and not queries[2].any()  # an empty document encodes to zeros


def test_gray_code_partitions_by_hand():
    assert _partition(np.array([1.0, 1.0, -1.0]), 3) == 4  # prefix XOR of bits 1,1,0 -> 1,0,0
    assert _partition(np.array([-1.0, -1.0, -1.0]), 3) == 0
    assert _partition(np.array([1.0, -1.0, -1.0]), 3) == 7
    seen = {}
    for code in range(8):
        bits = np.array([1.0 if code >> (2 - j) & 1 else -1.0 for j in range(3)])
        seen[_partition(bits, 3)] = code
    assert sorted(seen) == list(range(8))  # a bijection between sign patterns and partitions
    for p in range(7):  # Gray property: neighbouring partitions differ in exactly one sign
        assert bin(seen[p] ^ seen[p + 1]).count("1") == 1
    for p in range(8):
        bits = np.array([1.0 if seen[p] >> (2 - j) & 1 else -1.0 for j in range(3)])
        assert _hamming_to_partition(bits, p, 3) == 0
        for other in range(8):
            assert _hamming_to_partition(bits, other, 3) == bin(seen[p] ^ seen[other]).count("1")


def test_hamming_fill_by_hand():
    # Hyperplanes = the two coordinate axes, identity projection, one repetition: a point's
    # partition is read off the signs of its first two coordinates.
    config = FDEConfig(k_sim=2, d_proj=None, reps=1, fill_empty=True)
    fde = FDE(config, 3, np.eye(2, 3, dtype=np.float32)[None], np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    points = np.array([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [-0.6, 0.0, 0.8]], np.float32)  # signs (+,+) twice, (-,-)
    codes = points.astype(np.float16).view(np.uint16)
    encoded = fde.encode_documents(codes, np.array([0, 3])).reshape(4, 3)
    p_pp, p_mm = _partition(np.array([1.0, 1.0]), 2), _partition(np.array([-1.0, -1.0]), 2)
    half = points.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(encoded[p_pp], half[:2].mean(axis=0), atol=1e-6)  # centroid
    np.testing.assert_allclose(encoded[p_mm], half[2], atol=1e-6)
    # Partitions (+,-) and (-,+) are empty; each is one bit from both patterns, so the first
    # nearest point (index 0) fills them, as in the reference implementation.
    for p in set(range(4)) - {p_pp, p_mm}:
        np.testing.assert_allclose(encoded[p], half[0], atol=1e-6)
    query = fde.encode_queries(points, np.array([0, 3])).reshape(4, 3)
    np.testing.assert_allclose(query[p_pp], points[:2].sum(axis=0), atol=1e-6)  # queries sum
    assert not query[list(set(range(4)) - {p_pp, p_mm})].any()  # and are never filled


def test_config_is_validated():
    with pytest.raises(ConfigError, match="k_sim"):
        FDEConfig(k_sim=31)
    with pytest.raises(ConfigError, match="reps"):
        FDEConfig(reps=0)
    with pytest.raises(ConfigError, match=r"d_proj=64 \(--fde-d-proj\) exceeds"):
        FDE.draw(FDEConfig(d_proj=64), 32)
    with pytest.raises(ConfigError, match="unknown FDE setting"):
        FDEConfig.from_dict({"k_sim": 3, "bogus": 1})
    assert FDE.draw(FDEConfig(seed=3), 32).simhash.tobytes() == FDE.draw(FDEConfig(seed=3), 32).simhash.tobytes()
    assert FDE.draw(FDEConfig(seed=3), 32).simhash.tobytes() != FDE.draw(FDEConfig(seed=4), 32).simhash.tobytes()


def test_fde_inner_product_tracks_chamfer_on_real_text(default_index):
    """Theorem 2.1: <FDE(q), FDE(d)> approximates Chamfer(q, d) = MaxSim. On real encoded text the
    two must rank document pairs alike."""
    from conftest import maxsim_reference

    index = default_index
    fde = FDE.draw(FDEConfig(), index.dim)
    docs = fde.encode_documents(index.tokens.codes, index.doc_offsets)
    queries = ["which animal purrs?", "capital of France", "plants and sunlight", "energy production in cells", "lava", "antioxidants in tea"]
    doc_vectors = [np.asarray(index.tokens.codes[index.doc_offsets[i] : index.doc_offsets[i + 1]]).view(np.float16).astype(np.float32) for i in range(len(index))]
    approx, exact = [], []
    for text in queries:
        q = index.encode_queries(text)
        approx.append(docs @ fde.encode_queries(q.vectors, q.offsets)[0])
        exact.append(maxsim_reference(q.vectors, doc_vectors))
    approx, exact = np.concatenate(approx), np.concatenate(exact)
    assert np.corrcoef(approx, exact)[0, 1] > 0.9
    # and per query the FDE's best document is the exact best one for most queries
    per_query = [np.argmax(a) == np.argmax(e) for a, e in zip(np.split(approx, len(queries)), np.split(exact, len(queries)))]
    assert sum(per_query) >= len(queries) - 1


# -- the first stage inside an index ------------------------------------------------------------


@pytest.fixture(scope="module")
def fde_index(tmp_path_factory, models):
    from conftest import DOCS
    from mvr import Encoder

    docs = [(i, f"{t} {x}") for i, t, x in DOCS] + [(f"x{i}", f"filler text number {i} about nothing much") for i in range(30)]
    config = IndexConfig(fde=FDEConfig(k_sim=3, d_proj=8, reps=4))
    return Index.build(docs, tmp_path_factory.mktemp("fde") / "idx", encoder=Encoder(models["plain"]), config=config)


def test_all_candidates_reranked_equals_exhaustive(fde_index):
    queries = ["purring cats", "capital city of France", "filler number 7"]
    exhaustive = fde_index.search(queries, k=10, first_stage="exhaustive")
    full = fde_index.search(queries, k=10, first_stage="fde", candidates=len(fde_index))
    np.testing.assert_array_equal(full.indices, exhaustive.indices)
    np.testing.assert_allclose(full.scores, exhaustive.scores, rtol=1e-5)
    few = fde_index.search(queries, k=10, first_stage="fde", candidates=5)
    assert ((few.indices >= 0).sum(axis=1) == 5).all() and set(few.timings) == {"encode", "first_stage", "rerank"}
    assert not fde_index.stage("fde").index.codes.is_owned  # a flat FDE's codes are mapped from its file, not read into memory
    from mvr.stages import QueryBatch

    encoded = fde_index.encode_queries(queries)
    candidate_ids = [found.positions for found in fde_index.stage("fde").search(QueryBatch(queries, encoded.vectors, encoded.offsets), 5)]
    for row, ids in zip(few.indices, candidate_ids):
        assert set(row[row >= 0]) == set(ids)  # exactly the candidates, reranked


def test_rebuilt_fde_replaces_the_old_and_keeps_the_index(fde_index, tmp_path):
    import shutil

    copy = Index.open(shutil.copytree(fde_index.path, tmp_path / "copy"), model=fde_index.encoder)
    before = copy.search("cats", k=3, first_stage="exhaustive").indices
    manifest = copy.build_fde(FDEConfig(k_sim=2, d_proj=None, reps=2, d_final=64, factory="HNSW16"))
    assert manifest["fde_dim"] == 64 and manifest["config"]["factory"] == "HNSW16"
    reopened = Index.open(tmp_path / "copy", model=fde_index.encoder)
    assert reopened.stage("fde").config.d_final == 64 and len(reopened.search("cats", k=3, candidates=20)[0]) == 3
    np.testing.assert_array_equal(reopened.search("cats", k=3, first_stage="exhaustive").indices, before)
    with pytest.raises(ConfigError, match="factory string"):
        reopened.build_fde(FDEConfig(factory="NotAnIndex"))
    assert Index.open(tmp_path / "copy", model=fde_index.encoder).stage("fde").config.d_final == 64  # failed rebuild left it
    with pytest.raises(ConfigError, match=r"faiss could not add .* to 'NSG32': .*graph"):  # a RuntimeError from faiss's add, a traceback
        reopened.build_fde(FDEConfig(k_sim=2, d_proj=None, reps=2, d_final=64, factory="NSG32"))
    from mvr.stages import fde as fde_stage

    with open("/proc/meminfo") as meminfo:  # a flat FDE past the memory free: the out-of-memory killer ended the process (reps 100,000)
        free = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    with pytest.raises(ConfigError, match=r"the FDE would hold .* GiB \(\d+ documents x \d+ dimensions x 4 bytes\), more than the .* of memory free: lower --fde-reps"):
        fde_stage._check_memory(int(free), reopened.n_docs, 10**8)
    fde_stage._check_memory(int(free) // 2, reopened.n_docs, 10**8)  # what fits is built
    assert Index.open(tmp_path / "copy", model=fde_index.encoder).stage("fde").config.d_final == 64
    for folder in (tmp_path / "copy", segment_path(tmp_path / "copy")):  # the stage is swapped in the segment's folder
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_ivf_pq_factory_trains_on_the_documents(fde_index, tmp_path, monkeypatch):
    from mvr import search_presets

    import shutil

    copy = Index.open(shutil.copytree(fde_index.path, tmp_path / "ivf"), model=fde_index.encoder)
    copy.build_fde(FDEConfig(k_sim=3, d_proj=8, reps=4, factory="IVF4,PQ8x4"))
    assert len(copy.search("cats", k=5, candidates=10)[0]) == 5
    # how widely IVF is searched is a search option, not part of the built index
    one, every = (copy.search("cats", k=5, first_stage="fde", candidates=10, nprobe=n) for n in (1, 4))
    assert len(one[0]) == 5 and len(every[0]) == 5
    with pytest.raises(QueryError, match="nprobe must be a positive integer"):
        copy.search("cats", k=5, first_stage="fde", nprobe=0)
    # a probing option that no stage of the search reads is refused, not ignored
    for stage, options, said in [("fde", {"ef_search": 64}, "ef_search is read by an FDE in a faiss HNSW index"), ("bm25s", {"nprobe": 2}, "nprobe is read by an FDE"),
                                 ("fde", {"centroid_probe": 2}, "centroid_probe is read by the centroid first stage, which this search \\(fde\\)")]:
        with pytest.raises(QueryError, match=said):
            copy.search("cats", k=5, first_stage=stage, **options)
    # a segment with fewer documents than the factory trains on (a small add) gets an exact FDE
    # instead, and says so; merges into bigger segments train the configured index again
    copy.build_fde(FDEConfig(k_sim=3, d_proj=8, reps=4, factory="IVF1024,Flat"))
    manifest = json.loads((segment_path(copy) / "fde" / "manifest.json").read_text())
    assert manifest["config"]["factory"] == "IVF1024,Flat" and manifest["factory_used"] == "Flat"
    assert len(copy.search("cats", k=5, first_stage="fde", candidates=10)[0]) == 5
    # an IVF index too small to train is Flat for now: nprobe is still the index's (merges train IVF), not refused
    assert len(copy.search("cats", k=5, first_stage="fde", nprobe=2)[0]) == 5
    copy.build_fde(FDEConfig(k_sim=3, d_proj=8, reps=4))
    for value in (2, 32):  # given at the default value too: still unread
        with pytest.raises(QueryError, match="nprobe is read by an FDE in a faiss IVF index"):
            copy.search("cats", k=5, first_stage="fde", nprobe=value)
    # a preset is checked when saved; one saved before (its nprobe then taken and ignored) does not break the searches it is the default of
    with pytest.raises(QueryError, match="preset 'wide': nprobe is read by an FDE"):
        copy.save_search_preset("wide", {"first_stage": "fde", "nprobe": 64})
    monkeypatch.setattr(search_presets, "check", lambda index, name, options: options)
    copy.save_search_preset("wide", {"first_stage": "fde", "nprobe": 64})
    assert len(copy.search("cats", k=5)[0]) == 5


def test_index_without_fde_and_stale_fde(fde_index, tmp_path, models):
    from mvr import Encoder, IndexFormatError

    plain = Index.build([("a", "cats"), ("b", "dogs")], tmp_path / "nofde", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None))
    assert not plain.has_stage("fde") and plain.search("cats", k=1).timings["first_stage"] == 0.0  # auto = exhaustive
    with pytest.raises(QueryError, match="no fde first stage.*mvr fde"):
        plain.search("cats", first_stage="fde")
    import shutil

    shutil.copytree(segment_path(fde_index) / "fde", segment_path(plain) / "fde")  # an FDE of other vectors
    with pytest.raises(IndexFormatError, match="other token vectors"):
        Index.open(tmp_path / "nofde").search("cats", first_stage="fde")
    pointer = json.loads((fde_index.path / "manifest.json").read_text())
    for file in (fde_index.path / pointer["commit"], segment_path(fde_index) / "manifest.json"):  # the index's config, its segment's
        assert json.loads(file.read_text())["config"]["fde"]["k_sim"] == 3


def test_settings_comparison_report(default_index, beir, tmp_path):
    from mvr.eval.fde_settings import main

    output = tmp_path / "settings.json"
    main([str(beir), "--index", str(default_index.path), "--setting", "k_sim=2,d_proj=8,reps=2,fill_empty=0", "--setting", "k_sim=3,d_proj=none,reps=1", "--counts", "2,8", "--output", str(output)])
    report = json.loads(output.read_text())
    first, second = report["settings"]
    assert first["fde_dim"] == 2 * 4 * 8 and second["fde_dim"] == 8 * 384 and not first["setting"]["fill_empty"]
    assert first["recall_of_exhaustive_top10@8"] == 1.0  # every document is a candidate
    assert first["nDCG@10@8"] == report["exhaustive_nDCG@10"]
    assert "| 2 | 8 | 2 | no |" in output.with_suffix(".md").read_text()


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,Flat,RFlat", "IVF8_HNSW4,Flat", "IDMap,HNSW8", "PCA16,IVF8,Flat", "IVF8,PQ8"])
def test_search_parameters_reach_every_ivf_and_hnsw_part(factory):
    """nprobe / ef_search given per call find what the same settings written into the index find."""
    import faiss

    from mvr.stages.fde import search_parameters

    rng = np.random.default_rng(0)
    base, queries = rng.standard_normal((600, 32)).astype(np.float32), rng.standard_normal((10, 32)).astype(np.float32)
    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add_with_ids(base, np.arange(len(base))) if factory.startswith("IDMap") else index.add(base)
    for nprobe, ef_search in ((1, 4), (3, 20)):
        stored = faiss.clone_index(index)
        space = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            try:
                space.set_index_parameter(stored, name, value)
            except RuntimeError:
                pass
        expected = stored.search(queries, 10)[1]
        np.testing.assert_array_equal(index.search(queries, 10, params=search_parameters(index, nprobe, ef_search))[1], expected)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_the_fde_is_built_a_block_at_a_time_with_the_same_result(fde_index, tmp_path, factory):
    """Blocks bound the build's memory to the index and one block; the index is the same bytes
    whatever the block (IVF trains on every document of a segment this small, as before)."""
    from mvr.stages.fde import build_fde

    segment = fde_index.segments[0]
    config = FDEConfig(k_sim=3, d_proj=8, reps=4, factory=factory)
    built = {}
    for block in (3, 10_000):
        folder = tmp_path / f"{factory}-{block}"
        folder.mkdir()
        manifest = build_fde(folder, segment.tokens.float16_bits(), segment.doc_offsets, segment.dim, config, segment.vectors_sha256, block=block)
        assert manifest["documents"] == len(segment.doc_offsets) - 1 and manifest["factory_used"] == factory
        built[block] = (folder / "fde.faiss").read_bytes()
    assert built[3] == built[10_000]
    if factory == "Flat":  # filled in place: the very index that adding every encoding makes
        import faiss

        from mvr.stages.fde import FDE

        whole = faiss.IndexFlatIP(manifest["fde_dim"])
        whole.add(FDE.draw(config, segment.dim).encode_documents(segment.tokens.float16_bits(), segment.doc_offsets))
        assert faiss.serialize_index(whole).tobytes() == built[3]


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat"])
def test_an_index_under_a_folder_whose_name_is_not_utf8_searches_and_changes(fde_index, tmp_path, factory):
    """mvr writes no index at such a path, but one moved there by hand opened and then failed in
    faiss, which takes paths only as UTF-8 text (a TypeError at the first search, at an add after
    encoding). Its FDE is now read and written through Python: the same results and bytes."""
    import os
    import shutil

    where = tmp_path / os.fsdecode(b"caf\xe9") / "idx"
    shutil.copytree(fde_index.path, where)
    index = Index.open(where, model=fde_index.encoder)
    index.build_fde(FDEConfig(k_sim=3, d_proj=8, reps=4, factory=factory))
    twin = Index.open(shutil.copytree(where, tmp_path / "plain"), model=fde_index.encoder)
    queries = ["purring cats", "capital city of France"]
    assert index.search(queries, k=5, first_stage="fde").doc_ids == twin.search(queries, k=5, first_stage="fde").doc_ids
    for one in (index, twin):
        one.add([{"id": "new", "text": "a volcano of purring cats"}], merge=False)
        one.optimize()
    ours, theirs = (sorted(one.path.glob("segments/*/fde/fde.faiss")) for one in (index, twin))
    assert len(ours) == 1 and ours[0].read_bytes() == theirs[0].read_bytes()
    assert Index.open(where, model=fde_index.encoder).search(queries, k=3, first_stage="fde").doc_ids == twin.search(queries, k=3, first_stage="fde").doc_ids
