"""One way to run with a given number of CPU threads in torch, Numba, faiss or BLAS, restoring each
library's own count afterwards (no library's setting leaks out of a call)."""

from __future__ import annotations

import contextlib

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


_LIBRARIES = {"torch": _torch, "numba": _numba, "faiss": _faiss}


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
            if name == "blas":
                from threadpoolctl import threadpool_limits

                stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
                continue
            get, set_ = _LIBRARIES[name]()
            previous = get()
            set_(threads)
            stack.callback(set_, previous)
        yield
