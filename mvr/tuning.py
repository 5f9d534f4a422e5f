"""Learning weighted fusion on training queries: ``mvr tune``.

Each training query's candidates are found once (the first stage and count that the preset will
use), every signal scores every candidate exactly (MaxSim, the pooled vector, BM25, SPLADE: those
the index has), the scores are z-scored per query, and a grid over the weights (non-negative,
summing to 1, in steps of ``step``) picks the weights of the best mean nDCG@10 (trec_eval's:
graded gains, ideal ranking from every judged document). The result is a search preset the index
can save (:meth:`mvr.Index.save_search_preset`) and use as its default search.

    mvr tune ../shared/datasets/scifact --index scifact --split train --save tuned

Tune on training or dev queries only; the test queries report the result once (docs/quality.md).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import QueryError, is_number
from .fusion import MAXSIM, SIGNALS, signal_scores, zscores
from .registry import EXHAUSTIVE
from .stages.base import Candidates, QueryBatch

_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def ideal_dcg(judged: dict[str, int]) -> float:
    """trec_eval's ideal DCG@10 of a query's judgements (graded gains, every judged document)."""
    best = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    return float(np.dot(best, _DISCOUNT[: len(best)]))


@dataclass
class Features:
    """The z-scored signals of every training query's candidates, padded to one width: ``z``
    name -> float64 ``(queries, width)`` (padding: -inf), ``gains`` the candidates' relevance,
    ``ideal`` each query's ideal DCG@10."""

    z: dict[str, np.ndarray]
    gains: np.ndarray
    ideal: np.ndarray

    def ndcg(self, weights: dict[str, float]) -> float:
        """Mean nDCG@10 of the candidates ordered by the ``weights``' fused score."""
        score = sum(w * self.z[name] for name, w in weights.items() if w)
        top = np.argsort(-score, axis=1, kind="stable")[:, :10]
        dcg = (np.take_along_axis(self.gains, top, axis=1) * _DISCOUNT[: top.shape[1]]).sum(axis=1)
        return float(np.mean(np.divide(dcg, self.ideal, out=np.zeros_like(dcg), where=self.ideal > 0)))


def signals_of(index) -> list[str]:
    """The signals ``index`` can fuse: MaxSim and each stage of :data:`SIGNALS` it has built."""
    return [name for name in SIGNALS if name == MAXSIM or index.has_stage(name)]


def features(index, queries: dict[str, str], qrels: dict[str, dict[str, int]], options: dict, signals: list[str], drop_identical: bool = True) -> Features:
    """Candidates of each judged query as ``options`` find them (first_stage, candidates, dense_share, ...), scored by every signal."""
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise QueryError("no query has judgements; tuning needs queries with qrels.")
    texts = [queries[q] for q in qids]
    encoded = index.encode_queries(texts)
    n = options.get("candidates")
    rest = {k: v for k, v in options.items() if k != "candidates"}
    found = index.search_encoded(encoded, n or 100, texts=texts, rerank=False, preset="none", candidates=n, **rest)
    batch = QueryBatch(texts, encoded.vectors, encoded.offsets)
    doc_ids = index.doc_ids
    cands = []
    for q, qid in enumerate(qids):
        rows = found.indices[q][found.indices[q] >= 0]
        if drop_identical:
            rows = rows[doc_ids[rows] != qid]
        cands.append(Candidates(rows.astype(np.int64), np.zeros(len(rows), np.float32)))
    others = signal_scores(index._state, batch, cands, {name: 1.0 for name in signals if name != MAXSIM})
    width = max(1, max(len(c.positions) for c in cands))
    z = {name: np.full((len(qids), width), -np.inf) for name in signals}
    gains = np.zeros((len(qids), width))
    ideal = np.zeros(len(qids))
    for q, (qid, one) in enumerate(zip(qids, cands)):
        m = len(one.positions)
        for name in signals:
            raw = index.score(encoded.vectors[encoded.offsets[q] : encoded.offsets[q + 1]], one.positions) if name == MAXSIM else others[q][name]
            z[name][q, :m] = zscores(raw)
        judged = qrels[qid]
        gains[q, :m] = [max(judged.get(str(doc_ids[p]), 0), 0) for p in one.positions]
        ideal[q] = ideal_dcg(judged)
    for name in signals:  # padding sorts last whatever the weights
        z[name][np.isneginf(z[name])] = -1e9
    return Features(z, gains, ideal)


def grid(sets: list[Features], signals: list[str], step: float = 0.05) -> list[dict]:
    """Every weighting of ``signals`` on the grid (non-negative, summing to 1), scored on each of
    ``sets``: rows ``{"weights", "ndcg": [per set], "gain": mean relative gain over MaxSim alone}``,
    best first (ties: the earlier row, MaxSim's weight highest)."""
    if MAXSIM not in signals:
        raise QueryError("the signals must include maxsim.")
    steps = int(round(1 / step))
    base = [s.ndcg({MAXSIM: 1.0}) for s in sets]
    rows = []
    for combo in itertools.product(range(steps, -1, -1), repeat=len(signals) - 1):
        rest = steps - sum(combo)
        if rest < 0:
            continue
        weights = {MAXSIM: rest / steps, **{name: c / steps for name, c in zip([s for s in signals if s != MAXSIM], combo)}}
        ndcg = [s.ndcg(weights) for s in sets]
        gain = float(np.mean([v / b - 1 if b > 0 else 0.0 for v, b in zip(ndcg, base)]))
        rows.append({"weights": {k: round(v, 4) for k, v in weights.items()}, "ndcg": [round(v, 4) for v in ndcg], "gain": round(gain, 5)})
    rows.sort(key=lambda row: (-row["gain"], -row["weights"][MAXSIM]))
    return rows


def tune(index, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, options: dict | None = None, signals: list[str] | None = None, step: float = 0.05) -> dict:
    """Learn weighted fusion for ``index`` on these training queries. ``options``: how candidates
    are found (default: the pooled stage joined with bm25s, 200 candidates, half from each, where
    the index has them; else its default first stage, 100). Returns ``{"preset": search options
    to save, "ndcg_at_10": tuned, "maxsim_ndcg_at_10": MaxSim alone on the same candidates,
    "alone": each signal alone, "queries", "signals", "top": the best grid rows}``."""
    if not is_number(step) or not 0 < step <= 0.5 or abs(round(1 / step) * step - 1) > 1e-9:
        raise QueryError(f"step must divide 1 (0.05, 0.1, 0.25, ...), got {step!r}.")
    if index.config.passage_tokens:
        raise QueryError(f"index {index.name!r} holds passages; tuning compares whole documents with their judgements, so tune on an index of documents.")
    if isinstance(signals, str) or (signals is not None and len(set(signals)) != len(list(signals))):
        raise QueryError(f"signals are a list of distinct names such as ['maxsim', 'bm25s'], got {signals!r}.")
    signals = [MAXSIM, *(s for s in (signals or signals_of(index)) if s != MAXSIM)]  # the grid starts from MaxSim
    points = (round(1 / step) + 1) ** (len(signals) - 1)
    if points > 2_000_000:  # the grid is walked point by point: hours, or an overflow
        raise QueryError(f"a step of {step:g} over {len(signals)} signals is a grid of more than 2,000,000 weightings; use a larger step (0.05 walks {21 ** (len(signals) - 1):,}).")
    missing = [name for name in signals if name not in signals_of(index)]
    if missing:
        raise QueryError(f"index {index.name!r} has no {', '.join(missing)} stage to score with; its signals: {', '.join(signals_of(index))}.")
    if (options or {}).get("first_stage", index.default_stage) == EXHAUSTIVE:  # fusion weighs a first stage's candidates: there is none to weigh
        raise QueryError(f"index {index.name!r} has no first stage whose candidates fusion could weigh: build one (`mvr pooled`, `mvr fde`, or `mvr sparse --stage bm25s` on it), then tune.")
    if options is None:
        both = index.has_stage("pooled+bm25s")
        options = {"first_stage": "pooled+bm25s", "candidates": 200, "dense_share": 0.5} if both else {"first_stage": index.default_stage, "candidates": 100}
    feats = features(index, queries, qrels, options, signals)
    rows = grid([feats], [MAXSIM, *(s for s in signals if s != MAXSIM)], step)
    best = rows[0]
    if best["ndcg"][0] == 0:  # no judged relevant document among any query's candidates: the weights would be learned from nothing
        raise QueryError(f"no judged relevant document of these {len(feats.ideal)} queries is among their candidates in index {index.name!r} "
                         "(is the index of this dataset's corpus? are any grades above 0?): nothing to learn from.")
    preset = {**options, "fusion": "weighted", "weights": {k: v for k, v in best["weights"].items() if v}}
    return {
        "preset": preset,
        "ndcg_at_10": best["ndcg"][0],
        "maxsim_ndcg_at_10": round(feats.ndcg({MAXSIM: 1.0}), 4),
        "alone": {name: round(feats.ndcg({name: 1.0}), 4) for name in signals},
        "queries": len(feats.ideal),
        "signals": signals,
        "top": rows[:5],
    }
