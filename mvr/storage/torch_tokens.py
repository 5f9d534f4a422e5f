"""Exact MaxSim in PyTorch on a device (a CUDA GPU), over any token store.

:class:`TorchTokens` wraps an opened store (float16, int8 or residual) and answers what search asks
of one (``score``, ``score_all``, ``early_exit``) with matrix products on ``device``; everything else
(decoding, counts) is the store's. The store decodes document-aligned blocks on the CPU; on a GPU
they stay resident, as float16 (the float16 codec's own bits; the others' decoded vectors, to
about 1e-3), while they fit in half the memory free at the first search, and are sent again per
search past that. Products run in float32 (torch keeps TF32 off unless the program turns it on), so
scores equal the Numba kernels' within float rounding (tests/test_device.py checks it with the CPU
as the device). A product never takes more than ``_CELLS`` cells, nor a block more than ``_ROWS``
decoded rows, however short the query or wide the filter.
"""

from __future__ import annotations

import threading

import numpy as np

_CELLS = 1 << 26  # query tokens x vectors scored in one product (256 MiB of float32)
_ROWS = 1 << 18  # decoded vectors in one block (384 MiB of float32 at dim 384)


class TorchTokens:
    """``store``'s MaxSim run by PyTorch on ``device`` ("cuda", "cuda:N", or "cpu" for tests);
    ``budget``: bytes of decoded vectors kept on the device (None: half its free memory on a GPU,
    nothing on the CPU)."""

    def __init__(self, store, device: str, budget: int | None = None):
        import torch

        self.store = store
        self.device = torch.device(device)
        self._dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self._budget = budget
        self._resident = None  # (vectors, document of each row) on the device, once decoded
        self._lock = threading.Lock()
        lengths = np.diff(np.asarray(store.doc_offsets, dtype=np.int64))
        self._empty = np.flatnonzero(lengths == 0)

    def __getattr__(self, name):  # the store's own attributes: dim, doc_offsets, decode, ...
        if name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    def __len__(self) -> int:
        return len(self.store)

    # -- vectors on the device -------------------------------------------------------------------
    def _rows(self, start: int, stop: int):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.store.decode(start, stop), dtype=np.float32)).to(self.device, self._dtype)

    def _whole(self):
        """All vectors and each row's document on the device, when they fit the budget; else None."""
        import torch

        if self._resident is None:
            with self._lock:
                if self._resident is None:
                    budget = self._budget
                    if budget is None:
                        budget = torch.cuda.mem_get_info(self.device)[0] // 2 if self.device.type == "cuda" else 0
                    n, dim = len(self.store), self.store.dim
                    if n * (dim * self._dtype.itemsize + 8) > budget:
                        self._resident = False
                    else:
                        step = 1 << 18
                        vectors = torch.cat([self._rows(s, min(n, s + step)) for s in range(0, n, step)]) if n else torch.zeros((0, dim), dtype=self._dtype, device=self.device)
                        lengths = torch.from_numpy(np.diff(np.asarray(self.store.doc_offsets, dtype=np.int64)))
                        owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(self.device)
                        self._resident = (vectors, owner)
        return self._resident or None

    # -- scoring ---------------------------------------------------------------------------------
    def score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_queries, n_docs)``: MaxSim of each query (flat rows + ``offsets``) against every document."""
        import torch

        offsets = np.asarray(offsets, dtype=np.int64)
        n_queries, n_docs = len(offsets) - 1, len(self.store.doc_offsets) - 1
        doc_offsets = np.asarray(self.store.doc_offsets, dtype=np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        token_query = torch.repeat_interleave(torch.arange(n_queries), torch.from_numpy(np.diff(offsets))).to(self.device)
        out = np.empty((n_queries, n_docs), dtype=np.float32)
        whole = self._whole()
        rows_per_product = max(1, min(_CELLS // max(len(q), 1), _ROWS))
        first = 0
        while first < n_docs:
            # documents first:last, about rows_per_product rows (at least one document)
            last = max(first + 1, int(np.searchsorted(doc_offsets, doc_offsets[first] + rows_per_product, side="right")) - 1)
            last = min(last, n_docs)
            start, stop = int(doc_offsets[first]), int(doc_offsets[last])
            if whole is not None:
                vectors, owner = whole[0][start:stop], whole[1][start:stop] - first
            else:
                vectors = self._rows(start, stop)
                lengths = torch.from_numpy(np.diff(doc_offsets[first : last + 1]))
                owner = torch.repeat_interleave(torch.arange(last - first), lengths).to(self.device)
            out[:, first:last] = self._maxsim(q, token_query, n_queries, vectors, owner, last - first).cpu().numpy()
            first = last
        out[:, self._empty] = 0.0
        return out

    def score(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """float32 ``(len(positions),)``: MaxSim of one query against the documents at ``positions``
        (in groups of at most ``_ROWS`` rows, or one document)."""
        positions = np.asarray(positions, dtype=np.int64)
        doc_offsets = np.asarray(self.store.doc_offsets, dtype=np.int64)
        lengths = doc_offsets[positions + 1] - doc_offsets[positions]
        out = np.zeros(len(positions), dtype=np.float32)
        ends = np.cumsum(lengths)
        first = 0
        while first < len(positions):
            last = max(first + 1, int(np.searchsorted(ends, (ends[first - 1] if first else 0) + _ROWS, side="right")))
            out[first:last] = self._score_group(query, positions[first:last], doc_offsets)
            first = last
        out[lengths == 0] = 0.0
        return out

    def _score_group(self, query: np.ndarray, positions: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
        import torch

        starts, stops = doc_offsets[positions], doc_offsets[positions + 1]
        lengths = stops - starts
        rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))  # every row of every candidate
        whole = self._whole()
        if whole is not None:
            vectors = whole[0].index_select(0, torch.from_numpy(rows).to(self.device))
        else:
            vectors = torch.cat([self._rows(int(a), int(b)) for a, b in zip(starts, stops)])
        owner = torch.repeat_interleave(torch.arange(len(positions)), torch.from_numpy(lengths)).to(self.device)
        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).to(self.device)
        return self._maxsim(q, torch.zeros(len(q), dtype=torch.long, device=self.device), 1, vectors, owner, len(positions))[0].cpu().numpy()

    def early_exit(self, query: np.ndarray, positions: np.ndarray, k: int, patience: int) -> tuple[np.ndarray, int]:
        """The kernels' early exit over scores computed at once: the same candidates scored (in
        order, until ``patience`` in a row miss the running top-``k``), -inf for the rest."""
        from .._kernels.topk import enters_top

        scores = self.score(query, positions)
        best = np.full(k, -np.inf, dtype=np.float32)
        misses, scored = 0, len(scores)
        for c, value in enumerate(scores):
            misses = 0 if enters_top(best, np.float32(value)) else misses + 1
            if misses >= patience:
                scored = c + 1
                break
        scores[scored:] = -np.inf
        return scores, scored

    @staticmethod
    def _maxsim(q, token_query, n_queries: int, vectors, owner, n_docs: int):
        """``(n_queries, n_docs)`` on the device: for each query token the best product with the
        rows of each document (``owner``: a row's document), summed over each query's tokens."""
        import torch

        sim = q @ vectors.float().T  # (query tokens, rows)
        best = torch.full((len(q), n_docs), -torch.inf, device=q.device)
        best.scatter_reduce_(1, owner.unsqueeze(0).expand(len(q), -1), sim, "amax", include_self=True)
        return torch.zeros((n_queries, n_docs), device=q.device).index_add_(0, token_query, best)
