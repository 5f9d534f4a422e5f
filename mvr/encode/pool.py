"""Documents encoded by several processes of this machine, one CPU thread each (``mvr index
--workers N``), and the dealing of a corpus's batches to workers that Ray's encoder shares.

One process already runs its documents side by side, one per thread (mvr/encode/encoder.py); on
2 cores that is faster than two worker processes, whose start costs more than it saves on a
SciFact-sized corpus (docs/scale.md has the figures). Each worker encodes
whole batches of the encoder's own (documents sorted by length, a batch every ``batch_size``,
one document per run for int8), so every batch holds what it holds in one process, and the index
is the one a single process builds, byte for byte (tests/test_workers.py). The workers run on
the CPU: a GPU encodes in one process (``--device``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ..config import positive_int
from ..threads import cores
from ..errors import ConfigError, EncoderError
from .encoder import Encoder
from .forms import encoder_settings
from .tokens import TokenVectors, checked_texts, vector_dtype


def deal(encoder: Encoder, texts: list[str], parts: int, batch_size: int | None = None) -> list[np.ndarray]:
    """The positions in ``texts`` that each of ``parts`` workers encodes: ``encoder``'s batches,
    in its order (longest first), dealt round-robin, so the workers' loads stay even and each
    worker, sorting its share by length again, cuts the same batches."""
    lengths = [len(s) for s in encoder.tokenize_documents(texts)]
    order = np.argsort([-n for n in lengths], kind="stable")  # as Encoder._encode orders them
    batch = encoder.document_batch(batch_size)
    batches = [order[start : start + batch] for start in range(0, len(order), batch)]
    return [np.concatenate([np.zeros(0, np.int64), *batches[w::parts]]).astype(np.int64) for w in range(parts)]


def join(n_texts: int, pieces: list[tuple[np.ndarray, tuple]], dtype=np.float32) -> TokenVectors:
    """One :class:`TokenVectors` of ``n_texts`` texts in their order (vectors in ``dtype``), from
    each worker's ``(positions, (vectors, offsets, truncated, token_ids))``."""
    rows: list = [None] * n_texts
    ids: list = [None] * n_texts
    truncated = np.zeros(n_texts, dtype=bool)
    for chosen, (vectors, offsets, cut, token_ids) in pieces:
        for j, i in enumerate(chosen):
            rows[i] = vectors[offsets[j] : offsets[j + 1]]
            ids[i] = None if token_ids is None else token_ids[offsets[j] : offsets[j + 1]]
            truncated[i] = bool(cut[j])
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    token_ids = None if any(i is None for i in ids) else np.concatenate(ids).astype(np.int32)
    return TokenVectors(np.concatenate(rows).astype(dtype, copy=False), offsets, truncated, token_ids)


def dealt(encoder: Encoder, texts: list[str], workers: int, batch_size, submit, result, show_progress=None, dtype=np.float32) -> TokenVectors:
    """``texts`` encoded by ``workers`` workers, each given its share of ``encoder``'s batches
    (:func:`deal`): ``submit(w, texts)`` starts worker ``w`` on its share, ``result(started)``
    waits for what it returns ``(vectors, offsets, truncated, token_ids)``, the vectors in
    ``dtype``; joined in the texts' order (:func:`join`)."""
    if not texts:
        return encoder.encode_documents(texts, dtype=dtype)
    parts = [p for p in deal(encoder, texts, workers, batch_size) if len(p)]
    started = [(p, submit(w, [texts[i] for i in p])) for w, p in enumerate(parts)]
    pieces = []
    for chosen, one in started:
        pieces.append((chosen, result(one)))
        if hasattr(show_progress, "update"):
            show_progress.update(len(chosen))
    return join(len(texts), pieces, dtype)


def worker_settings(encoder: Encoder, threads: int) -> dict:
    """What a worker needs to make the same encoder as ``encoder`` with ``threads`` threads."""
    settings = encoder_settings(encoder, threads=threads)
    return {name: settings[name] for name in ("model", "threads", "doc_runtime", "query_maxlen", "doc_maxlen", "batch_size")}  # on the CPU, in float32


def _check_workers(workers) -> None:
    """A ConfigError unless ``workers`` is a positive int no larger than :func:`cores` (each worker
    is a process holding the model, on one thread: more than the cores only slow the build, and
    a mistyped count would start that many processes)."""
    positive_int("--", "workers", workers)
    if workers > cores():
        raise ConfigError(f"--workers {workers} is more than the {cores()} CPU cores this process may use (each worker is a process with its own copy of the model, on one thread); use at most {cores()}.")


_WORKER: Encoder | None = None  # the encoder of a worker process
_BUSY = False  # whether it is encoding (a SIGTERM then ends the run under way)
_STOPPING = False  # whether a SIGTERM came (the next run, if any, ends at once)


def _start(config: dict) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=_orphaned, daemon=True).start()
    _WORKER = Encoder(**config)


def _stop(*_) -> None:
    """SIGTERM (:meth:`ProcessEncoder.close` stopping a busy worker, or another process): end as a
    process does once the current native call returns (the document being encoded), so that its
    finalizers release the semaphores it made; busy, the pool's loop catches the SystemExit and
    sends it back (:func:`_result`), and the next SIGTERM or the pool's end finds the worker idle.
    One that does not end is killed (:meth:`ProcessEncoder.close`). Its standard error goes to
    /dev/null: the build says in one line that a worker stopped.

    Not encoding (waiting for work, or sending its result back), it only marks itself stopping:
    a SystemExit in the middle of a result's message cut it short, and the build's pool then
    waited for the rest forever (Ctrl-C hung the build). It ends at the pool's end (or its next run)."""
    global _STOPPING
    _STOPPING = True
    if _WORKER is not None and not _BUSY:
        return
    _end()


def _end() -> None:
    if _WORKER is None:  # still starting: the pool would log the initializer's "failure" with a traceback
        logging.getLogger("concurrent.futures").disabled = True
    try:  # ending: what multiprocessing prints as it unwinds (its read of the queue the build closed) is no one's to read
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass
    raise SystemExit(1)


def _orphaned() -> None:
    """End this worker once the process that started it is gone (killed, even by SIGKILL: the
    pool's own shutdown never comes then, and an idle worker would wait for work forever)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()  # returns when the parent's end of the pipe closes, as it does when the parent dies
        os._exit(1)


class _Stopped(Exception):
    """A worker's share ended by a SIGTERM (:func:`_stop`) that this process did not send."""


def _result(future):
    """What a worker returned; its SystemExit (a SIGTERM from elsewhere: ``kill``, an OOM killer)
    is :class:`_Stopped`, not an exit of this process (which would end a caller's program)."""
    try:
        return future.result()
    except SystemExit:
        raise _Stopped() from None


def _ready() -> bool:
    return _WORKER is not None


def _encode(texts: list[str], batch_size: int | None, dtype: str):
    global _BUSY
    _BUSY = True  # before the check: a SIGTERM between the two then ends this run rather than letting it go on
    try:
        if _STOPPING:
            _end()
        found = _WORKER.encode_documents(texts, batch_size=batch_size, show_progress=False, dtype=dtype)
    finally:
        _BUSY = False
    return found.vectors, found.offsets, found.truncated, found.token_ids


class ProcessEncoder:
    """An :class:`Encoder` whose :meth:`encode_documents` runs in ``workers`` processes of one
    thread each (started once, each with its own copy of the model); everything else (the
    tokenizer, queries, the identity an index records) is the local encoder's, made with the same
    settings. :meth:`close` (or ``with``) stops the processes.

    The workers are fresh interpreters (multiprocessing's "spawn"; a fork would copy this
    process's thread pools and locks), which import the main module again: a script that makes a
    ProcessEncoder does so under ``if __name__ == "__main__":``, as with any process pool."""

    def __init__(self, model=None, *, workers: int = 2, **options):
        _check_workers(workers)
        fixed = sorted(options.keys() & {"threads", "device", "precision"})
        if fixed:
            raise ConfigError(f"worker processes run on the CPU with one thread each: {', '.join(fixed)} cannot be set for them (a GPU encodes in one process: Encoder(device=...)).")
        self._launch(Encoder(model, threads=1, device="cpu", **options), workers)

    @classmethod
    def like(cls, encoder: Encoder, workers: int) -> "ProcessEncoder":
        """Workers that make the document vectors of ``encoder`` (a CPU one: its model, lengths,
        runtime and batches; it stays this pool's tokenizer and query encoder), as adding to an
        index that ``encoder`` built needs."""
        _check_workers(workers)
        if encoder.device != "cpu":
            raise ConfigError(f"worker processes encode on the CPU; give them an encoder on the CPU, not {encoder.device}.")
        pool = cls.__new__(cls)
        pool._launch(encoder, workers)
        return pool

    def _launch(self, local: Encoder, workers: int) -> None:
        self.local = local
        # one ONNX export, made here: every worker reads it from the cache (where it fails, every
        # process runs PyTorch, as the index records)
        self.local.onnx_ready()
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start, initargs=({**worker_settings(self.local, 1), "device": "cpu"},))
        self._started = [self._pool.submit(_ready) for _ in range(workers)]  # the workers load the model while the corpus is read
        self._asked = []  # the encoding work submitted and not yet known to be done
        self._closed = False

    def __getattr__(self, name):
        return getattr(self.local, name)

    def __enter__(self) -> "ProcessEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers now, each ending as a process does, so that its finalizers run (a worker
        killed leaves the semaphores it made, tqdm's lock among them, for Python's resource tracker
        to warn about at exit). Idle ones are let go; ones still encoding for a build that failed
        or was interrupted (nothing waits for their part; they ignore Ctrl-C) are sent SIGTERM,
        which ends them once their current run returns (:func:`_stop`). One that has not ended 30 s later is
        killed."""
        self._closed = True
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        idle = all(future.done() for future in self._started + self._asked)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes if not idle else ():
            process.terminate()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=30)
        self._pool.shutdown(wait=True)  # its queues closed, their semaphores released

    def _submit(self, texts: list[str], batch_size: int | None, dtype: str):
        future = self._pool.submit(_encode, texts, batch_size, dtype)
        self._asked.append(future)
        return future

    def encode_documents(self, texts, *, batch_size=None, threads=None, show_progress=None, dtype="float32") -> TokenVectors:
        texts, dtype = checked_texts(texts, False), vector_dtype(dtype)  # the local encoder's messages, before any worker is asked
        if self._closed:
            raise EncoderError("this ProcessEncoder is closed (its worker processes stopped); make a new one to encode.")
        try:
            self._asked = [future for future in self._asked if not future.done()]
            return dealt(self.local, texts, self.workers, batch_size, lambda w, part: self._submit(part, batch_size, dtype.name), _result, show_progress, dtype)
        except (BrokenProcessPool, _Stopped):
            raise EncoderError(
                "a worker process of --workers stopped (out of memory, killed, or it could not start: a script that encodes with "
                "worker processes must do so under `if __name__ == \"__main__\":`); encode again, with fewer workers or none."
            ) from None
