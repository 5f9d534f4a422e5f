"""Slow checks on the real BEIR data in ../shared/datasets (skipped where it is absent)."""

from pathlib import Path

import numpy as np
import pytest

from mvr import Index
from mvr.corpus import read_corpus
from mvr.eval.beir import evaluate_run, load_beir

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "scifact"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SCIFACT.is_dir(), reason="../shared/datasets/scifact not present")]


def test_scifact_subset_quality_with_the_default_model(tmp_path, default_encoder):
    """60 test queries against their judged documents plus 540 others: the default model's
    exhaustive MaxSim must rank as it does on the full corpus (0.707 there; a subset is easier)."""
    queries, qrels = load_beir(SCIFACT, "test")
    chosen = list(queries)[:60]
    judged = {d for q in chosen for d in qrels[q]}
    docs, others = [], 0
    for doc in read_corpus(SCIFACT / "corpus.jsonl"):
        if doc.id in judged:
            docs.append(doc)
        elif others < 540:
            docs.append(doc)
            others += 1
    index = Index.build(docs, tmp_path / "scifact-subset", encoder=default_encoder)
    results = index.search([queries[q] for q in chosen], k=100)
    run = results.to_run(chosen)
    scores = evaluate_run(run, {q: qrels[q] for q in chosen})
    assert scores["nDCG@10"] >= 0.70, scores
    # The batched kernel and the one-query path agree on real data.
    single = index.search(queries[chosen[0]], k=100)
    np.testing.assert_array_equal(single.indices[0], results.indices[0])
