"""One way to run with a given number of CPU threads in torch, Numba, faiss or BLAS, restoring each
library's own count afterwards (no library's setting leaks out of a call).

Numba's and OpenMP's (faiss's) counts belong to the calling thread, so each call sets and
restores its own. torch's and BLAS's are process-wide: while any call holds them, they stay at
the first holder's count, and the last one out restores what was there before, so searches in
several threads at once never leave the process with another thread's setting.
"""

from __future__ import annotations

import contextlib
import threading

from .errors import QueryError


def _torch():
    import torch

    return torch.get_num_threads, torch.set_num_threads


def _numba():
    import numba

    return numba.get_num_threads, lambda n: numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _faiss():
    import faiss

    return faiss.omp_get_max_threads, faiss.omp_set_num_threads


_PER_THREAD = {"numba": _numba, "faiss": _faiss}
_PROCESS_WIDE = ("torch", "blas")
_lock = threading.Lock()
_holders: dict[str, list] = {}  # library -> [number of holders, how to restore]


def _acquire(name: str, threads: int) -> None:
    with _lock:
        held = _holders.get(name)
        if held is not None:
            held[0] += 1
            return
        if name == "blas":
            from threadpoolctl import threadpool_limits

            restore = threadpool_limits(limits=threads, user_api="blas").restore_original_limits
        else:
            get, set_ = _torch()
            previous = get()
            set_(threads)
            restore = lambda: set_(previous)  # noqa: E731
        _holders[name] = [1, restore]


def _release(name: str) -> None:
    with _lock:
        held = _holders[name]
        held[0] -= 1
        if held[0] == 0:
            del _holders[name]
            held[1]()


@contextlib.contextmanager
def cpu_threads(threads: int | None, *libraries: str):
    """Run the block with ``threads`` threads in each named library ("torch", "numba", "faiss",
    "blas": NumPy's BLAS, through threadpoolctl); None leaves them as they are."""
    if threads is None:
        yield
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise QueryError(f"threads must be a positive integer, got {threads!r}.")
    with contextlib.ExitStack() as stack:
        for name in libraries:
            if name in _PROCESS_WIDE:
                _acquire(name, threads)
                stack.callback(_release, name)
                continue
            get, set_ = _PER_THREAD[name]()
            previous = get()
            set_(threads)
            stack.callback(set_, previous)
        yield
