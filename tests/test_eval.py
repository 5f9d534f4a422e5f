"""The BEIR loader and the ir-measures scoring against values worked out by hand."""

import math

import pytest

from mvr import DatasetError
from mvr.eval.beir import evaluate_run, load_beir


def test_load_beir_keeps_only_judged_queries(beir):
    queries, qrels = load_beir(beir, "test")
    assert set(queries) == {"q1", "q2", "q3", "q4"} and qrels["q2"] == {"d5": 2, "d6": 0}


def test_load_beir_errors(beir, tmp_path):
    with pytest.raises(DatasetError, match="available splits: test"):
        load_beir(beir, "train")
    with pytest.raises(DatasetError, match="no queries.jsonl"):
        load_beir(tmp_path, "test")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(DatasetError, match="test.tsv:2"):
        load_beir(beir, "test")


def test_measures_match_hand_computation():
    qrels = {"a": {"d1": 1, "d2": 2}, "b": {"d9": 1}}
    run = {"a": {"d3": 3.0, "d2": 2.0, "d1": 1.0}}  # query b retrieved nothing: counts as 0
    scores = evaluate_run(run, qrels)
    # trec_eval's ndcg_cut (what pyserini and BEIR report) uses the relevance itself as the gain.
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 + 1 / math.log2(3)
    assert scores["nDCG@10"] == pytest.approx(dcg / ideal / 2, abs=1e-4)
    assert scores["RR@10"] == pytest.approx(0.5 / 2)
    assert scores["R@100"] == pytest.approx(1.0 / 2)
