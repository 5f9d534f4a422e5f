"""The query pipeline: candidates from a first stage -> prune -> exact MaxSim rerank (with early
exit) -> fuse -> top-k; or exhaustive MaxSim over every document. Search-time settings, with
their defaults, are :class:`SearchOptions`; nothing here is saved in an index."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from .config import FUSION_WEIGHT, default_candidates
from .corpus import blank, query_texts
from .errors import EncoderMismatchError, QueryError, is_utf8, many, meant, shown
from .feedback import COLBERT_PRF, expand
from .first_stage import exhaustive, first_stage
from .fusion import FUSIONS, check_weights, fuse, signal_scores, stage_signals, text_signals
from .passages import GROUPS, best_per_document
from .registry import EXHAUSTIVE, FIRST_STAGES, HYBRIDS, needs_texts, needs_vectors, parse_stage
from .results import Results
from .stages.base import Candidates, QueryBatch
from .storage.metadata import Metadata
from .threads import cpu_threads

PRF = ("rm3", "colbert")  # pseudo-relevance feedback methods (SearchOptions.prf)


def flag(name: str, value) -> bool:
    """``value`` of a True / False search option, checked (a string or None is no answer)."""
    if not isinstance(value, (bool, np.bool_)):
        raise QueryError(f"{name} is True or False, got {value!r}.")
    return bool(value)


@dataclass(frozen=True)
class SearchOptions:
    """How candidates are found and ordered (validated on construction).

    first_stage     one of mvr.registry.FIRST_STAGES; None: the index's default (Index.default_stage)
    candidates      first-stage candidates reranked (None: 100, 256 after the centroid stage alone, or k if more); not with "exhaustive"
    rerank          rerank candidates with exact MaxSim (False: the first stage's own ranking)
    prune_alpha     drop candidates whose first-stage score is below (1 - alpha) x the k-th best
    early_exit      stop reranking after this many consecutive candidates miss the running top-k
    fusion          final score from MaxSim and first-stage scores: "rrf" or "linear" (None: MaxSim);
                    "weighted": of MaxSim and other signals, each scored for every candidate (mvr/fusion.py)
    fusion_weight   MaxSim's weight in "linear" fusion of per-query z-scores (None: 0.8; only with fusion="linear")
    weights         "weighted" fusion: each signal's weight ({"maxsim": 0.45, "pooled": 0.25, "bm25s": 0.3})
    dense_share     hybrid first stages ("fde+bm25s", "centroids+bm25s", ...): the share of the candidates taken from
                    the vector stage's ranking; the sparse ranking adds new documents up to the count
                    (and the vector ranking fills in if the sparse one runs short); None: 0.8; only with a hybrid
    nprobe          FDE in a faiss IVF index: inverted lists probed per query (None: 32)
    ef_search       FDE in a faiss HNSW index: search breadth (None: 256)
    centroid_probe  the centroid stage: nearest centroids whose lists each query token probes (None: 8)
                    (each of the three refused where no stage of the search reads it)
    filter          keep only documents whose metadata match (mvr/storage/metadata.py), applied
                    before candidates are cut (with exhaustive search or an exact FDE, k hits come
                    back whenever k documents match)
    group           an index of passages: "documents" (None: the default) returns each document's
                    best passage, k distinct documents; "passages" the passages themselves
    prf             pseudo-relevance feedback: "rm3" expands the Lucene bm25 first stage's query (pyserini's
                    RM3: 10 terms from the top 10 documents, the original query weighing 0.5); "colbert"
                    searches twice, the second time with vectors of the first's top documents (mvr/feedback.py)
    """

    first_stage: str | None = None
    candidates: int | None = None
    rerank: bool = True
    prune_alpha: float | None = None
    early_exit: int | None = None
    fusion: str | None = None
    fusion_weight: float | None = None
    weights: dict | None = None
    dense_share: float | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    centroid_probe: int | None = None
    filter: dict | None = None
    group: str | None = None
    prf: str | None = None

    def __post_init__(self):
        flag("rerank", self.rerank)  # "false" reranked and None did not: the server refuses the one and ignores the other
        if self.group is not None and self.group not in GROUPS:
            raise QueryError(f"group must be one of {', '.join(GROUPS)} (an index of passages returns documents by default), got {self.group!r}.")
        if self.first_stage is not None and self.first_stage not in FIRST_STAGES:
            raise QueryError(f"unknown first stage {self.first_stage!r}; available: {', '.join(FIRST_STAGES)}.")
        for name in ("candidates", "early_exit", "nprobe", "ef_search", "centroid_probe"):  # the kernels and faiss take 32-bit counts
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value < 2**31):
                raise QueryError(f"{name} must be a positive integer below 2**31, got {value!r}.")
            object.__setattr__(self, name, None if value is None else int(value))  # a NumPy integer as Python's: faiss takes no other
        if self.first_stage == EXHAUSTIVE:
            if self.candidates is not None:
                raise QueryError("candidates applies to first stages that select candidates; 'exhaustive' scores every document.")
            if not self.rerank or self.prune_alpha is not None or self.early_exit is not None or self.fusion is not None:
                raise QueryError("rerank, pruning, early exit and fusion apply to a first stage with candidates, not to 'exhaustive'.")
        for name in ("prune_alpha", "fusion_weight", "dense_share"):  # a string would fail the comparisons below with a TypeError
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))):
                raise QueryError(f"{name} must be a number in [0, 1], got {type(value).__name__} {shown(value)}.")
        if self.prune_alpha is not None and not 0.0 <= self.prune_alpha <= 1.0:
            raise QueryError(f"prune_alpha must lie in [0, 1], got {self.prune_alpha!r}.")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise QueryError(f"unknown fusion {self.fusion!r}; available: {', '.join(FUSIONS)}.")
        if self.fusion_weight is not None and not 0.0 <= self.fusion_weight <= 1.0:
            raise QueryError(f"fusion_weight must lie in [0, 1], got {self.fusion_weight!r}.")
        if self.fusion_weight is not None and self.fusion != "linear":
            raise QueryError(f'fusion_weight is the weight of linear fusion: give fusion="linear" with it (default weight {FUSION_WEIGHT}).')
        unread = [name for name in ("fusion", "early_exit", "prune_alpha") if not self.rerank and getattr(self, name) is not None]
        if unread:  # each acts on the MaxSim rerank (pruning drops candidates before it): without it, it would be taken and never read
            raise QueryError(f"{' and '.join(unread)} need{'s' if len(unread) == 1 else ''} rerank=True: {'it acts' if len(unread) == 1 else 'they act'} on the MaxSim rerank.")
        if self.dense_share is not None and not 0.0 <= self.dense_share <= 1.0:
            raise QueryError(f"dense_share must lie in [0, 1], got {self.dense_share!r}.")
        if self.dense_share is not None and self.first_stage is not None and self.first_stage not in HYBRIDS:
            raise QueryError(f"dense_share splits the candidates of a hybrid first stage ({', '.join(HYBRIDS)}); {self.first_stage!r} is none.")
        if self.prf is not None and self.prf not in PRF:
            raise QueryError(f"prf must be one of {', '.join(PRF)} (pseudo-relevance feedback), got {self.prf!r}.")
        if self.prf == "rm3" and self.first_stage is not None and "bm25" not in parse_stage(self.first_stage):
            raise QueryError(f"prf=\"rm3\" expands the Lucene bm25 stage's query; it needs a first stage with bm25 (bm25, fde+bm25), got {self.first_stage!r}.")
        if self.prf == "colbert" and not self.rerank:
            raise QueryError('prf="colbert" adds token vectors to the query, which MaxSim reads: it needs rerank=True.')
        if self.filter is not None and not isinstance(self.filter, dict):
            raise QueryError(f"filter must be a JSON object such as {{\"year\": {{\"$gte\": 2020}}}}, got {type(self.filter).__name__}.")
        if (self.fusion == "weighted") != (self.weights is not None):
            raise QueryError('weighted fusion and weights go together: fusion="weighted" with weights={"maxsim": 0.6, "bm25s": 0.4}.')
        if self.weights is not None:
            object.__setattr__(self, "weights", check_weights(self.weights))
            if self.prune_alpha is not None or self.early_exit is not None:
                raise QueryError("weighted fusion scores every candidate; it does not go with pruning or early exit.")
        if self.first_stage in HYBRIDS and (self.fusion in ("rrf", "linear") or self.prune_alpha is not None):
            raise QueryError(
                f"fusion and pruning read first-stage scores, and a hybrid first stage ({self.first_stage}) joins two "
                "rankings whose scores do not compare; use them with a single first stage."
            )

    @classmethod
    def create(cls, **options) -> "SearchOptions":  # unknown names refused with the list of known ones
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise QueryError(f"unknown search option(s) {unknown}{meant(unknown, cls.names())}; known: {', '.join(cls.names())}.")
        return cls(**options)

    @classmethod
    def names(cls) -> list[str]:  # what Index.search takes as options: these fields, threads, explain, a preset
        return sorted({*(f.name for f in dataclasses.fields(cls)), "threads", "explain", "preset"})


def rerank(parts: list[tuple], query, k: int, opts: SearchOptions, signals: dict | None, each) -> tuple[np.ndarray, np.ndarray]:
    """Order one query's candidates, found in one or more segments (``parts``: ``(token store,
    first position of the segment, Candidates)`` each): prune, MaxSim (with early exit, per
    segment; ``each``: how the segments' scoring runs, :meth:`mvr.segment.Commit.each`), fuse over
    all of them (``signals``: weighted fusion's other scores, in the order of the parts'
    candidates); top-k positions and scores out."""
    kth = None
    if opts.prune_alpha is not None:
        firsts = np.concatenate([found.scores for _, _, found in parts]) if parts else np.zeros(0, np.float32)
        if len(firsts):
            kth = np.sort(firsts)[::-1][min(k, len(firsts)) - 1]
            kth = kth if kth > 0 else None  # pruning compares non-negative (BM25-like) scores

    def score(part: tuple) -> tuple:
        tokens, base, (rows, first_scores) = part
        if kth is not None:
            keep = first_scores >= (1.0 - opts.prune_alpha) * kth
            rows, first_scores = rows[keep], first_scores[keep]
        if opts.rerank and opts.early_exit is not None:
            scores, scored = tokens.early_exit(query, rows, k, opts.early_exit)
            return rows[:scored] + base, first_scores[:scored], scores[:scored]
        return rows + base, first_scores, tokens.score(query, rows) if opts.rerank else None

    positions, first, maxsim = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
    for rows, first_scores, scores in each(score, parts):
        positions.append(rows)
        first.append(first_scores)
        if scores is not None:
            maxsim.append(scores)
    positions, first = np.concatenate(positions), np.concatenate(first)
    weight = FUSION_WEIGHT if opts.fusion_weight is None else opts.fusion_weight
    final = fuse(np.concatenate(maxsim), first, opts.fusion, weight, signals, opts.weights) if opts.rerank else first
    # Best first; ties go to the lower position, as in exhaustive search.
    order = np.lexsort((positions, -final))[:k]
    return positions[order], final[order].astype(np.float32)


def check_stages(opts: SearchOptions, state, given=()) -> None:
    """Every stage ``opts`` read present in each segment of ``state`` (before the model loads), and
    no probing option of ``given`` (the caller's, not a preset's) that none reads: ``nprobe`` with
    no IVF, ``ef_search`` with no HNSW graph, ``centroid_probe`` without the centroid stage (each
    would be taken and ignored). The FDE's factory is the one the index records, as asked: a
    segment too small to train one is Flat, and the option holds for the segments merges make."""
    for stage in (opts.first_stage, *stage_signals(opts.weights)):
        for segment in state.segments:
            segment.require(stage)
    parts, asked = parse_stage(opts.first_stage), [name for name in ("nprobe", "ef_search", "centroid_probe") if name in given and getattr(opts, name) is not None]
    factory = state.config.fde.factory if state.config.fde is not None else ""  # every segment's FDE is built as the config says (a rebuild changes both)
    readers = {"nprobe": ("fde" in parts and "IVF" in factory, "an FDE in a faiss IVF index (--fde-factory IVF...)"),
               "ef_search": ("fde" in parts and "HNSW" in factory, "an FDE in a faiss HNSW index (--fde-factory HNSW...)"),
               "centroid_probe": ("centroids" in parts, "the centroid first stage")}
    for name in asked:
        if not readers[name][0]:
            raise QueryError(f"{name} is read by {readers[name][1]}, which this search ({opts.first_stage}) does not use; leave it out, or search with such a first stage.")
    if opts.filter is not None:  # its fields, operators and values, even where no row is searched (no queries; no documents)
        Metadata(None, 0, state.fields).mask(opts.filter)


def scored_inputs(query, positions, dim: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``query`` and ``positions`` of :meth:`mvr.Index.score` as the kernels read them, or a
    QueryError saying what is wrong (the kernels would index out of bounds or read garbage)."""
    try:
        query, positions = np.ascontiguousarray(query, dtype=np.float32), np.asarray(positions)
    except (TypeError, ValueError) as error:
        raise QueryError(f"score takes one query's vectors (float32, (tokens, {dim})) and document positions (ints): {error}") from None
    if query.ndim != 2 or query.shape[1] != dim or not len(query) or not np.isfinite(query).all():
        raise QueryError(f"the query must be finite float32 vectors of shape (tokens, {dim}) (Index.encode_queries(text).vectors), got shape {query.shape}.")
    if positions.ndim != 1 or (len(positions) and positions.dtype.kind not in "iu") or ((positions < 0) | (positions >= rows)).any():
        raise QueryError(f"positions must be a list of ints in [0, {rows}) (Index.position(id)), got {shown(positions.tolist())}.")
    return query, positions.astype(np.int64)


def query_strings(queries) -> list[str]:
    """A query or a list of them as a list of non-empty strings, or a QueryError for what is not."""
    texts = query_texts(queries)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or blank(text):
            what = type(text).__name__ if not isinstance(text, str) else "empty" if not text.strip() else "only invisible characters (control, format)"
            raise QueryError(f"query #{i} is {what}; queries must be non-empty strings.")
        if not text.isprintable() and not is_utf8(text):
            raise QueryError(f"query #{i} holds a lone surrogate (no character: the text was decoded wrongly); send it as UTF-8.")
    return texts


def query_batch(queries, texts, opts: SearchOptions, dim: int, owner: str, encoder: dict) -> QueryBatch:
    """The :class:`QueryBatch` of encoded ``queries`` (TokenVectors or None) and ``texts``, checked
    against what ``opts`` read and against ``owner``'s ``dim``-wide vectors of ``encoder`` (its record)."""
    if (needs_texts(opts.first_stage) or text_signals(opts.weights)) and texts is None:
        raise QueryError(f"the {opts.first_stage} first stage and text signals need the query texts (texts=...).")
    if texts is not None:
        texts = query_strings(list(many(texts, "texts are the queries' texts, a list of strings", QueryError)))
    if queries is None:
        if opts.rerank or needs_vectors(opts.first_stage):
            raise QueryError(f"first stage {opts.first_stage!r} with rerank={opts.rerank} needs encoded queries.")
        return QueryBatch(texts)
    if not hasattr(queries, "vectors") or not hasattr(queries, "offsets"):
        raise QueryError(f"encoded queries are TokenVectors (Index.encode_queries), got {type(queries).__name__}.")
    vectors = np.ascontiguousarray(queries.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise EncoderMismatchError(f"query vectors have dimension {vectors.shape[-1] if vectors.ndim else '?'}, {owner} stores {dim}: encode the queries with its encoder ({encoder['name']}).")
    model = getattr(queries, "model", None)
    if model is not None and encoder.get("weights_sha256") not in (None, model):  # of the same size, but another model's: scores with no meaning
        raise EncoderMismatchError(f"the query vectors were encoded by another model (weights sha256 {model[:12]}...) than {owner}'s {encoder['name']} "
                                   f"({encoder['weights_sha256'][:12]}...): encode them with the index (Index.encode_queries).")
    if not np.isfinite(vectors).all():
        raise QueryError("query vectors hold NaN or infinite values; encode the queries with the index's encoder (Index.encode_queries).")
    offsets = np.asarray(queries.offsets)
    if offsets.ndim != 1 or len(offsets) < 2 or offsets.dtype.kind not in "iu" or offsets[0] != 0 or offsets[-1] != len(vectors) or (np.diff(offsets) < 1).any():
        raise QueryError(f"query offsets must rise from 0 to the {len(vectors)} vectors, each query holding at least one (the kernels read them as given), got {shown(offsets.tolist())}.")
    if texts is not None and len(texts) != len(offsets) - 1:
        raise QueryError(f"{len(offsets) - 1} encoded queries and {len(texts)} texts: give one text per query.")
    return QueryBatch(texts, vectors, offsets.astype(np.int64))


def run(state, queries: QueryBatch, k: int, opts: SearchOptions, threads: int | None = None) -> Results:
    """:func:`run_rows`, and in an index of passages (mvr/passages.py) by default ``k`` documents:
    the passages searched ever deeper (4k, 16k, ...) until ``k`` distinct documents are found,
    each document ranked by its best passage. ``prf="colbert"``: searched again, the query
    expanded by its best documents' vectors (mvr/feedback.py)."""
    if opts.prf == "colbert":
        started, plain = time.perf_counter(), dataclasses.replace(opts, prf=None)  # first search: distinct documents of an index of passages
        queries = expand(state, queries, run(state, queries, COLBERT_PRF["docs"], plain, threads).indices)
        spent, results = (time.perf_counter() - started) * 1e3, run(state, queries, k, plain, threads)
        results.timings, results.expanded = {"feedback": spent, **results.timings}, queries
        return results
    if not state.config.passage_tokens:
        if opts.group == "passages":  # it would be ignored: every row here is a whole document
            raise QueryError("group='passages' (--group passages) applies to an index of passages (mvr index --passage-tokens N); this one holds whole documents.")
        return run_rows(state, queries, k, opts, threads)
    if opts.group == "passages":
        results = run_rows(state, queries, k, opts, threads)
        results.group = "passages"
        return results
    fetch = k
    while True:
        fetch = min(fetch * 4, max(state.n_live, 1))
        deeper = opts if opts.first_stage == EXHAUSTIVE else dataclasses.replace(opts, candidates=max(opts.candidates or default_candidates(opts.first_stage), fetch))
        found = run_rows(state, queries, fetch, deeper, threads)
        indices, scores, complete = best_per_document(found.indices, found.scores, state.doc_ids, k)
        if complete or fetch >= state.n_live:
            break
    results = Results(indices, scores, state, found.timings, group="documents")
    results.fallbacks = found.fallbacks
    return results


def run_rows(state, queries: QueryBatch, k: int, opts: SearchOptions, threads: int | None = None) -> Results:
    """Search the segments of one commit (``state``, :class:`mvr.index.Commit`) with ``queries``
    as ``opts`` say (its first stage already resolved): each segment gives candidates among its
    live documents that pass the filter; ties go to the lower position.

    A first stage takes the best ``candidates`` over all segments (:func:`first_stage`), and
    they are reranked together (MaxSim scores compare across segments; pruning and fusion see all
    of them), so several segments cost about what one does in MaxSim; exhaustive search merges
    each segment's top-k.
    """
    if opts.first_stage != EXHAUSTIVE and opts.candidates is None and default_candidates(opts.first_stage) < k:
        opts = dataclasses.replace(opts, candidates=k)  # k hits where k documents match (candidates asked for are kept: a sweep measures them)
    n_queries = len(queries)
    indices = [np.full((n_queries, 0), -1, dtype=np.int64)]
    top = [np.full((n_queries, 0), -np.inf, dtype=np.float32)]
    timings = {"first_stage": 0.0, "rerank": 0.0}
    with cpu_threads(threads, "numba", "faiss", "blas"):

        def allowed(s: int) -> np.ndarray | None:  # segment s's live rows that pass the filter (None: all)
            live = state.live(s)
            if opts.filter is None:
                return live
            matched = state.segments[s].metadata.mask(opts.filter)
            return matched if live is None else matched & live

        # (segment number, allowed rows) of the segments searched: those with a row allowed
        searched = [(s, rows) for s, rows in enumerate(state.each(allowed, range(len(state.segments)))) if rows is None or rows.any()]
        if opts.first_stage == EXHAUSTIVE:
            started = time.perf_counter()
            found = state.each(lambda one: exhaustive(state.segments[one[0]], queries, min(k, state.segments[one[0]].n_docs), one[1]), searched)
            for (s, _), (rows, scores) in zip(searched, found):
                indices.append(np.where(rows >= 0, rows + state.bases[s], -1))
                top.append(scores)
            timings["rerank"], searched = (time.perf_counter() - started) * 1e3, []
        fallbacks = 0
        if searched:
            started = time.perf_counter()
            found, fallbacks = first_stage(state, searched, queries, opts)
            extra = signal_scores(state, queries, found, opts.weights) if opts.fusion == "weighted" else None
            middle = time.perf_counter()
            ranked = np.full((n_queries, k), -1, dtype=np.int64)
            scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
            for q, one in enumerate(found):
                query = queries.query(q) if queries.vectors is not None else None
                owner = state.segment_of(one.positions)
                parts = [(state.segments[s].scorer, state.bases[s], Candidates(one.positions[owner == s] - state.bases[s], one.scores[owner == s])) for s in np.unique(owner)]
                in_parts = np.argsort(owner, kind="stable")  # the candidates in the parts' order: by segment, each in its own order
                signals = None if extra is None else {name: values[in_parts] for name, values in extra[q].items()}
                rows, best = rerank(parts, query, k, opts, signals, state.each)
                ranked[q, : len(rows)], scores[q, : len(rows)] = rows, best
            indices.append(ranked)
            top.append(scores)
            timings["first_stage"] = (middle - started) * 1e3
            timings["rerank"] = (time.perf_counter() - middle) * 1e3
    blocks = len(indices) - 1  # one per segment searched exhaustively, or one reranked for all
    indices, top = np.concatenate(indices, axis=1), np.concatenate(top, axis=1)
    if blocks > 1:
        order = np.lexsort((np.where(indices < 0, np.iinfo(np.int64).max, indices), -top.astype(np.float64)), axis=-1)[:, :k]
        indices, top = np.take_along_axis(indices, order, axis=1), np.take_along_axis(top, order, axis=1)
    if indices.shape[1] < k:
        pad = k - indices.shape[1]
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    results = Results(indices, top, state, timings)
    results.fallbacks = fallbacks
    return results
