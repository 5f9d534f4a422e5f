"""Ray (mvr/distributed/) on a local instance of 2 CPUs: a build encoded on Ray workers writes the
same index as one process, and a search over shards held by Ray actors gives the same results.

Run by tests/test_distributed.py in a process of its own: Ray's threads and signal handlers and
the JVM of the Lucene tests do not share a process (the JVM crashed after Ray had run in it)."""

import threading

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from mvr import Index, IndexConfig  # noqa: E402
from mvr.cli import main  # noqa: E402
from conftest import DOCS, QUERIES, segment_path  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from mvr.distributed import connect

    connect("local", cpus=2)
    yield
    ray.shutdown()


def corpus():
    return [{"id": f"{i}-{n}", "title": t, "text": f"{x} {n}", "metadata": {"n": n}} for n in range(12) for i, t, x in DOCS]


@pytest.mark.parametrize("runtime", ["torch", "onnx-int8", "onnx-int8-fused"])
def test_a_build_on_ray_workers_writes_the_same_index(cluster, tmp_path, models, runtime):
    from mvr.distributed import RayEncoder

    config = IndexConfig(model=str(models["plain"]), doc_runtime=runtime, batch_size=4, sparse=("bm25s",))
    local = Index.build(corpus(), tmp_path / "local", config=config, chunk_size=40)
    encoder = RayEncoder(str(models["plain"]), workers=2, doc_runtime=runtime, batch_size=4)
    remote = Index.build(corpus(), tmp_path / "ray", config=config, encoder=encoder, chunk_size=40)
    a, b = segment_path(local), segment_path(remote)
    for name in ("vectors.npy", "token_ids.npy", "doc_offsets.npy", "doc_ids.npy", "text.bin", "fde/fde.faiss"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert remote.config == local.config and remote.manifest["encoder"] == local.manifest["encoder"]
    assert remote.search("which animal purrs", k=3).doc_ids == local.search("which animal purrs", k=3).doc_ids  # opened with a working encoder
    encoder.close()


def test_the_index_command_encodes_on_ray(cluster, tmp_path, models, beir, capsys):
    assert main(["index", str(beir / "corpus.jsonl"), "--path", str(tmp_path / "cli"), "--model", str(models["plain"]), "--ray", "local", "--ray-workers", "2", "--quiet"]) == 0
    assert "indexed 8 documents" in capsys.readouterr().out
    assert main(["index", "--from", str(tmp_path / "cli"), "--path", str(tmp_path / "x"), "--ray", "local"]) != 0
    assert "apply to encoding a CORPUS" in capsys.readouterr().err
    # more workers than the cluster's CPUs: refused, not left pending for ever with their share
    assert main(["index", str(beir / "corpus.jsonl"), "--path", str(tmp_path / "x"), "--model", str(models["plain"]), "--ray", "local", "--ray-workers", "3"]) != 0
    assert "--ray-workers 3 asks for 3 CPUs (one a worker); the Ray cluster has 2: use at most 2." in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_sharded_search_gives_the_local_results(cluster, tmp_path, models):
    from mvr.distributed import ShardedIndex

    config = IndexConfig(model=str(models["plain"]), sparse=("bm25s",), centroid_stage=True, pooled=True, codec="residual", codec_bits=2)
    docs = corpus()
    index = Index.build(docs[:40], tmp_path / "sharded", config=config)
    index.add(docs[40:70], merge=False)
    index.add(docs[70:], merge=False)
    index.delete([docs[3]["id"], docs[75]["id"]])
    index.save_search_preset("fused", {"first_stage": "pooled+bm25s", "candidates": 12, "fusion": "weighted", "weights": {"maxsim": 0.5, "pooled": 0.2, "bm25s": 0.3}}, default=False)
    index.refresh()
    assert len(index.segments) == 3
    queries = [q for _, q, _ in QUERIES]
    with ShardedIndex(index.path, shards=2, threads=1) as sharded:
        assert len(sharded.actors) == 2
        for options in ({}, {"first_stage": "exhaustive"}, {"first_stage": "centroids", "candidates": 7}, {"first_stage": "fde", "early_exit": 2},
                        {"first_stage": "bm25s"}, {"filter": {"n": {"$gte": 6}}}, {"preset": "fused"}, {"prf": "colbert"},
                        {"first_stage": "fde", "prune_alpha": 0.5}, {"first_stage": "exhaustive", "filter": {"n": {"$lt": 2}}}):
            mine, theirs = index.search(queries, k=5, **options), sharded.search(queries, k=5, **options)
            assert np.array_equal(mine.indices, theirs.indices) and np.array_equal(mine.scores, theirs.scores), options
            assert mine.doc_ids == theirs.doc_ids and [h.text for h in mine[0]] == [h.text for h in theirs[0]]


def test_a_sharded_index_asks_its_shards_at_once(cluster, tmp_path, models):
    from mvr.distributed import ShardedIndex
    from mvr.errors import ConfigError

    docs = corpus()
    index = Index.build(docs[:40], tmp_path / "two", config=IndexConfig(model=str(models["plain"])))
    index.add(docs[40:], merge=False)
    with ShardedIndex(index.path, shards=2) as sharded:
        # the commit the search pipeline reads runs each segment's work in a thread of its own:
        # both calls must be waiting at once for the barrier to open (one after the other, it breaks)
        barrier = threading.Barrier(2, timeout=20)
        assert sharded.view._state.each(lambda s: (barrier.wait(), s)[1], range(2)) == [0, 1]
        assert sharded.view._state.each(lambda s: s * 2, [3]) == [6]
        # a thread per call: the four calls of a hybrid over two segments all wait at once
        four = threading.Barrier(4, timeout=20)
        assert sharded.view._state.each(lambda s: (four.wait(), s)[1], range(4)) == [0, 1, 2, 3]
        # and the search pipeline hands its per-segment work to it: first stage, scoring, exhaustive
        asked = []

        def spy(work, items):
            items = list(items)
            asked.append(len(items))
            return sharded.each(work, items)

        sharded.view._state.each = spy
        for options in ({}, {"first_stage": "exhaustive"}, {"first_stage": "fde"}):
            assert sharded.search("which animal purrs", k=3, **options).doc_ids == index.search("which animal purrs", k=3, **options).doc_ids
            assert asked.count(2) >= (1 if options else 2), (options, asked)  # masks, first stage, MaxSim of both segments
            assert (4 in asked) == (not options), (options, asked)  # the default hybrid: both stages of both segments in one round
            asked.clear()
        # the hits' documents: at the first read of a query's hits, one call per segment holding one
        from mvr.distributed import remote

        methods, call = [], remote.Remote.call
        remote.Remote.call = lambda remote, method, *args: (methods.append(method), call(remote, method, *args))[1]
        try:
            results = sharded.search(["which animal purrs", "a dog barks"], k=6, first_stage="exhaustive")
            methods.clear()
            hits = [results[0], results[1]]
            owners = [set(index._state.segment_of(row[row >= 0]).tolist()) for row in results.indices]
            assert methods == ["documents"] * (len(owners[0]) + len(owners[1])) and len(owners[0]) == 2, (methods, owners)  # a call per segment, per query row
            mine = index.search(["which animal purrs", "a dog barks"], k=6, first_stage="exhaustive")
            assert [[(h.id, h.text, h.metadata) for h in one] for one in hits] == [[(h.id, h.text, h.metadata) for h in one] for one in (mine[0], mine[1])]
            hits[0][0].metadata["n"] = -1  # each read gives the caller its own metadata, as a local index does
            assert results[0][0].metadata["n"] != -1 and len(methods) == len(owners[0]) + len(owners[1])  # read again: nothing fetched again
        finally:
            remote.Remote.call = call
    with pytest.raises(ConfigError, match="closed"):
        sharded.search("which animal purrs")
    for bad in ({"shards": 0}, {"shards": True}, {"threads": 0}, {"threads": "2"}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            ShardedIndex(index.path, **bad)


def test_an_mvr_error_in_a_shard_comes_back_as_itself(cluster, tmp_path, models):
    from mvr.distributed import ShardedIndex
    from mvr.errors import QueryError

    docs = corpus()[:24]
    index = Index.build(docs[:12], tmp_path / "small", config=IndexConfig(model=str(models["plain"])))
    index.add(docs[12:], merge=False)
    with pytest.raises(QueryError) as mine:
        index.search("a dog barks", k=3, filter={"$nope": 1})
    with ShardedIndex(index.path, shards=2) as sharded:
        # in one line, as the index gives it (Ray raised a RayTaskError(QueryError) whose message
        # was the shard's traceback)
        with pytest.raises(QueryError) as theirs:
            sharded.search("a dog barks", k=3, filter={"$nope": 1})
        assert type(theirs.value) is QueryError and str(theirs.value) == str(mine.value) and "\n" not in str(theirs.value)
        assert sharded.search("a dog barks", k=3).doc_ids == index.search("a dog barks", k=3).doc_ids  # the shards still answer


def test_a_sharded_index_of_no_segments_searches_as_the_index_does(cluster, tmp_path, models):
    from mvr.distributed import ShardedIndex
    from mvr.errors import ConfigError

    # every document deleted, every segment dropped: no shard to start, and searches answer as the
    # index does (they said "closed", as a closed index has no shards either)
    docs = corpus()[:6]
    index = Index.build(docs, tmp_path / "empty", config=IndexConfig(model=str(models["plain"])))
    index.delete([d["id"] for d in docs])
    assert len(index.segments) == 0
    queries = ["a dog barks", "which animal purrs"]
    empty = ShardedIndex(index.path, shards=2)
    assert empty.actors == [] and empty.search(queries, k=3).doc_ids == index.search(queries, k=3).doc_ids == [[], []]
    empty.close()
    with pytest.raises(ConfigError, match="closed"):
        empty.search("a dog barks")


def test_shards_refuse_an_index_rebuilt_while_they_open_it(cluster, tmp_path, models, monkeypatch):
    """The shards opened 'generation G' of whatever index stood at the path when they started: a
    rebuild there meanwhile gave results mixing the two (the coordinator's ids, the new index's
    texts), or a ConfigError blaming the nodes, in Ray's colours."""
    import os

    from mvr.distributed import ShardedIndex, shards
    from mvr.errors import IndexNotFoundError

    config = IndexConfig(model=str(models["plain"]), fde=None)
    Index.build(corpus()[:12], tmp_path / "idx", config=config)
    Index.build(corpus()[12:24], tmp_path / "next", config=config)
    connect = shards.connect

    def rebuilt_then_connect(*args, **kwargs):  # between the coordinator's open and the shards'
        os.replace(tmp_path / "idx", tmp_path / ".idx.old-1-00000000")
        os.replace(tmp_path / "next", tmp_path / "idx")
        return connect(*args, **kwargs)

    monkeypatch.setattr(shards, "connect", rebuilt_then_connect)
    with pytest.raises(IndexNotFoundError, match="was rebuilt while the shards of a sharded index opened it; open the sharded index again") as caught:
        ShardedIndex(tmp_path / "idx", shards=2)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_sharded_index_lets_go_of_its_commit_and_actors(cluster, tmp_path, models):
    """close() kept the coordinator's commit pinned (an optimize after it left the old segments on
    disk); one dropped without close() kept its actors and threads (a reference cycle)."""
    import gc
    import time

    from mvr.distributed import ShardedIndex
    from mvr.writer import Writer

    docs = corpus()[:24]
    index = Index.build(docs[:12], tmp_path / "held", config=IndexConfig(model=str(models["plain"]), fde=None))
    index.add(docs[12:], merge=False)
    sharded = ShardedIndex(index.path, shards=2)
    assert sharded.search("a dog barks", k=3).doc_ids == index.search("a dog barks", k=3).doc_ids
    actors = list(sharded.actors)
    sharded.close()
    assert all(_gone(actor) for actor in actors)  # killed (their processes pin the commit too)
    del index
    gc.collect()
    Index.open(tmp_path / "held").optimize()
    deadline = time.monotonic() + 30
    while len(list((tmp_path / "held" / "segments").iterdir())) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)  # a killed actor's process may hold its pin a moment longer: a writer collects when it starts
        with Writer(Index.open(tmp_path / "held")):
            pass
    assert len(list((tmp_path / "held" / "segments").iterdir())) == 1  # the closed index's coordinator held them for good
    dropped = ShardedIndex(tmp_path / "held", shards=1)
    actor = dropped.actors[0]
    del dropped  # no gc.collect(): nothing holds it
    assert _gone(actor)


def test_a_sharded_index_follows_writes_with_refresh(cluster, tmp_path, models):
    """A ShardedIndex served the commit it opened for good: to see an add, a delete, a merge or a
    rebuild it had to be closed and opened again (new actors, every segment opened again)."""
    import gc
    import time

    from mvr.distributed import ShardedIndex
    from mvr.errors import ConfigError
    from mvr.writer import Writer

    config = IndexConfig(model=str(models["plain"]), sparse=("bm25s",))
    docs, queries = corpus(), [q for _, q, _ in QUERIES]
    index = Index.build(docs[:12], tmp_path / "live", config=config)
    segments = tmp_path / "live" / "segments"

    def same(options={}):
        mine, theirs = Index.open(index.path).search(queries, k=5, **options), sharded.search(queries, k=5, **options)
        assert np.array_equal(mine.indices, theirs.indices) and np.array_equal(mine.scores, theirs.scores), options
        assert mine.doc_ids == theirs.doc_ids and [h.text for h in mine[1]] == [h.text for h in theirs[1]], options

    with ShardedIndex(index.path, shards=2, threads=1) as sharded:
        assert len(sharded.actors) == 1 and not sharded.refresh()  # one segment: one shard
        before, expected = sharded.search(queries, k=5), [(h.id, h.text) for h in index.search(queries, k=5)[0]]
        index.add(docs[12:40], merge=False)
        index.add(docs[40:60], merge=False)
        index.delete([docs[1]["id"], docs[20]["id"]])
        model = sharded.view.encoder
        assert sharded.refresh() and len(sharded.actors) == 2 and len(sharded.nodes()) == 2
        assert sharded.view.encoder is model  # not loaded again for each new commit
        for options in ({}, {"first_stage": "exhaustive"}, {"first_stage": "bm25s"}, {"filter": {"n": {"$gte": 5}}}):
            same(options)
        assert [(h.id, h.text) for h in before[0]] == expected  # results from before read their documents from the commit they came from
        index.optimize()
        assert sharded.refresh()
        same()
        del before
        gc.collect()
        deadline = time.monotonic() + 30  # the shards let go of the old commits once nothing reads them: a writer collects them
        while len(list(segments.iterdir())) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            with Writer(Index.open(index.path)):
                pass
        assert len(list(segments.iterdir())) == 1
        Index.build(docs[60:], tmp_path / "live", config=config, overwrite=True)  # a rebuild at the path: generations count from 1 again
        assert sharded.refresh()
        same()
        assert set(sharded.search("a dog barks", k=10).doc_ids[0]) <= {d["id"] for d in docs[60:]}
    with pytest.raises(ConfigError, match="closed"):
        sharded.refresh()


def _gone(actor, seconds: float = 30) -> bool:
    """Whether ``actor`` is dead within ``seconds`` (Ray kills an actor asynchronously: a call just
    after ray.kill may still be answered)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.node.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        time.sleep(0.2)
    return False


def test_a_dead_shard_a_copy_and_bad_arguments(cluster, tmp_path, models, monkeypatch):
    """A shard killed (out of memory) gave Ray's many-line ActorDiedError on every search for
    good; a copy shared the shards, and garbage, stopped the original's; a RayEncoder read a
    string as one document a letter."""
    import copy
    import gc

    from mvr.distributed import RayEncoder, ShardedIndex
    from mvr.errors import ConfigError, EncoderError, QueryError

    docs = corpus()[:24]
    index = Index.build(docs[:12], tmp_path / "dead", config=IndexConfig(model=str(models["plain"])))
    index.add(docs[12:], merge=False)
    expected = index.search("a dog barks", k=3).doc_ids
    sharded = ShardedIndex(index.path, shards=2)
    other = copy.copy(sharded)  # shards of its own
    assert set(other.actors).isdisjoint(sharded.actors) and other.search("a dog barks", k=3).doc_ids == expected
    del other
    gc.collect()
    assert sharded.search("a dog barks", k=3).doc_ids == expected
    with pytest.raises(QueryError, match="explain is True or False, got .yes."):
        sharded.search("a dog barks", explain="yes")
    ray.kill(sharded.actors[0])
    assert _gone(sharded.actors[0])
    with pytest.raises(ConfigError, match=r"a shard of .* stopped \(.*\); ShardedIndex.refresh\(\) starts its shards again\.$"):
        sharded.search("a dog barks", k=3)
    assert sharded.refresh() and sharded.search("a dog barks", k=3).doc_ids == expected
    sharded.close()
    monkeypatch.chdir(tmp_path)  # a relative path reaches the shards whole
    with ShardedIndex(Index.open(index.path).path.relative_to(tmp_path), shards=2) as relative:
        assert relative.search("a dog barks", k=3).doc_ids == expected
    encoder = RayEncoder(str(models["plain"]), workers=1)
    with pytest.raises(EncoderError, match="one alone"):
        encoder.encode_documents("a dog barks")
    encoder.close()
    with pytest.raises(EncoderError, match="this RayEncoder is closed"):
        encoder.encode_documents(["a dog barks"])


def test_a_sharded_index_whose_ray_is_gone_says_so(cluster, tmp_path, models):
    # the last case of this file: it shuts down the module's Ray instance
    from mvr.distributed import ShardedIndex
    from mvr.errors import ConfigError

    docs = corpus()[:24]
    index = Index.build(docs[:12], tmp_path / "gone", config=IndexConfig(model=str(models["plain"])))
    index.add(docs[12:], merge=False)
    sharded = ShardedIndex(index.path, shards=2)
    results = sharded.search("a dog barks", k=3)
    ray.shutdown()
    # Ray's calls started a new local instance on every core, then failed to find the actors
    gone = "the Ray cluster this sharded index ran on is gone; open it again"
    with pytest.raises(ConfigError, match=gone):
        sharded.search("a dog barks", k=3)
    with pytest.raises(ConfigError, match=gone):
        results[0]  # the hits' documents are read from the shards
    assert not ray.is_initialized()
    sharded.close()  # the shards went with their Ray: nothing to stop (ray.kill raised)
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match="closed"):
        sharded.search("a dog barks", k=3)
