"""One way to run with a given number of CPU threads in torch, Numba, faiss or BLAS, restoring each
library's own count afterwards (no library's setting leaks out of a call).

Numba's and OpenMP's (faiss's) counts belong to the calling thread, so each call sets and
restores its own. torch's and BLAS's are process-wide: while calls in several threads hold them,
they stay at the first holder's count (a call nested in one thread sets its own for its span),
and the last one out restores what was there before, so searches in several threads at once
never leave the process with another thread's setting.
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
_holders: dict[str, list] = {}  # library -> [number of holders, how to restore the count found]
_depth = threading.local()  # per thread: how deeply it holds each library


def _set(name: str, threads: int):
    """Set a process-wide library's count; return how to put back what was there."""
    if name == "blas":
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=threads, user_api="blas").restore_original_limits
    get, set_ = _torch()
    previous = get()
    set_(threads)
    return lambda: set_(previous)


def _acquire(name: str, threads: int):
    """Hold a process-wide library: the first holder sets its count, later ones share it; a
    call nested in a thread that holds it already sets its own (restored when it ends)."""
    with _lock:
        depth = getattr(_depth, name, 0)
        held = _holders.get(name)
        nested = None
        if held is None:
            _holders[name] = [1, _set(name, threads)]
        else:
            held[0] += 1
            if depth:
                nested = _set(name, threads)
        setattr(_depth, name, depth + 1)
        return nested


def _release(name: str, nested) -> None:
    with _lock:
        if nested is not None:
            nested()
        setattr(_depth, name, getattr(_depth, name) - 1)
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
                stack.callback(_release, name, _acquire(name, threads))
                continue
            get, set_ = _PER_THREAD[name]()
            previous = get()
            set_(threads)
            stack.callback(set_, previous)
        yield
