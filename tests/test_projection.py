"""Trained projection heads (mvr/vectors/heads.py, mvr/training.py): the numpy head equals the torch
module that trained it, training runs on real tiny indexes, and an index built or derived with a
head stores and searches exactly the head's vectors, queries projected alike."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mvr import ConfigError, Encoder, Index, IndexConfig, QueryError
from mvr.config import FDEConfig
from mvr.training import _module, train_projection
from mvr.vectors.heads import Head

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DOCS, QUERIES, write_beir  # noqa: E402

TEXTS = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
QRELS = {q: rels for q, _, rels in QUERIES}
ASKED = {q: text for q, text, _ in QUERIES}


def _residual(dim_in=32, dim=8, hidden=16, seed=0) -> Head:
    rng = np.random.default_rng(seed)
    weigh = rng.normal(size=dim_in + 1)
    return Head("residual", rng.normal(size=(dim_in, dim)), rng.normal(size=(dim_in, hidden)), rng.normal(size=hidden), rng.normal(size=(hidden, dim)), weigh)


@pytest.fixture(scope="module")
def source(tmp_path_factory, models):
    return Index.build(TEXTS, tmp_path_factory.mktemp("proj") / "plain", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None))


@pytest.fixture(scope="module")
def trained(source):
    return train_projection(source, ASKED, QRELS, kind="residual", dim=8, hidden=16, epochs=3, batch_size=2, negatives=2, mined=5, validation=0.25, query_weights=True)


def test_the_numpy_head_equals_the_torch_module_and_survives_a_save(tmp_path):
    import torch

    head = _residual()
    x = np.random.default_rng(1).normal(size=(5, 32)).astype(np.float32)
    with torch.no_grad():
        expected = _module(head)(torch.from_numpy(x)).numpy()
        expected_queries = _module(head).queries(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(head(x), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(head(x), axis=1), 1.0, rtol=1e-5)
    # query tokens are scaled by their softplus weights, documents are not
    np.testing.assert_allclose(head.queries(x), expected_queries, rtol=1e-4, atol=1e-5)
    weights = np.log1p(np.exp(x @ head.query_weight[:-1] + head.query_weight[-1]))
    np.testing.assert_allclose(np.linalg.norm(head.queries(x), axis=1), weights, rtol=1e-4)
    head.save(tmp_path / "h.npz")
    again = Head.load(tmp_path / "h.npz")
    assert again.kind == "residual" and again.sha256 == head.sha256
    np.testing.assert_array_equal(again(x), head(x))
    np.testing.assert_array_equal(again.queries(x), head.queries(x))


def test_bad_heads_are_refused_with_one_line(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    for path, words in ((tmp_path / "junk.npz", "not a readable projection head"), (tmp_path / "other.npz", "not a projection head"), (tmp_path / "none.npz", "no projection head")):
        with pytest.raises(ConfigError, match=words) as error:
            Head.load(path)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown projection head kind"):
        Head("mlp", np.eye(3))
    with pytest.raises(ConfigError, match="shapes disagree"):
        Head("residual", np.eye(3), np.zeros((3, 2)), np.zeros(2), np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="finite"):
        Head("linear", np.full((3, 2), np.nan))
    with pytest.raises(ConfigError, match="query weights must be 4 numbers"):
        Head("linear", np.eye(3), query_weight=np.zeros(3))


def test_training_keeps_the_best_validation_epoch(source, trained):
    head, report = trained
    assert head.kind == "residual" and head.shape == (32, 8) and head.query_weight is not None and report["query_weights"]
    assert report["train_queries"] == 3 and report["validation_queries"] == 1
    scores = [h["validation_ndcg_at_10"] for h in report["history"]]
    assert len(scores) == 4 and report["validation_ndcg_at_10"]["best"] == max(scores)
    assert all(np.isfinite(h["loss"]) for h in report["history"][1:])
    # a linear head of the model's own width starts as the identity: epoch 0 is the plain model
    _, plain = train_projection(source, ASKED, QRELS, kind="linear", dim=None, epochs=0, validation=0.5)
    assert plain["validation_ndcg_at_10"]["start"] == plain["validation_ndcg_at_10"]["model"]


def test_training_refuses_what_it_cannot_learn_from(source, trained, tmp_path):
    with pytest.raises(ConfigError, match="dim must lie"):
        train_projection(source, ASKED, QRELS, dim=64)
    with pytest.raises(QueryError, match="at least two queries"):
        train_projection(source, ASKED, {"q1": {"nowhere": 1}}, dim=8)
    trained[0].save(tmp_path / "h.npz")
    projected = Index.derive(source, tmp_path / "projected", projection=str(tmp_path / "h.npz"))
    with pytest.raises(ConfigError, match="already projects"):
        train_projection(projected, ASKED, QRELS, dim=8)


def test_built_and_derived_indexes_store_the_heads_vectors(source, trained, tmp_path, models):
    head = dataclasses.replace(trained[0], query_weight=np.random.default_rng(3).normal(size=33))  # weights far from 1
    head.save(tmp_path / "h.npz")
    derived = Index.derive(source, tmp_path / "derived", projection=str(tmp_path / "h.npz"))
    built = Index.build(TEXTS, tmp_path / "built", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, projection=str(tmp_path / "h.npz")))
    for index in (derived, built):
        assert index.dim == 8 and isinstance(index.projection, Head)
        for p in range(len(TEXTS)):
            expected = head(source.document_vectors(p)).astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(index.document_vectors(p), expected)
    # queries go through the same head: MaxSim from the stored vectors equals the search's score
    plain_query = source.encode_queries("which animal purrs?").vectors
    query = built.encode_queries("which animal purrs?").vectors
    np.testing.assert_allclose(query, head.queries(plain_query), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(query, axis=1), 1.0)  # the learned weights apply
    hits = built.search("which animal purrs?", k=3, first_stage="exhaustive")
    for position, score in zip(hits.indices[0], hits.scores[0]):
        vectors = built.document_vectors(position)
        assert score == pytest.approx(float((query @ vectors.T).max(axis=1).sum()), rel=1e-4)
    # added documents go through the head too (a new segment reuses it), and the FDE fits its width
    built.add([("d9", "Owls hunt mice at night.")], show_progress=False)
    position = built.position("d9")
    alone = Index.build([("d9", "Owls hunt mice at night.")], tmp_path / "alone", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, sparse=()))
    np.testing.assert_array_equal(built.document_vectors(position), head(alone.document_vectors(0)).astype(np.float16).astype(np.float32))
    with_fde = Index.derive(source, tmp_path / "fde", projection=str(tmp_path / "h.npz"), fde=FDEConfig(d_proj=8, reps=2))
    assert with_fde.dim == 8 and len(with_fde.search("which animal purrs?", k=3, first_stage="fde")[0]) == 3


def test_heads_that_do_not_fit_are_refused_before_anything_is_written(source, tmp_path, models):
    Head("linear", np.eye(16, 4)).save(tmp_path / "narrow.npz")
    with pytest.raises(ConfigError, match="takes 16-dim vectors, the model makes 32"):
        Index.build(TEXTS, tmp_path / "x", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, sparse=(), projection=str(tmp_path / "narrow.npz")))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="takes 16-dim vectors"):
        Index.derive(source, tmp_path / "y", projection=str(tmp_path / "narrow.npz"))
    assert not (tmp_path / "y").exists()
    with pytest.raises(ConfigError, match="not both"):
        IndexConfig(pca_dim=8, projection=str(tmp_path / "narrow.npz"))


def test_the_cli_trains_a_head_and_indexes_with_it(tmp_path, models, capsys):
    from mvr.cli import main

    data, home = write_beir(tmp_path / "data"), str(tmp_path / "home")
    model = ["--model", str(models["plain"])]
    assert main(["index", str(data / "corpus.jsonl"), "--name", "plain", *model, "--no-fde", "--index-dir", home, "--quiet"]) == 0
    out = tmp_path / "head.npz"
    with open(data / "qrels" / "test.tsv", "a") as handle:  # a judged query whose relevant document the index lacks: left out of training, and said
        handle.write("q9\tnowhere\t1\n")
    with open(data / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q9", "text": "tea"}) + "\n")
    capsys.readouterr()
    assert main(["train-projection", str(data), "--index", "plain", "--split", "test", "--output", str(out), "--dim", "8", "--epochs", "2",
                 "--batch-size", "2", "--index-dir", home, "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    warned = capsys.readouterr().err
    said = [line.removeprefix("mvr: warning: ") for line in warned.splitlines()]
    assert said[0].startswith("training on the test split: nDCG@10 then measured on test is optimistic")  # (this tiny dataset has no other)
    assert "(queries left with none of theirs: 1)" in said[1] and report["warnings"] == said
    assert main(["train-projection", str(data), "--index", "plain", "--split", "test", "--output", str(tmp_path / "start.npz"), "--dim", "8", "--epochs", "0",
                 "--index-dir", home, "--quiet"]) == 0
    assert "no epoch did better: the head written is the one at start" in capsys.readouterr().out  # was "trained 0.87 (epoch 0)"
    assert Head.load(out).shape == (32, 8) and report["dim"] == 8 and report["command"].startswith("mvr train-projection")
    assert main(["index", "--from", "plain", "--name", "narrow", "--projection", str(out), "--no-fde", "--index-dir", home, "--quiet"]) == 0
    assert Index.open("narrow", home=home).dim == 8
    capsys.readouterr()
    assert main(["index", str(data / "corpus.jsonl"), "--name", "bad", *model, "--projection", str(tmp_path / "missing.npz"), "--index-dir", home, "--quiet"]) == 2
    assert "no projection head at" in capsys.readouterr().err
    assert main(["train-projection", str(data), "--index", "plain", "--split", "test", "--output", str(tmp_path / "h.txt"), "--index-dir", home]) == 2


def test_a_projected_index_derives_again_and_refills_with_its_own_head(source, trained, tmp_path, models):
    head = trained[0]
    head.save(tmp_path / "h.npz")
    built = Index.build(TEXTS, tmp_path / "built", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, sparse=(), projection=str(tmp_path / "h.npz")))
    assert built.config.projection == str((tmp_path / "h.npz").resolve()) and built.config.projection_sha256 == head.sha256
    # a derived index keeps the head it was built with (its file travels with the vectors)
    smaller = Index.derive(built, tmp_path / "int8", codec="int8")
    assert smaller.dim == 8 and smaller.projection.sha256 == head.sha256
    np.testing.assert_allclose(smaller.document_vectors(0), built.document_vectors(0), atol=0.02)
    # emptied, then refilled: the recorded head is read again, and a changed file is refused
    built.delete([d for d, *_ in DOCS])
    dataclasses.replace(head, skip=head.skip * 2).save(tmp_path / "h.npz")
    with pytest.raises(ConfigError, match="not the one this index was built with"):
        built.add([("d9", "Owls hunt mice at night.")], show_progress=False)
    head.save(tmp_path / "h.npz")
    built.add([("d9", "Owls hunt mice at night.")], show_progress=False)
    assert built.n_docs == 1 and built.dim == 8


def test_heads_of_another_model_and_bad_training_splits_are_refused(source, trained, tmp_path, models):
    head = trained[0]
    assert head.model_sha256 == source.manifest["encoder"]["weights_sha256"]
    dataclasses.replace(head, model_sha256="0" * 64).save(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="trained for another model"):
        Index.derive(source, tmp_path / "x", projection=str(tmp_path / "other.npz"))
    with pytest.raises(QueryError, match="choose it so that some train and some pick the epoch"):
        train_projection(source, ASKED, QRELS, dim=8, validation=0.9)
    for bad in ({"validation": 0.0}, {"seed": -1}):  # no epoch to pick (NaN scores, and NaN in the JSON report); numpy's seed error
        with pytest.raises(ConfigError, match="validation must lie in \\(0, 1\\)|seed must be an integer >= 0"):
            train_projection(source, ASKED, QRELS, dim=8, epochs=1, **bad)
    # judged documents that were deleted are left out, not a KeyError
    gone = Index.build(TEXTS, tmp_path / "gone", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None))
    gone.delete(["d1"])
    _, report = train_projection(gone, ASKED, QRELS, dim=8, epochs=1, batch_size=2, negatives=1, mined=3, validation=0.34)
    assert report["train_queries"] + report["validation_queries"] == 3  # q1's only relevant document is gone
