"""Every on-disk format mvr has written, and how an older one is read.

Each part of an index carries its own format name and version in its manifest:

    mvr-index  2   the index directory: manifest.json points at the current commit
                   (storage/commits.py), which lists the segments and their deletion bitmaps
    mvr-commit 1   commit-N.json: config, encoder identity, segments (name, documents, deleted,
                   deletes-N.npy with its sha256), the next segment number
    mvr-segment 1  segments/sXXXXXX/: manifest.json with config, encoder identity, counts and
                   the files of the token store (storage/tokens.py, storage/residual.py), ids,
                   texts, titles, metadata columns, optional projection.npy (PCA) and
                   token_ids.npy, and its first stages in subfolders
    mvr-index  1   (read, never written) the whole index in one folder, as one segment is now;
                   opens read-only, `mvr upgrade NAME` (or the first write) converts it
    mvr-fde    1   fde/: MUVERA random maps + fde.faiss (stages/fde.py)
    mvr-sparse 1   bm25/ (Lucene), bm25s/, splade/ (CSR of term weights); "stage" names which
    mvr-centroids 1  centroids/: inverted lists of the corpus centroids (stages/centroids.py)
    mvr-pooled 1   pooled/: one float16 vector per document, its stored vectors' mean (stages/pooled.py)

History of what version 1 of ``mvr-index`` (now a segment) has held, each still read:
- ``token_ids.npy`` (int32 per stored vector, the vocabulary id behind it) is written since the
  restructure; older indexes lack it, and pruning or clustering them re-tokenises their texts.
- ``config.doc_runtime`` appeared with int8 document encoding: before it, documents ran in PyTorch.
  ``onnx-int8-fused`` (attention fused, mvr/encode/quantize.py) is the default since 2026-11-29;
  mvr from before then does not know it and refuses to read the config of such an index.
- ``config.cluster_keep`` appeared with kept special tokens: before it, a clustered index pooled
  every token.
- ``config.centroid_stage`` appeared with the centroid stage: before it, none was built.
- ``config.fde.nprobe`` / ``ef_search`` were build settings until they became search options
  (``SearchOptions.nprobe`` / ``ef_search``); they are dropped on reading.

Of ``mvr-index`` 2: ``index_id`` (pointer and commits, drawn by the first commit) appeared on
2026-11-30; an index without it is told from one rebuilt at its path by its folder alone.
"""

from __future__ import annotations

INDEX_FORMAT, INDEX_VERSION = "mvr-index", 2
LEGACY_VERSION = 1  # an index in one folder: read-only, converted by `mvr upgrade`
COMMIT_FORMAT, COMMIT_VERSION = "mvr-commit", 1
SEGMENT_FORMAT, SEGMENT_VERSION = "mvr-segment", 1
FDE_FORMAT, FDE_VERSION = "mvr-fde", 1
SPARSE_FORMAT, SPARSE_VERSION = "mvr-sparse", 1
CENTROIDS_FORMAT, CENTROIDS_VERSION = "mvr-centroids", 1
POOLED_FORMAT, POOLED_VERSION = "mvr-pooled", 1
TOKEN_IDS = "token_ids.npy"
_FDE_SEARCH_SETTINGS = ("nprobe", "ef_search")


def stage_format(stage: str) -> tuple[str, int]:
    """The format and version of the first stage folder ``stage`` (the FDE's, the centroid stage's, or a text stage's)."""
    known = {"fde": (FDE_FORMAT, FDE_VERSION), "centroids": (CENTROIDS_FORMAT, CENTROIDS_VERSION), "pooled": (POOLED_FORMAT, POOLED_VERSION)}
    return known.get(stage, (SPARSE_FORMAT, SPARSE_VERSION))


def rebuild_command(stage: str, index) -> str:
    """The command that rebuilds the first stage ``stage`` of ``index`` (its name or path)."""
    return f"mvr {stage} {index}" if stage in ("fde", "centroids", "pooled") else f"mvr sparse {index} --stage {stage}"


def stage_mismatch(stage_manifest: dict, built_from: dict[str, str], n_docs: int) -> str | None:
    """What a first stage was built from that its index no longer holds ("token vectors" or
    "documents"), comparing each key of ``built_from`` (``vectors_sha256``, ``doc_ids_sha256``)
    and the document count; None when it still matches."""
    for key, want in built_from.items():
        if stage_manifest.get(key) != want:
            return "token vectors" if key == "vectors_sha256" else "documents"
    return None if stage_manifest.get("documents") == n_docs else "documents"


def upgrade_fde_config(values: dict | None) -> dict | None:
    """An FDE config as saved by any version, in today's fields."""
    if not isinstance(values, dict):
        return values
    return {k: v for k, v in values.items() if k not in _FDE_SEARCH_SETTINGS}


def upgrade_config(values: dict) -> dict:
    """An index config as saved by any version of format 1, in today's fields (see the history above)."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    if "cluster_keep" not in values and (values.get("cluster_ratio") is not None or values.get("cluster_count") is not None):
        values["cluster_keep"] = ()  # clustered before cluster_keep existed: every token was pooled
    values.setdefault("doc_runtime", "torch")  # built before doc_runtime existed: documents ran in PyTorch
    values.setdefault("centroid_stage", False)  # built before the centroid stage existed
    if "fde" in values:
        values["fde"] = upgrade_fde_config(values["fde"])
    return values
