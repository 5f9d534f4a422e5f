"""Documents encoded on Ray workers: :class:`RayEncoder`."""

from __future__ import annotations

from ..encode import Encoder, TokenVectors
from ..encode.pool import dealt, worker_settings
from ..encode.tokens import checked_texts, vector_dtype
from ..config import positive_int
from ..errors import ConfigError, EncoderError
from .cluster import _node, _ray, connect


class _EncoderWorker:
    """One copy of the model on a Ray worker."""

    def __init__(self, settings: dict):
        self.encoder = Encoder(**settings)

    def node(self) -> str:
        return _node()

    def encode(self, texts: list[str], batch_size: int | None, dtype: str = "float32"):
        found = self.encoder.encode_documents(texts, batch_size=batch_size, show_progress=False, dtype=dtype)
        return found.vectors, found.offsets, found.truncated, found.token_ids


class RayEncoder:
    """An :class:`Encoder` whose :meth:`encode_documents` runs on ``workers`` Ray actors (one CPU
    and ``threads`` threads each); everything else (the tokenizer, the identity an index records)
    is the local encoder's, made with the same settings."""

    def __init__(self, model=None, *, workers: int = 2, threads: int = 1, **settings):
        ray = _ray()
        positive_int("--ray-", "workers", workers)
        connect()  # a local instance unless this process has joined a cluster
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if workers > cpus:  # the workers past the cluster's CPUs would never start, and their share never come back
            raise ConfigError(f"--ray-workers {workers} asks for {workers} CPUs (one a worker); the Ray cluster has {cpus}: use at most {cpus}.")
        self.local = Encoder(model, threads=threads, **settings)
        self.local.onnx_ready()  # the export made once, here (workers on this machine read it from the cache), or PyTorch everywhere
        actor = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_EncoderWorker)
        self.workers = [actor.remote(worker_settings(self.local, threads)) for _ in range(workers)]

    def nodes(self) -> list[str]:
        """The Ray node each worker runs on."""
        return _ray().get([worker.node.remote() for worker in self.workers])

    def __getattr__(self, name):
        return getattr(self.local, name)

    def close(self) -> None:
        """Stop the workers."""
        ray = _ray()
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []

    def encode_documents(self, texts, *, batch_size=None, threads=None, show_progress=None, dtype="float32") -> TokenVectors:
        texts, dtype = checked_texts(texts, False), vector_dtype(dtype)  # the local encoder's messages (a string alone was read as one document a letter)
        if not self.workers:
            raise EncoderError("this RayEncoder is closed (its workers stopped); make a new one to encode.")
        return dealt(self.local, texts, len(self.workers), batch_size, lambda w, part: self.workers[w].encode.remote(part, batch_size, dtype.name), _ray().get, show_progress, dtype)
