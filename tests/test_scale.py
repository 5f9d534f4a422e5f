"""The scaling benchmark (python -m mvr.eval.scale): its synthetic corpus, one small run end to
end in a child process, measuring again on a kept index, and the plot."""

import json

import numpy as np
import pytest

from mvr.eval import scale


@pytest.fixture(scope="module")
def synthetic(default_index):
    return scale.Synthetic(default_index)


def test_documents_and_queries_are_drawn_the_same_every_time(synthetic):
    one = synthetic.document(7)
    assert np.array_equal(one, synthetic.document(7)) and not np.array_equal(one, synthetic.document(8))
    assert 1 <= len(one) <= 144 and np.allclose(np.linalg.norm(one, axis=1), 1, atol=1e-5)
    block = synthetic.block([6, 7, 8])
    assert np.array_equal(block.vectors[block.offsets[1] : block.offsets[2]], one) and block.ids == ["d6", "d7", "d8"]
    vectors, offsets, targets = synthetic.queries(5, 1000)
    again = synthetic.queries(5, 1000)
    assert np.array_equal(vectors, again[0]) and np.array_equal(targets, again[2]) and len(offsets) == 6
    # a query is its target document's tokens, perturbed: that document is the nearest
    q = vectors[offsets[0] : offsets[1]]
    assert (q @ synthetic.document(int(targets[0])).T).max(axis=1).mean() > (q @ synthetic.document(int(targets[0]) + 1).T).max(axis=1).mean()


def test_a_small_run_end_to_end_then_search_again_and_plot(default_index, tmp_path):
    out, kept = tmp_path / "scale-300.json", tmp_path / "kept"
    common = ["--documents", "300", "--source", str(default_index.path), "--queries", "20", "--exhaustive-queries", "20", "--fit-documents", "100", "--quiet"]
    assert scale.main([*common, "--output", str(out), "--index-dir", str(kept), "--keep"]) == 0
    result = json.loads(out.read_text())
    for key in ("documents", "build_s", "peak_rss_bytes", "bytes_per_document", "search_ms_p50", "search_ms_p95", "recall_at_10"):
        assert key in result
    assert result["documents"] == 300 and 0.0 <= result["recall_at_10"] <= 1.0 and result["peak_rss_bytes"] >= result["baseline_rss_bytes"] > 0
    assert result["bytes_per_document"] == pytest.approx(sum(result["bytes_per_document_by_component"].values()), abs=1)
    assert result["bytes_per_document_by_component"]["stage_centroids"] > 0 and result["search"]["first_stage"] == "centroids"
    assert result["relevant_in_exhaustive_top10"] >= 0.9  # the synthetic queries find their documents
    assert (kept / "synthetic-300").is_dir()
    assert scale.main([*common, "--output", str(out), "--index-dir", str(kept), "--search-only"]) == 0
    again = json.loads(out.read_text())
    assert again["build_s"] == result["build_s"] and again["recall_at_10"] == result["recall_at_10"]  # same index, same queries
    other = tmp_path / "scale-3000.json"
    other.write_text(json.dumps({**result, "documents": 3000}))
    assert scale.main(["--plot", str(out), str(other), "--output", str(tmp_path / "scale.png"), "--markdown", str(tmp_path / "scale.md")]) == 0
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "scale.md").read_text().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| 300 |") and rows[3].startswith("| 3,000 |")
    with pytest.raises(SystemExit, match="--search-only"):
        scale.main([*common, "--output", str(tmp_path / "missing.json"), "--search-only"])
