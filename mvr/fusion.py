"""Fusing scores into one ranking of a query's candidates.

- ``"rrf"``: reciprocal rank fusion of MaxSim and the first stage (k = 60, Cormack et al. 2009).
- ``"linear"``: ``w * z(MaxSim) + (1 - w) * z(first stage)``, per-query z-scores.
- ``"weighted"``: any of the signals an index has, each scored exactly for every candidate
  (not only those its own stage found), z-scored over the query's candidates and summed with
  the given weights, e.g. ``{"maxsim": 0.45, "pooled": 0.25, "bm25s": 0.3}``. The weights are
  learned on training queries (:mod:`mvr.tuning`) and saved in the index as a search preset.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import QueryError
from .registry import STAGES

FUSIONS = ("rrf", "linear", "weighted")
RRF_K = 60
MAXSIM = "maxsim"
# What weighted fusion can add to MaxSim: the stages that score any document exactly.
SIGNALS = (MAXSIM, "pooled", "bm25", "bm25s", "splade")


def check_weights(weights) -> dict[str, float]:
    """``weights`` as a plain dict of known signals to finite non-negative floats, one positive at least."""
    if not isinstance(weights, dict) or not weights:
        raise QueryError(f'weighted fusion needs weights, a mapping of signals to numbers such as {{"maxsim": 0.6, "bm25s": 0.4}}; got {weights!r}.')
    out = {}
    for name, value in weights.items():
        if name not in SIGNALS:
            raise QueryError(f"unknown fusion signal {name!r}; signals: {', '.join(SIGNALS)}.")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise QueryError(f"the fusion weight of {name} must be a non-negative number, got {value!r}.")
        out[name] = float(value)
    if not any(out.values()):
        raise QueryError("at least one fusion weight must be positive.")
    return out


def text_signals(weights: dict | None) -> list[str]:
    """The signals of ``weights`` that read the query texts."""
    return [name for name, w in (weights or {}).items() if w and name != MAXSIM and STAGES[name].reads == "text"]


def stage_signals(weights: dict | None) -> list[str]:
    """The signals of ``weights`` scored by a first stage of the index (all but MaxSim)."""
    return [name for name, w in (weights or {}).items() if w and name != MAXSIM]


def _ranks(scores: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return ranks


def zscores(scores: np.ndarray) -> np.ndarray:
    """Per-query standardisation: mean 0, standard deviation 1 (all zeros where every score is equal)."""
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std() if len(scores) else 0.0
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def fuse(maxsim: np.ndarray, first: np.ndarray, fusion: str | None, weight: float, signals: dict | None = None, weights: dict | None = None) -> np.ndarray:
    """Final scores of one query's candidates: MaxSim alone (``fusion`` None), reciprocal rank
    fusion, linear fusion with ``weight`` on MaxSim, or weighted fusion of MaxSim and the
    ``signals`` (name -> scores of the same candidates) with ``weights``."""
    if fusion is None or len(maxsim) == 0:
        return maxsim
    if fusion == "rrf":
        return 1.0 / (RRF_K + _ranks(maxsim)) + 1.0 / (RRF_K + _ranks(first))
    if fusion == "linear":
        return weight * zscores(maxsim) + (1.0 - weight) * zscores(first)
    total = np.zeros(len(maxsim), dtype=np.float64)
    top = max(weights.values())  # over the largest first: weights near the float limit do not add up to infinity
    scale = sum(w / top for w in weights.values())  # the order is the weights' own; the scale stays that of a z-score
    for name, w in weights.items():
        if w:
            total += (w / top / scale) * zscores(maxsim if name == MAXSIM else signals[name])
    return total


def signal_scores(state, queries, found: list, weights: dict) -> list[dict[str, np.ndarray]]:
    """Per query, each stage signal's scores of its candidates ``found[q].positions`` (commit
    positions), asked of each segment's stage once for all queries."""
    names = stage_signals(weights)
    out = [{name: np.zeros(len(one.positions), np.float32) for name in names} for one in found]
    if not names:
        return out
    owners = [state.segment_of(one.positions) for one in found]

    def score(s: int) -> tuple:
        picks = [np.flatnonzero(owner == s) for owner in owners]
        rows = [found[q].positions[pick] - state.bases[s] for q, pick in enumerate(picks)]
        return picks, {name: state.segments[s].stage(name).score(queries, rows) for name in names}

    for picks, scored in state.each(score, np.unique(np.concatenate([np.zeros(0, np.int64), *owners]))):
        for name, per_query in scored.items():
            for q, scores in enumerate(per_query):
                out[q][name][picks[q]] = scores
    return out
