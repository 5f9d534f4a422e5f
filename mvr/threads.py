"""One way to run with a given number of CPU threads in torch, Numba, faiss or BLAS, restoring each
library's own count afterwards (no library's setting leaks out of a call).

Numba's and OpenMP's (faiss's) counts belong to the calling thread, so each call sets and
restores its own. torch's and BLAS's are process-wide: the first call to ask sets them and
restores them, in its own thread, when it ends; calls in other threads meanwhile run with that
count (thread counts change speed, never results). So searches in several threads at once never
leave the process with another thread's setting.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np

from .errors import QueryError, is_number

# numpy parses each .npy header with ast.literal_eval, which CPython 3.11 (3.11.7 here) can fail
# with "SystemError: AST constructor recursion depth mismatch" when threads do it at once (the AST
# builder's depth count is shared; see cpython gh-106905): concurrent searches opening segments
# under a writer did (tests/test_concurrency.py). mvr's reads take turns.
NPY_LOCK = threading.RLock()


def load_npy(path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (no pickles), its header parsed under :data:`NPY_LOCK`; read
    whole (``mmap_mode`` None) outside the lock, so large reads still run side by side."""
    with NPY_LOCK:
        array = np.load(path, mmap_mode="r" if mmap_mode is None else mmap_mode, allow_pickle=False)
    return np.array(array) if mmap_mode is None else array


def read_npy_header(handle) -> tuple[tuple, bool, np.dtype]:
    """Shape, Fortran order and dtype from the ``.npy`` header at ``handle``'s position (left just
    past it), parsed under :data:`NPY_LOCK`."""
    with NPY_LOCK:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(handle)


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _torch():
    import torch

    return torch.get_num_threads, torch.set_num_threads


def _numba():
    import numba

    return numba.get_num_threads, lambda n: numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _faiss():
    import faiss

    return faiss.omp_get_max_threads, faiss.omp_set_num_threads


_controller: list = [None, -1]  # threadpoolctl's view of the loaded BLAS libraries, and len(sys.modules) then


def _blas_controller():
    """threadpoolctl's controller, made again only once modules (and so maybe native libraries)
    were loaded since: making one scans every library of the process (milliseconds, as much as a
    whole search of a small index)."""
    from threadpoolctl import ThreadpoolController

    if _controller[1] != len(sys.modules):
        _controller[:] = [ThreadpoolController(), len(sys.modules)]
    return _controller[0]


_PER_THREAD = {"numba": _numba, "faiss": _faiss}
_PROCESS_WIDE = ("torch", "blas")
_lock = threading.Lock()
_owners: dict[str, int] = {}  # process-wide library -> the thread whose call set its count


def _set(name: str, threads: int):
    """Set a process-wide library's count; return how to put back what was there (in this thread:
    threadpoolctl lets only the thread that limited a pthreads OpenBLAS restore it)."""
    if name == "blas":
        limiter = _blas_controller().limit(limits=threads, user_api="blas")
        return lambda: limiter.__exit__(None, None, None)
    get, set_ = _torch()
    previous = get()
    set_(threads)
    return lambda: set_(previous)


def _acquire(name: str, threads: int):
    """Set a process-wide library's count unless a call in another thread holds it (then that
    call's count stays, and it restores what was there when it ends); calls nested in one thread
    each set their own. Returns how to undo what this call did, or None."""
    me = threading.get_ident()
    with _lock:
        owner = _owners.get(name)
        if owner is not None and owner != me:
            return None
        _owners[name] = me
        restore = _set(name, threads)
    return owner is None, restore


def _release(name: str, held) -> None:
    if held is None:
        return
    outermost, restore = held
    with _lock:
        restore()
        if outermost:
            del _owners[name]


def check_threads(threads: int | None) -> int | None:
    """``threads`` where it is None or a positive integer, else a QueryError."""
    if threads is not None and (not is_number(threads, whole=True) or threads < 1):
        raise QueryError(f"threads must be a positive integer, got {threads!r}.")
    return threads


@contextlib.contextmanager
def cpu_threads(threads: int | None, *libraries: str):
    """Run the block with ``threads`` threads in each named library ("torch", "numba", "faiss",
    "blas": NumPy's BLAS, through threadpoolctl); None leaves them as they are. More than the
    cores run as many as the cores (more only slow things down, and 100,000 made BLAS fail to
    start its threads and the process crash)."""
    if check_threads(threads) is None:
        yield
        return
    threads = min(threads, cores())
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
