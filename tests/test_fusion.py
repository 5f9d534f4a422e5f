"""Weighted fusion (mvr/fusion.py), the pooled stage (stages/pooled.py), search presets saved in
an index (mvr/search_presets.py) and learning their weights (mvr/tuning.py), on real tiny
indexes: every score recomputed here from the stored vectors and texts."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mvr import ConfigError, Encoder, Index, IndexConfig, QueryError
from mvr.config import PRESETS, SEARCH_PRESETS
from mvr.fusion import zscores
from mvr.stages.base import QueryBatch
from mvr.stages.pooled import mean_vectors

sys.path.insert(0, str(Path(__file__).parent))
from conftest import DOCS, QUERIES, write_beir  # noqa: E402

BEST = IndexConfig(**{k: v for k, v in PRESETS["best"].items() if k != "about"})
TEXTS = [(i, f"{t} {x}" if t else x) for i, t, x in DOCS]
ASKED = ["purring cats", "which city is the capital of France?", "lava from a volcano"]


@pytest.fixture(scope="module")
def best(tmp_path_factory, models):
    return Index.build(TEXTS * 1, tmp_path_factory.mktemp("best") / "idx", encoder=Encoder(models["plain"]), config=BEST)


def _pooled_reference(index, position: int) -> np.ndarray:
    mean = index.document_vectors(position).astype(np.float64).mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_mean_vectors_is_the_normalised_mean_of_each_text():
    rng = np.random.default_rng(0)
    vectors, offsets = rng.normal(size=(9, 5)).astype(np.float32), np.array([0, 4, 4, 9])
    out = mean_vectors(vectors, offsets)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        want = vectors[a:b].mean(axis=0) / np.linalg.norm(vectors[a:b].mean(axis=0)) if b > a else np.zeros(5)
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)


def test_the_pooled_stage_holds_each_documents_mean_vector_and_searches_by_cosine(best):
    stage = best.segments[0].stage("pooled")
    for p in range(len(TEXTS)):
        np.testing.assert_allclose(stage.vectors[p], _pooled_reference(best, p), atol=2e-3)  # stored as float16
    encoded = best.encode_queries(ASKED)
    found = best.search_encoded(encoded, len(TEXTS), texts=ASKED, first_stage="pooled", rerank=False, preset="none")
    for q in range(len(ASKED)):
        query = encoded.vectors[encoded.offsets[q] : encoded.offsets[q + 1]].mean(axis=0)
        want = stage.vectors @ (query / np.linalg.norm(query))
        np.testing.assert_array_equal(found.indices[q], np.lexsort((np.arange(len(want)), -want)))
        np.testing.assert_allclose(found.scores[q], np.sort(want)[::-1], rtol=1e-5, atol=1e-6)


def test_weighted_fusion_sums_the_z_scores_of_every_signal_over_the_candidates(best):
    weights = {"maxsim": 0.5, "pooled": 0.2, "bm25s": 0.3}
    encoded = best.encode_queries(ASKED)
    fused = best.search_encoded(encoded, len(TEXTS), texts=ASKED, first_stage="pooled+bm25s", candidates=6, dense_share=0.5, fusion="weighted", weights=weights)
    found = best.search_encoded(encoded, 6, texts=ASKED, first_stage="pooled+bm25s", candidates=6, dense_share=0.5, rerank=False, preset="none")
    segment = best.segments[0]
    for q in range(len(ASKED)):
        rows = found.indices[q][found.indices[q] >= 0]
        one = QueryBatch([ASKED[q]], encoded.vectors[encoded.offsets[q] : encoded.offsets[q + 1]], np.array([0, encoded.offsets[q + 1] - encoded.offsets[q]]))
        maxsim = best.score(one.vectors, rows)
        pooled = segment.stage("pooled").score(one, [rows])[0]
        bm25s = segment.stage("bm25s").score(one, [rows])[0]
        full = segment.stage("bm25s").search(one, len(TEXTS))[0]  # the stage's own scores of the documents it finds
        for p, s in zip(full.positions, full.scores):
            if p in rows:
                assert bm25s[list(rows).index(p)] == pytest.approx(s, rel=1e-6)
        want = 0.5 * zscores(maxsim) + 0.2 * zscores(pooled) + 0.3 * zscores(bm25s)
        order = np.lexsort((rows, -want))
        kept = fused.indices[q] >= 0
        np.testing.assert_array_equal(fused.indices[q][kept], rows[order])
        np.testing.assert_allclose(fused.scores[q][kept], want[order], rtol=1e-5, atol=1e-5)
    # weights near the float limit, in the same ratios, fuse the same (their sum overflowed to infinity, every score 0)
    huge = best.search_encoded(encoded, len(TEXTS), texts=ASKED, first_stage="pooled+bm25s", candidates=6, dense_share=0.5, fusion="weighted",
                               weights={name: w / 0.5 * 1.7e308 for name, w in weights.items()})
    np.testing.assert_array_equal(huge.indices, fused.indices)
    np.testing.assert_allclose(huge.scores, fused.scores, rtol=1e-6)


def test_an_index_built_with_the_best_preset_searches_with_it_by_default(best, tmp_path):
    assert best.search_presets == {"default": "best", "presets": {"best": SEARCH_PRESETS["best"]}}
    assert not best.has_stage("fde") and best.has_stage("pooled") and best.has_stage("bm25s")
    default = best.search(ASKED, k=5)
    named = best.search(ASKED, k=5, preset="best")
    spelled = best.search(ASKED, k=5, preset="none", **SEARCH_PRESETS["best"])
    np.testing.assert_array_equal(default.indices, spelled.indices)
    np.testing.assert_array_equal(named.indices, spelled.indices)
    plain = best.search(ASKED, k=5, first_stage="pooled+bm25s")  # a first stage named: no preset
    np.testing.assert_array_equal(plain.indices, best.search(ASKED, k=5, preset="none", first_stage="pooled+bm25s").indices)
    assert not np.allclose(plain.scores, default.scores)  # MaxSim scores, not fused ones
    exhaustive = best.search(ASKED, k=5, preset="best", first_stage="exhaustive")  # the preset's candidates and fusion do not apply
    np.testing.assert_array_equal(exhaustive.indices, best.search(ASKED, k=5, preset="none", first_stage="exhaustive").indices)
    override = best.search(ASKED, k=5, candidates=3)  # the caller's values over the preset's
    with pytest.raises(QueryError, match=r"The search preset 'best' gave the rest"):
        best.search(ASKED, k=5, fusion="rrf", prune_alpha=0.5)  # an error in what the preset and the caller make together says where it came from
    np.testing.assert_array_equal(override.indices, best.search(ASKED, k=5, preset="none", **{**SEARCH_PRESETS["best"], "candidates": 3}).indices)


def test_saved_presets_are_commits_that_survive_writes_and_reopening(tmp_path, models):
    index = Index.build(TEXTS, tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, pooled=True))
    assert index.search_presets == {"default": None, "presets": {}}
    generation = index.generation
    mine = {"first_stage": "pooled+bm25s", "candidates": 5, "fusion": "weighted", "weights": {"maxsim": 1, "bm25s": 0.5}}
    commit = index.save_search_preset("mine", mine)
    assert commit["generation"] == generation + 1 and commit["operation"] == "search-preset"
    index.add([{"id": "n1", "text": "a kitten purrs"}])
    index.delete(["d2"])
    index.optimize()
    again = Index.open(tmp_path / "idx")
    assert again.search_presets["default"] == "mine"
    assert again.search_presets["presets"]["mine"]["weights"] == {"maxsim": 1.0, "bm25s": 0.5}
    np.testing.assert_array_equal(again.search(ASKED, k=4).indices, again.search(ASKED, k=4, preset="none", **mine).indices)
    every = again.search(ASKED, k=len(again.doc_ids))  # a preset's candidates grow to k, as the default's do; the caller's are kept
    assert (every.indices >= 0).all() and every.indices.shape[1] == len(again.doc_ids) > mine["candidates"]
    assert (again.search(ASKED, k=len(again.doc_ids), candidates=5).indices[:, 5:] == -1).all()
    index.save_search_preset("other", {"first_stage": "bm25s", "candidates": 4}, default=False)
    assert Index.open(tmp_path / "idx").search_presets["default"] == "mine"


def test_options_that_change_scoring_replace_the_presets_fusion_as_a_whole(best):
    stages = {k: SEARCH_PRESETS["best"][k] for k in ("first_stage", "candidates", "dense_share")}
    for given in ({"rerank": False}, {"early_exit": 3}, {"prune_alpha": 0.5, "first_stage": "bm25s"}, {"fusion": None}):
        spelled = {**stages, **given}
        if "+" not in spelled["first_stage"]:  # the preset's dense_share splits its hybrid stage: not one the caller replaced it with
            del spelled["dense_share"]
        want = best.search(ASKED, k=4, preset="none", **spelled)
        np.testing.assert_array_equal(best.search(ASKED, k=4, preset="best", **given).indices, want.indices)
    weights = {"maxsim": 0.2, "bm25s": 0.8}  # new weights alone: still weighted fusion
    np.testing.assert_allclose(best.search(ASKED, k=4, weights=weights).scores, best.search(ASKED, k=4, preset="none", **stages, fusion="weighted", weights=weights).scores)
    with pytest.raises(QueryError, match="hybrid first stage"):
        best.search(ASKED, fusion="rrf")  # rrf reads first-stage scores, which a hybrid does not have


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("x", {"first_stage": "fde"}, "no fde stage"),
        ("x", {"first_stage": "pooled", "fusion": "weighted", "weights": {"maxsim": 1, "splade": 1}}, "no splade stage"),
        ("x", {"fusion": "weighted", "weights": {"maxsim": -1}}, "non-negative"),
        ("x", {"fusion": "weighted", "weights": {"maxsim": 0}}, "at least one"),
        ("x", {"fusion": "weighted"}, "go together"),
        ("x", {"weights": {"maxsim": 1}}, "go together"),
        ("x", {"first_stage": "pooled", "filter": {"year": 1}}, "not another preset, a filter, k or threads"),
        ("none", {"first_stage": "pooled"}, "preset name"),
        ("a b", {"first_stage": "pooled"}, "preset name"),
        ("x", {"first_stage": "pooled", "bogus": 1}, "unknown search option"),
        ("x", {"dense_share": 0.3, "candidates": 300}, "name the stage in the preset"),  # its split would land on whatever the default stage is
        ("x", {"first_stage": "pooled", "dense_share": 0.3}, "dense_share splits the candidates of a hybrid"),
        ("x", {"first_stage": "pooled", "fusion_weight": 0.5}, 'give fusion="linear" with it'),
        ("x", {"group": "passages"}, "applies to an index of passages"),  # saved as the default, every plain search would fail
    ],
)
def test_a_bad_preset_is_refused_and_the_index_keeps_its_commit(best, name, options, message):
    generation = best.generation
    with pytest.raises(QueryError, match=message):
        best.save_search_preset(name, options)
    assert best.generation == generation


def test_searches_naming_a_missing_preset_or_signal_get_one_line_errors(best):
    with pytest.raises(QueryError, match="no search preset 'nope'; its presets: best"):
        best.search("cats", preset="nope")
    with pytest.raises(QueryError, match="no bm25 first stage"):
        best.search("cats", fusion="weighted", weights={"maxsim": 1, "bm25": 1})
    with pytest.raises(QueryError, match="pruning or early exit"):
        best.search("cats", preset="none", fusion="weighted", weights={"maxsim": 1}, early_exit=3)
    with pytest.raises(QueryError, match="need the query texts"):
        best.search_encoded(best.encode_queries(["cats"]), 3, preset="best")


def test_a_search_preset_needs_the_stages_it_reads_at_build_time():
    with pytest.raises(ConfigError, match="pooled"):
        IndexConfig(search_preset="best")
    with pytest.raises(ConfigError, match="bm25s"):
        IndexConfig(search_preset="best", pooled=True, sparse=())
    with pytest.raises(ConfigError, match="unknown search_preset"):
        IndexConfig(search_preset="fastest", pooled=True)


def test_tuning_learns_weights_whose_search_scores_what_the_tuner_measured(tmp_path, models):
    from mvr.eval.beir import evaluate, load_beir
    from mvr.tuning import tune

    data = write_beir(tmp_path / "beir")
    index = Index.build(data / "corpus.jsonl", tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, pooled=True))
    queries, qrels = load_beir(data, "test")
    report = tune(index, queries, qrels, options={"first_stage": "pooled+bm25s", "candidates": 6, "dense_share": 0.5}, step=0.25)
    assert report["signals"] == ["maxsim", "pooled", "bm25s"] and report["queries"] == len(QUERIES)
    assert sum(report["preset"]["weights"].values()) == pytest.approx(1.0)
    assert report["ndcg_at_10"] >= max(report["alone"].values()) - 1e-9  # each signal alone is on the grid
    index.save_search_preset("tuned", report["preset"])
    measured, _ = evaluate(data, index, split="test", show_progress=False)
    assert measured["preset"] == "tuned"
    assert measured["nDCG@10"] == pytest.approx(report["ndcg_at_10"], abs=1e-4)
    with pytest.raises(QueryError, match="step must divide 1"):
        tune(index, queries, qrels, step=0.3)
    with pytest.raises(QueryError, match="no splade stage"):
        tune(index, queries, qrels, signals=["maxsim", "splade"])


def test_the_cli_builds_tunes_saves_and_searches_with_presets(tmp_path, models, capsys):
    from mvr.cli import main

    data = write_beir(tmp_path / "beir")
    home = str(tmp_path / "home")
    assert main(["index", str(data / "corpus.jsonl"), "--name", "b", "--preset", "best", "--model", str(models["plain"]), "--index-dir", home, "--quiet"]) == 0
    assert Index.open("b", home=home).search_presets["default"] == "best"
    capsys.readouterr()
    assert main(["tune", str(data), "--index", "b", "--split", "test", "--step", "0.25", "--save", "t", "--index-dir", home, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "weights maxsim" in out and "saved as search preset 't'" in out and "mvr: warning: tuning on the test split" in err
    assert Index.open("b", home=home).search_presets["default"] == "t"
    assert main(["eval", str(data), "--index", "b", "--index-dir", home, "--quiet"]) == 0  # the preset's weighted fusion said, not only the first stage
    said = capsys.readouterr().out.splitlines()[1]
    assert said.startswith("  the index's search preset 't': ") and "fusion=weighted, weights=" in said
    assert main(["search", "b", "purring cats", "--json", "--no-server", "--index-dir", home, "--quiet"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    expected = Index.open("b", home=home).search("purring cats", k=10)
    assert [h["id"] for h in hits] == [h.id for h in expected[0]]
    assert main(["search", "b", "purring cats", "--preset", "missing", "--no-server", "--index-dir", home, "--quiet"]) == 2
    assert "no search preset 'missing'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "b", "purring cats", "--fusion", "weighted", "--weights", "maxsim:1", "--no-server", "--index-dir", home])
    assert "expected SIGNAL=WEIGHT pairs separated by commas" in capsys.readouterr().err
    assert main(["pooled", "b", "--index-dir", home, "--quiet"]) == 0
    assert "built the pooled stage of b" in capsys.readouterr().out
    assert main(["info", "b", "--index-dir", home]) == 0
    out = capsys.readouterr().out
    assert "default search  search preset 't': first_stage pooled+bm25s" in out and "preset 'best'  first_stage pooled+bm25s" in out


def test_deriving_with_the_best_preset_builds_its_stages_and_saves_its_search(tmp_path, models):
    source = Index.build(TEXTS, tmp_path / "src", encoder=Encoder(models["plain"]))  # default: FDE and bm25s
    derived = Index.derive(source, tmp_path / "best", **{k: v for k, v in PRESETS["best"].items() if k != "about"})
    assert derived.search_presets["default"] == "best" and derived.has_stage("pooled") and not derived.has_stage("fde")
    source.build_stage("pooled")  # the same stage on the source, by `mvr pooled`
    np.testing.assert_array_equal(derived.segments[0].stage("pooled").vectors, source.segments[0].stage("pooled").vectors)
    np.testing.assert_array_equal(derived.search(ASKED, k=4).indices, source.search(ASKED, k=4, **SEARCH_PRESETS["best"]).indices)


def test_an_index_emptied_and_refilled_keeps_the_stages_its_presets_read(tmp_path, models):
    index = Index.build(TEXTS, tmp_path / "idx", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None))  # no pooled in its config
    index.build_stage("pooled")  # mvr pooled
    index.save_search_preset("fused", {"first_stage": "pooled+bm25s", "candidates": 6, "fusion": "weighted", "weights": {"maxsim": 0.6, "pooled": 0.4}})
    index.delete([i for i, _ in TEXTS])
    # emptied, it finds nothing with the options it took before (its default stage was taken for exhaustive, which refused candidates)
    assert index.default_stage == "pooled+bm25s" and index.info()["documents"] == 0
    assert index.search("purring cats", k=2, candidates=5)[0] == [] and index.search("purring cats", k=2, rerank=False, preset="none")[0] == []
    index.add(TEXTS[:4])
    assert index.has_stage("pooled") and index.search("purring cats", k=2)[0][0].id == index.search("purring cats", k=2, preset="fused")[0][0].id


def test_tuning_refuses_what_it_cannot_measure(tmp_path, models, capsys):
    from mvr.eval.beir import load_beir
    from mvr.tuning import tune

    data = write_beir(tmp_path / "beir")
    queries, qrels = load_beir(data, "test")
    passages = Index.build(TEXTS, tmp_path / "p", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, pooled=True, passage_tokens=16))
    with pytest.raises(QueryError, match="holds passages"):
        tune(passages, queries, qrels)
    index = Index.build(TEXTS, tmp_path / "d", encoder=Encoder(models["plain"]), config=IndexConfig(fde=None, pooled=True))
    report = tune(index, queries, qrels, signals=["pooled", "bm25s"], step=0.5)  # MaxSim joins the grid whatever is asked
    assert report["signals"] == ["maxsim", "pooled", "bm25s"]
    with pytest.raises(QueryError, match="a preset is a mapping"):
        index.save_search_preset("x", ["pooled"])
    saved = index.save_search_preset("np", {"first_stage": "pooled", "candidates": np.int64(5), "fusion": "weighted", "weights": {"maxsim": np.float32(0.5)}})
    assert saved["search"]["presets"]["np"] == {"first_stage": "pooled", "candidates": 5, "fusion": "weighted", "weights": {"maxsim": 0.5}}
    # a signal twice (an AxisError), a grid too fine to walk (an OverflowError, or hours), judgements the index lacks (a preset
    # learned from nothing, saved as the default search)
    for options, message in (({"signals": ["bm25s", "bm25s"]}, "distinct names"), ({"signals": "bm25s"}, "distinct names"),
                             ({"step": 1e-300}, "use a larger step"), ({"step": 0.0001, "signals": ["pooled", "bm25s"]}, "use a larger step"), ({"step": "0.1"}, "step must divide 1")):
        with pytest.raises(QueryError, match=options and message):
            tune(index, queries, qrels, **options)
    with pytest.raises(QueryError, match="nothing to learn from"):
        tune(index, queries, {q: {"not-in-the-index": 1} for q in qrels})
    from mvr.cli import main

    home = tmp_path
    for argv, message in ((["--first-stage", "exhaustive"], "exhaustive search scores every document"), (["--candidates", "0"], "--candidates must be a positive integer"),
                          (["--save", " "], "--save names the search preset"), (["--threads", "-1"], "--threads must be a positive integer, or left out, got -1")):
        assert main(["tune", str(data), "--index", str(home / "d"), "--split", "test", *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["tune", str(data), "--index", str(home / "nowhere"), "--save", "a b"]) == 2  # said before the index is even opened, not after the tuning
    assert "a preset name is letters, digits, - and _" in capsys.readouterr().err
    # --dense-share on a stage of one half was taken and ignored; queries that cannot count were averaged in unsaid
    assert main(["tune", str(data), "--index", str(home / "d"), "--split", "test", "--first-stage", "pooled", "--dense-share", "0.7"]) == 2
    assert "--dense-share splits the candidates between the two halves of a joined first stage" in capsys.readouterr().err
    with open(data / "qrels" / "test.tsv", "a") as handle:
        handle.write("q9\tnowhere\t1\n")
    with open(data / "queries.jsonl", "a") as handle:
        handle.write(json.dumps({"_id": "q9", "text": "tea"}) + "\n")
    assert main(["tune", str(data), "--index", str(home / "d"), "--split", "test", "--step", "0.5", "--json"]) == 0
    captured = capsys.readouterr()
    said = [line.removeprefix("mvr: warning: ") for line in captured.err.splitlines()]
    assert said[0].startswith("tuning on the test split") and said[1].startswith("tuning on 5 queries: weights fitted to so few are noise")
    assert "(queries left with none of theirs: 1)" in said[2] and json.loads(captured.out)["warnings"] == said


def test_no_rerank_drops_every_scoring_option_of_a_preset(best, tmp_path):
    """rerank=False over a preset holding prune_alpha (or one saved with both, before that was
    refused) failed: the preset's pruning was kept beside the caller's rerank=False."""
    from mvr.search_presets import resolve

    found = {"default": "pruned", "presets": {"pruned": {"first_stage": "bm25s", "candidates": 6, "prune_alpha": 0.5, "early_exit": 2},
                                              "old": {"first_stage": "bm25s", "candidates": 6, "rerank": False, "prune_alpha": 0.5}}}
    assert resolve(found, None, None, {"rerank": False})[2] == {"rerank": False}
    assert resolve(found, None, None, {"preset": "old"})[2] == {"rerank": False}
    assert resolve(found, None, None, {"prune_alpha": 0.3})[2] == {"prune_alpha": 0.3, "early_exit": 2}  # a scoring option given: the preset's others stay
    best.save_search_preset("pruned", found["presets"]["pruned"], default=False)
    plain = best.search(ASKED, k=3, first_stage="bm25s", candidates=6, rerank=False, preset="none")
    np.testing.assert_array_equal(best.search(ASKED, k=3, preset="pruned", rerank=False).indices, plain.indices)


def test_presets_saved_before_the_checks_still_search():
    """A preset saved before options the search would not read were refused (fusion_weight beside
    weighted fusion) searches as it did: the option it never read is dropped, not an error; a
    preset's dense_share stays where the stage is not known yet (the index's default decides)."""
    from mvr.search_presets import resolve

    found = {"default": "old", "presets": {"old": {"first_stage": "pooled+bm25s", "candidates": 6, "fusion": "weighted", "weights": {"maxsim": 1.0}, "fusion_weight": 0.5, "dense_share": 0.3},
                                           "wide": {"dense_share": 0.3, "candidates": 300}}}
    stage, candidates, options, name = resolve(found, None, None, {})
    assert (stage, candidates, name) == ("pooled+bm25s", 6, "old") and "fusion_weight" not in options and options["dense_share"] == 0.3
    assert resolve(found, "bm25s", None, {"preset": "old"})[2].get("dense_share") is None  # the caller's stage is no hybrid
    assert resolve(found, None, None, {"preset": "wide"})[2] == {"dense_share": 0.3}
    assert resolve(found, None, None, {"preset": "old", "fusion": "linear", "fusion_weight": 0.7})[2]["fusion_weight"] == 0.7
