"""Exact MaxSim in PyTorch on a device (a CUDA GPU), over any token store.

:class:`TorchTokens` wraps an opened store (float16, int8 or residual) and answers what search asks
of one (``score``, ``score_all``, ``early_exit``) with matrix products on ``device``; everything else
(decoding, counts) is the store's. The store decodes document-aligned blocks on the CPU; on a GPU
they stay resident as float16 (the float16 codec's own bits; the other codecs' decoded vectors
rounded to float16, which moves a score by about 1e-3) while they fit the device's budget: half
the memory free when the process first asked, shared by every store on that device (a store that
no longer fits, or whose copy runs out of memory, is sent per search instead). Products run in
float32 (torch keeps TF32 off unless the program turns it on) and each query's tokens are summed
in a fixed order, so scores equal the Numba kernels' within float rounding, the same on every run
(tests/test_device.py checks both dtypes with the CPU as the device). A product never takes more
than ``_CELLS`` cells, nor a block more than ``_ROWS`` decoded rows, however short the query or
wide the filter. The GPU running out of memory under a search is a one-line DeviceMemoryError.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ..device import device_memory

_CELLS = 1 << 26  # query tokens x vectors scored in one product (256 MiB of float32)
_ROWS = 1 << 18  # decoded vectors in one block (384 MiB of float32 at dim 384)
_REMEDY = "other processes may hold the GPU's memory; free it, or search {}"
_SHORT = ()  # a store's vectors the budget could not hold when it asked (no copy, as False: sent per search)


class Budget:
    """Bytes of decoded vectors that stores may keep on a device, taken and given back under a lock."""

    def __init__(self, nbytes: int):
        self.left, self._lock = int(nbytes), threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self._lock:
            if nbytes > self.left:
                return False
            self.left -= nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.left += nbytes


_BUDGETS: dict = {}  # torch.device -> the Budget every store on it shares
_BUDGETS_LOCK = threading.Lock()


def device_budget(device) -> Budget:
    """The process's budget on ``device``: half its free memory when first asked (nothing on the CPU)."""
    import torch

    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one GPU, with one budget
        device = torch.device("cuda", torch.cuda.current_device())
    with _BUDGETS_LOCK:
        if device not in _BUDGETS:
            _BUDGETS[device] = Budget(torch.cuda.mem_get_info(device)[0] // 2 if device.type == "cuda" else 0)
        return _BUDGETS[device]


class TorchTokens:
    """``store``'s MaxSim run by PyTorch on ``device`` ("cuda", "cuda:N", or "cpu" for tests);
    ``budget``: bytes of decoded vectors kept on the device, or a :class:`Budget` shared with other
    stores (None: the device's, :func:`device_budget`); ``dtype``: what they are kept as (None:
    float16 on a GPU, float32 on the CPU)."""

    def __init__(self, store, device: str, budget: "int | Budget | None" = None, dtype=None):
        import torch

        self.store = store
        self.device = torch.device(device)
        self._dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._budget = budget if budget is None or isinstance(budget, Budget) else Budget(budget)
        self._resident = None  # (vectors, document of each row) on the device, once decoded; False: per search; _SHORT: asks again
        self._need = len(store) * (store.dim * self._dtype.itemsize + 8)  # the vectors and each row's document
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
        """All vectors and each row's document on the device, when they fit the budget; else None
        (one the budget was short for asks again once other stores have given back as much)."""
        if self._asks():
            with self._lock:
                if self._asks():
                    self._resident = self._load()
        return self._resident or None

    def _asks(self) -> bool:
        return self._resident is None or (self._resident is _SHORT and self._shared().left >= self._need)

    def _shared(self) -> Budget:
        return self._budget or device_budget(self.device)

    def _load(self):
        import torch

        budget, need, n, dim = self._shared(), self._need, len(self.store), self.store.dim
        if not budget.take(need):
            return _SHORT
        try:
            vectors = torch.empty((n, dim), dtype=self._dtype, device=self.device)  # filled a block at a time: no second copy
            for start in range(0, n, _ROWS):
                vectors[start : start + _ROWS] = self._rows(start, min(n, start + _ROWS))
            lengths = torch.from_numpy(np.diff(np.asarray(self.store.doc_offsets, dtype=np.int64)))
            owner = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(self.device)
        except torch.cuda.OutOfMemoryError:  # what the budget allowed was taken by others meanwhile: search per block
            vectors = owner = None
            budget.give(need)
            torch.cuda.empty_cache()
            return False
        except BaseException:  # a damaged store, an interrupt: nothing held, nothing taken
            budget.give(need)
            raise
        weakref.finalize(self, budget.give, need)  # given back when this store is let go (a merge, a reopen)
        return vectors, owner

    # -- scoring ---------------------------------------------------------------------------------
    def score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float32 ``(n_queries, n_docs)``: MaxSim of each query (flat rows + ``offsets``) against every document."""
        offsets = np.asarray(offsets, dtype=np.int64)
        with device_memory(str(self.device), f"scoring {len(offsets) - 1} queries against every document", _REMEDY.format("fewer queries at once")):
            return self._score_all(queries, offsets)

    def _score_all(self, queries: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        import torch

        n_queries, n_docs = len(offsets) - 1, len(self.store.doc_offsets) - 1
        doc_offsets = np.asarray(self.store.doc_offsets, dtype=np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        lengths = np.diff(offsets)
        width = max(int(lengths.max(initial=0)), 1)
        slots = np.where(np.arange(width) < lengths[:, None], offsets[:-1, None] + np.arange(width), len(q))  # len(q): a row of zeros
        slots = torch.from_numpy(slots).to(self.device)
        out = np.empty((n_queries, n_docs), dtype=np.float32)
        whole = self._whole()
        rows_per_product = max(1, min(_CELLS // max(len(q), slots.numel(), 1), _ROWS))  # best, and its gather by slots
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
            out[:, first:last] = self._maxsim(q, slots, vectors, owner, last - first).cpu().numpy()
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
        with device_memory(str(self.device), f"scoring {len(positions)} candidates", _REMEDY.format("fewer candidates")):
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
        return self._maxsim(q, torch.arange(len(q), device=self.device)[None], vectors, owner, len(positions))[0].cpu().numpy()

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
    def _maxsim(q, slots, vectors, owner, n_docs: int):
        """``(n_queries, n_docs)`` on the device: for each query token the best product with the
        rows of each document (``owner``: a row's document), summed over each query's tokens
        (``slots``: each query's rows of ``q``, padded with ``len(q)``) in a fixed order (a GPU's
        ``index_add_`` adds in whatever order its threads come)."""
        import torch

        sim = q @ vectors.float().T  # (query tokens, rows)
        best = torch.full((len(q) + 1, n_docs), -torch.inf, device=q.device)
        best[-1] = 0.0
        best[:-1].scatter_reduce_(1, owner.unsqueeze(0).expand(len(q), -1), sim, "amax", include_self=True)
        return best[slots].sum(1)
