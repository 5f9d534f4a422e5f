"""Ray (extra ``mvr[ray]``): documents encoded on Ray workers, and an index searched in shards held
by Ray actors. Both give exactly what one process gives.

    mvr index CORPUS --name NAME --ray local --ray-workers 2      # or --ray ADDRESS of a cluster

    from mvr.distributed import ShardedIndex, connect
    connect("local")
    with ShardedIndex("NAME", shards=2) as index:
        results = index.search(["what causes scurvy"], k=10)

- :class:`RayEncoder` encodes each chunk of a build on its workers, dealt the encoder's own
  batches (documents sorted by length, a batch every ``batch_size``) round-robin
  (mvr/encode/pool.py), so each batch holds the documents it holds in one process and the build
  (mvr/build.py, unchanged) writes the same segments.
- :class:`ShardedIndex` deals the index's segments to actors, each opening only its own. The
  coordinator runs the one search pipeline (mvr/search.py) over stand-ins of the segments: first
  stage searches, MaxSim scoring and document reads run in the actor that holds the segment;
  merging candidates across segments and the final top-k run in the coordinator, as in one process.
  ``refresh()`` moves it to the index's newest commit (writes made since), as ``Index.refresh()``.

Every machine reads the index at the same path (a shared filesystem). Encoder workers are spread
across nodes (Ray's SPREAD, best effort); shards are dealt to the cluster's nodes with CPUs in turn
(shard ``i`` on node ``i % nodes``). The coordinator asks the shards at once (:meth:`mvr.segment.Commit.each`):
a thread per call (a segment's, or a segment's stage of a hybrid) waits for its answer.
"""

from .cluster import connect
from .encoder import RayEncoder
from .shards import ShardedIndex

__all__ = ["RayEncoder", "ShardedIndex", "connect"]
