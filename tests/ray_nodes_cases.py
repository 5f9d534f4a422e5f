"""Ray on a cluster of two nodes (ray.cluster_utils.Cluster: a head and a second raylet on this
machine, each with its own object store and one CPU), joined by its address as a cluster of
machines is: encoder workers and shards go to both nodes, and the build and the searches give what
one process gives. Run by tests/test_distributed.py in a process of its own."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from mvr import Index, IndexConfig  # noqa: E402
from mvr.cli import main  # noqa: E402
from conftest import QUERIES, segment_path  # noqa: E402
from ray_cases import corpus  # noqa: E402


@pytest.fixture(scope="module")
def address():
    from mvr.distributed import connect

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        connect(cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_build_on_two_nodes_writes_the_same_index(address, tmp_path, models, beir, capsys):
    from mvr.distributed import RayEncoder

    config = IndexConfig(model=str(models["plain"]), batch_size=4, sparse=("bm25s",))
    local = Index.build(corpus(), tmp_path / "local", config=config, chunk_size=40)
    encoder = RayEncoder(str(models["plain"]), workers=2, batch_size=4)
    try:
        assert len(set(encoder.nodes())) == 2  # a worker on each node: the pieces cross between object stores
        remote = Index.build(corpus(), tmp_path / "ray", config=config, encoder=encoder, chunk_size=40)
    finally:
        encoder.close()
    for name in ("vectors.npy", "token_ids.npy", "doc_offsets.npy", "doc_ids.npy", "text.bin", "fde/fde.faiss"):
        assert (segment_path(local) / name).read_bytes() == (segment_path(remote) / name).read_bytes(), name
    # the command, given the cluster's address
    args = [str(beir / "corpus.jsonl"), "--model", str(models["plain"]), "--quiet"]
    assert main(["index", *args, "--path", str(tmp_path / "cli-local")]) == 0
    assert main(["index", *args, "--path", str(tmp_path / "cli-ray"), "--ray", address, "--ray-workers", "2"]) == 0
    assert "indexed 8 documents" in capsys.readouterr().out
    a, b = Index.open(tmp_path / "cli-local"), Index.open(tmp_path / "cli-ray")
    assert (segment_path(a) / "vectors.npy").read_bytes() == (segment_path(b) / "vectors.npy").read_bytes()


def test_shards_on_two_nodes_give_the_local_results(address, tmp_path, models):
    from mvr.distributed import ShardedIndex

    config = IndexConfig(model=str(models["plain"]), sparse=("bm25s",), centroid_stage=True)
    docs = corpus()
    index = Index.build(docs[:50], tmp_path / "sharded", config=config)
    index.add(docs[50:], merge=False)
    index.delete([docs[7]["id"]])
    queries = [q for _, q, _ in QUERIES]
    with ShardedIndex(index.path, shards=2, threads=1) as sharded:
        assert len(set(sharded.nodes())) == 2  # one shard on each node
        for options in ({}, {"first_stage": "exhaustive"}, {"first_stage": "centroids", "candidates": 7}, {"filter": {"n": {"$gte": 6}}}):
            mine, theirs = index.search(queries, k=5, **options), sharded.search(queries, k=5, **options)
            assert np.array_equal(mine.indices, theirs.indices) and np.array_equal(mine.scores, theirs.scores), options
            assert mine.doc_ids == theirs.doc_ids and [h.text for h in mine[0]] == [h.text for h in theirs[0]]
