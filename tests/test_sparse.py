"""Text first stages (bm25s, SPLADE), hybrids, reranking options and fusion; the comparisons with
Lucene are in test_lucene.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DOCS
from mvr import Encoder, EncoderError, Index, IndexConfig, QueryError
from mvr.fusion import fuse
from mvr.stages.hybrid import union_candidates


@pytest.fixture(scope="module")
def sparse_index(tmp_path_factory, models):
    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    return Index.build(docs, tmp_path_factory.mktemp("sparse") / "idx", encoder=Encoder(models["plain"]))  # FDE and bm25s: the default


def test_rerank_orders_bm25_candidates_by_maxsim(sparse_index):
    query = "capital city"
    reranked = sparse_index.search(query, k=8, first_stage="bm25s", candidates=8)
    candidates = sparse_index.search(query, k=8, first_stage="bm25s", candidates=8, rerank=False)
    positions = candidates.indices[0][candidates.indices[0] >= 0]
    exhaustive = sparse_index.search(query, k=len(sparse_index), first_stage="exhaustive")
    maxsim = dict(zip(exhaustive.indices[0], exhaustive.scores[0]))
    expected = sorted(positions, key=lambda p: (-maxsim[p], p))
    assert reranked.indices[0][: len(expected)].tolist() == expected
    np.testing.assert_allclose(reranked.scores[0][: len(expected)], [maxsim[p] for p in expected], rtol=1e-5)


def test_stopword_only_query_falls_back_to_the_dense_first_stage(sparse_index):
    for stage in ("bm25s",):
        results = sparse_index.search(["the of and", "purring cats"], k=3, first_stage=stage)
        assert results.fallbacks == 1 and len(results[0]) == 3 and len(results[1]) >= 1
        alone = sparse_index.search("the of and", k=3, first_stage=stage, rerank=False)
        assert len(alone[0]) == 0 and alone.fallbacks == 1  # no vectors asked for: nothing to fall back on
        encoded = sparse_index.search_encoded(sparse_index.encode_queries("the of and"), 3, texts=["the of and"], first_stage=stage, rerank=False)
        assert len(encoded[0]) == 0 and encoded.fallbacks == 1  # the same with vectors given (mvr eval's path): it took the FDE's


def test_pruning_keeps_only_candidates_near_the_kth_best(sparse_index):
    full = sparse_index.search("capital of the Roman Empire", k=8, first_stage="bm25s", rerank=False)
    scores = full.scores[0][full.indices[0] >= 0]
    pruned = sparse_index.search("capital of the Roman Empire", k=2, first_stage="bm25s", prune_alpha=0.0)
    kept = set(pruned.indices[0][pruned.indices[0] >= 0].tolist())
    assert kept == set(full.indices[0][: int((scores >= scores[1]).sum())].tolist())


def test_early_exit_with_large_patience_changes_nothing(sparse_index):
    a = sparse_index.search("energy in cells", k=3, first_stage="bm25s", candidates=8)
    b = sparse_index.search("energy in cells", k=3, first_stage="bm25s", candidates=8, early_exit=100)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_fusion_by_hand():
    maxsim = np.array([3.0, 1.0, 2.0])
    first = np.array([10.0, 30.0, 20.0])
    rrf = fuse(maxsim, first, "rrf", 0.8)
    np.testing.assert_allclose(rrf, [1 / 61 + 1 / 63, 1 / 63 + 1 / 61, 1 / 62 + 1 / 62])
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(fuse(maxsim, first, "linear", 0.8), 0.8 * z(maxsim) + 0.2 * z(first))
    np.testing.assert_array_equal(fuse(maxsim, first, None, 0.8), maxsim)


def test_fused_search_runs_and_options_are_validated(sparse_index):
    fused = sparse_index.search("capital of France", k=3, first_stage="bm25s", fusion="linear", fusion_weight=0.5)
    assert fused[0][0].id == "d5"
    with pytest.raises(QueryError, match="^fusion needs rerank=True: it acts on the MaxSim rerank"):
        sparse_index.search("x", first_stage="bm25s", rerank=False, fusion="rrf")
    with pytest.raises(QueryError, match="^early_exit and prune_alpha need rerank=True"):  # prune_alpha was taken and never read
        sparse_index.search("x", first_stage="bm25s", rerank=False, prune_alpha=0.5, early_exit=3)
    with pytest.raises(QueryError, match="prune_alpha"):
        sparse_index.search("x", first_stage="bm25s", prune_alpha=2.0)
    with pytest.raises(QueryError, match="unknown search option"):
        sparse_index.search("x", first_stage="bm25s", bogus=1)
    with pytest.raises(QueryError, match="not to 'exhaustive'"):
        sparse_index.search("x", first_stage="exhaustive", fusion="rrf")


def test_hybrid_first_stage_reranks_the_union_of_fde_and_bm25s(sparse_index):
    assert sparse_index.default_stage == "fde+bm25s"
    query = "capital city of the empire"
    dense = sparse_index.search(query, k=6, first_stage="fde", candidates=6, rerank=False).indices[0]
    sparse = sparse_index.search(query, k=6, first_stage="bm25s", candidates=6, rerank=False).indices[0]
    pool = sparse_index.search(query, k=6, first_stage="fde+bm25s", candidates=6, dense_share=0.5, rerank=False).indices[0]
    expected = list(dict.fromkeys([*dense[:3], *sparse[sparse >= 0], *dense[3:]]))[:6]
    assert pool.tolist() == expected
    assert set(sparse[:2]) - set(dense[:3]) <= set(pool.tolist())  # the sparse stage did add its own documents
    reranked = sparse_index.search(query, k=6, candidates=6, dense_share=0.5)  # the default stage
    exhaustive = sparse_index.search(query, k=len(sparse_index), first_stage="exhaustive")
    maxsim = dict(zip(exhaustive.indices[0], exhaustive.scores[0]))
    assert reranked.indices[0].tolist() == sorted(expected, key=lambda p: (-maxsim[p], p))
    with pytest.raises(QueryError, match="hybrid first stage"):
        sparse_index.search(query, first_stage="fde+bm25s", fusion="rrf")
    with pytest.raises(QueryError, match="dense_share"):
        sparse_index.search(query, first_stage="fde+bm25s", dense_share=1.5)


@settings(deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=20, unique=True),
    st.lists(st.integers(0, 30), max_size=20, unique=True),
    st.integers(0, 20),
    st.integers(1, 25),
)
def test_union_candidates_properties(dense, sparse, n_dense, n_candidates):
    positions, scores = union_candidates(np.array(dense, dtype=np.int64), np.array(sparse, dtype=np.int64), n_dense, n_candidates)
    union = set(dense) | set(sparse)
    assert len(positions) == min(n_candidates, len(union)) == len(set(positions.tolist()))
    assert set(positions.tolist()) <= union
    head = dense[: min(n_dense, n_candidates)]
    assert positions[: len(head)].tolist() == head  # the dense share comes first, in its order
    assert np.all(np.diff(scores) < 0)


def test_index_without_sparse_stages(tmp_path, models):
    index = Index.build([("a", "cats purr"), ("b", "dogs bark")], tmp_path / "x", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=(), fde=None))
    with pytest.raises(QueryError, match="no bm25 first stage.*mvr sparse"):
        index.search("cats", first_stage="bm25")
    index.build_sparse(["bm25s"])
    assert index.search("cats", k=1, first_stage="bm25s")[0][0].id == "a"


def test_no_jvm_unless_bm25_is_used(sparse_index):
    code = (
        "import sys, time, mvr; t = time.perf_counter(); index = mvr.open(sys.argv[1]); "
        "index.search('cats', k=1, first_stage='fde'); index.search('cats', k=1, first_stage='bm25s'); index.search('cats', k=1); "
        "print('jnius' in sys.modules, 'pyserini' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(sparse_index.path)], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _tiny_masked_lm(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from conftest import TINY, _tokenizer_files

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    BertForMaskedLM(BertConfig(vocab_size=30522, **TINY)).save_pretrained(folder)
    _tokenizer_files(folder)
    return folder


def test_splade_weights_are_max_pooled_log_relu_logits(tmp_path):
    import torch

    from mvr.stages.splade import SpladeEncoder

    encoder = SpladeEncoder(_tiny_masked_lm(tmp_path / "mlm"))
    (terms, weights), (short_terms, _) = encoder.encode(["cats purr loudly at night", "dogs"], maxlen=16)
    inputs = encoder.tokenizer(["cats purr loudly at night"], return_tensors="pt")
    with torch.inference_mode():
        expected = torch.log1p(torch.relu(encoder.model(**inputs).logits[0])).max(dim=0).values.numpy()
    nonzero = np.nonzero(expected)[0]
    np.testing.assert_array_equal(np.sort(terms), nonzero)
    np.testing.assert_allclose(weights[np.argsort(terms)], expected[nonzero], rtol=1e-5, atol=1e-6)
    assert len(short_terms) > 0


def test_a_folder_that_is_no_whole_masked_lm_is_refused(tmp_path, models):
    """A sentence encoder was taken for SPLADE (transformers made its vocabulary head up at random:
    scores of nothing); a damaged weight file was a traceback."""
    import shutil

    from mvr.stages.splade import SpladeEncoder

    with pytest.raises(EncoderError, match=r"holds no whole masked-LM \(its weights lack 'cls\.predictions\..*a SPLADE model is a masked LM"):
        SpladeEncoder(models["plain"])
    model = shutil.copytree(_tiny_masked_lm(tmp_path / "mlm"), tmp_path / "cut")
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(EncoderError, match="could not load a masked-LM from") as raised:
        SpladeEncoder(model)
    assert "\n" not in str(raised.value)


def test_splade_first_stage_end_to_end(tmp_path, models):
    model = _tiny_masked_lm(tmp_path / "mlm")
    docs = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
    index = Index.build(docs, tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=(), fde=None, splade_model=str(model)))
    alone = index.search(["purring cats", "volcano lava"], k=len(DOCS), first_stage="splade", rerank=False)
    from mvr.stages.splade import SpladeEncoder

    encoder = SpladeEncoder(model)
    doc_vectors = encoder.encode([t for _, t in docs], 256)
    (q_terms, q_weights), _ = encoder.encode(["purring cats", "volcano lava"], 64)
    dense_q = np.zeros(encoder.vocab_size)
    dense_q[q_terms] = q_weights
    brute = np.array([dense_q[t] @ w for t, w in doc_vectors])
    kept = alone.indices[0][alone.indices[0] >= 0]
    assert kept.tolist() == [p for p in np.argsort(-brute, kind="stable") if brute[p] > 0][: len(kept)]
    np.testing.assert_allclose(alone.scores[0][: len(kept)], np.sort(brute)[::-1][: len(kept)], rtol=1e-4)
    assert len(index.search("purring cats", k=3, first_stage="splade", candidates=5)[0]) == 3
    before = index.search("purring cats", k=3, first_stage="splade", rerank=False).doc_ids
    assert list(index.build_sparse(["splade"])) == ["splade"]  # the model the index records (the repair a damaged stage's error asks for)
    assert index.config.splade_model == str(model) and index.search("purring cats", k=3, first_stage="splade", rerank=False).doc_ids == before
    plain = Index.build(docs[:2], tmp_path / "plain", encoder=Encoder(models["plain"]), config=IndexConfig(sparse=(), fde=None))
    with pytest.raises(QueryError, match="needs a masked-LM"):
        plain.build_sparse(["splade"])


def test_bm25s_notes_stay_out_of_a_programs_log(tmp_path, models):
    """bm25s sets its logger to DEBUG on import; with a handler on the root logger (pyserini's
    import adds one, as many programs do) every build printed 'Building index from IDs objects'."""
    script = (
        "import logging, sys; from pathlib import Path; logging.basicConfig(level=logging.WARNING)\n"
        "from mvr import Encoder, Index, IndexConfig\n"
        "index = Index.build([('a', 'green tea'), ('b', 'black coffee')], Path(sys.argv[2]), encoder=Encoder(sys.argv[1]), config=IndexConfig(fde=None, sparse=('bm25s',)))\n"
        "print(index.search('tea', k=1, first_stage='bm25s', rerank=False).doc_ids[0][0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(models["plain"]), str(tmp_path / "idx")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["a"], done.stderr[-2000:]
    assert "bm25s" not in done.stderr, done.stderr[-2000:]
