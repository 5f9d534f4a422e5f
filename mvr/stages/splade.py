"""Learned sparse first stage (SPLADE, Formal et al. 2021): a masked-LM's vocabulary logits turned
into term weights, ``w_t = max over tokens of log(1 + relu(logit_t))``, for documents and queries
alike; a document's score is the dot product of the two sparse vectors.

The document weights are kept as an inverted index of our own (``<index>/splade/``: a CSR matrix
of documents x vocabulary as three ``.npy`` arrays, transposed to CSC on open), searched exactly
by a sparse matrix-vector product.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..encode.forms import weight_files_of, weights_checksum
from ..encode.runtimes import quiet_transformers
from ..errors import EncoderError, QueryError
from ..progress import progress
from ..storage.formats import SPARSE_FORMAT, SPARSE_VERSION
from ..threads import cpu_threads, load_npy
from .base import BuildSource, Candidates, QueryBatch, text_stage_manifest, top_n


class SpladeEncoder:
    """Sparse term weights from a local masked-LM folder (e.g. ``../shared/models/splade-tiny``)."""

    def __init__(self, model: str | Path, *, query_maxlen: int = 64, doc_maxlen: int = 256, batch_size: int = 8, threads: int | None = None):
        from ..encode.runtimes import transformers_names

        AutoModelForMaskedLM, AutoTokenizer = transformers_names("AutoModelForMaskedLM", "AutoTokenizer")

        self.path = Path(model).resolve()
        if not (self.path / "config.json").is_file():
            raise EncoderError(f"SPLADE model folder not found or without config.json: {self.path}.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            with quiet_transformers():
                self.model, loaded = AutoModelForMaskedLM.from_pretrained(str(self.path), local_files_only=True, output_loading_info=True)
        except Exception as exc:  # a damaged weight file raises the safetensors library's own error
            raise EncoderError(f"could not load a masked-LM from {self.path}: {' '.join(str(exc).split())}") from None
        if loaded.get("missing_keys"):  # made up at random by transformers (a sentence encoder has no masked-LM head): scores of nothing
            raise EncoderError(f"{self.path} holds no whole masked-LM (its weights lack {sorted(loaded['missing_keys'])[0]!r} and {len(loaded['missing_keys']) - 1} more): "
                               "a SPLADE model is a masked LM with its vocabulary head, such as naver/splade-cocondenser-ensembledistil.")
        self.model.eval()
        self.model.float()
        self.query_maxlen, self.doc_maxlen = query_maxlen, doc_maxlen
        self.batch_size, self.threads = batch_size, threads
        self.vocab_size = int(self.model.config.vocab_size)
        self.identity = {
            "name": self.path.name,
            "source": str(self.path),
            "weights_sha256": weights_checksum(weight_files_of(self.path)),
            "vocab_size": self.vocab_size,
            "query_maxlen": query_maxlen,
            "doc_maxlen": doc_maxlen,
        }

    def encode(self, texts: Sequence[str], maxlen: int, show_progress=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: (term ids int32, weights float32) of its non-zero vocabulary weights."""
        import torch

        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list = [None] * len(texts)
        bar = progress(total=len(texts), desc="SPLADE encoding", unit="text", show=show_progress)
        with cpu_threads(self.threads, "torch"), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[start : start + self.batch_size]]
                inputs = self.tokenizer(batch, truncation=True, max_length=maxlen, padding=True, return_tensors="pt")
                logits = self.model(**inputs).logits
                weights = torch.log1p(torch.relu(logits)) * inputs["attention_mask"].unsqueeze(-1)
                pooled = weights.max(dim=1).values
                for row, original in enumerate(order[start : start + self.batch_size]):
                    terms = torch.nonzero(pooled[row]).squeeze(-1)
                    out[original] = (terms.numpy().astype(np.int32), pooled[row, terms].numpy().astype(np.float32))
                bar.update(len(batch))
        bar.close()
        return out


class SpladeStage:
    """The SPLADE first stage of an index (``<index>/splade/``): exact search by dot product."""

    name = "splade"
    format, version = SPARSE_FORMAT, SPARSE_VERSION
    binds = "doc_ids"

    @classmethod
    def check(cls, settings, dim: int) -> None:
        if settings is None:
            raise QueryError("the splade first stage needs a masked-LM model folder (splade_model=PATH, --splade-model PATH).")

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings) -> dict:
        """``settings``: the masked-LM folder or a :class:`SpladeEncoder`."""
        cls.check(settings, source.dim)
        encoder = settings if isinstance(settings, SpladeEncoder) else SpladeEncoder(settings)
        started = time.perf_counter()
        encoded = encoder.encode([text for _, text in source.texts()], encoder.doc_maxlen, show_progress=source.show_progress)
        lengths = np.array([len(terms) for terms, _ in encoded], dtype=np.int64)
        indptr = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.concatenate([t for t, _ in encoded]) if encoded else np.zeros(0, np.int32)
        weights = np.concatenate([w for _, w in encoded]) if encoded else np.zeros(0, np.float32)
        np.save(folder / "indptr.npy", indptr)
        np.save(folder / "indices.npy", indices.astype(np.int32))
        np.save(folder / "weights.npy", weights.astype(np.float32))
        terms = round(float(lengths.mean()) if len(lengths) else 0.0, 1)
        return text_stage_manifest(cls.name, source, len(encoded), time.perf_counter() - started, model=encoder.identity, terms_per_document=terms)

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "SpladeStage":
        model = index.splade_model or manifest["model"]["source"]
        if not isinstance(model, SpladeEncoder) and not Path(model).is_dir():
            raise EncoderError(f"the SPLADE model {model} of index {index.name!r} is not there any more; pass splade_model=PATH (--splade-model).")
        return cls(folder, model, manifest["model"])

    def __init__(self, folder: Path, model: str | Path | SpladeEncoder, identity: dict):
        import scipy.sparse

        self.encoder = model if isinstance(model, SpladeEncoder) else SpladeEncoder(model, query_maxlen=identity["query_maxlen"], doc_maxlen=identity["doc_maxlen"])
        differences = [k for k in ("weights_sha256", "vocab_size", "query_maxlen", "doc_maxlen") if self.encoder.identity[k] != identity[k]]
        if differences:
            raise EncoderError(f"the SPLADE model at {self.encoder.path} differs from the one the index was built with ({', '.join(differences)}).")
        indptr, indices, weights = (load_npy(folder / f"{name}.npy") for name in ("indptr", "indices", "weights"))
        self.matrix = scipy.sparse.csr_matrix((weights, indices, indptr), shape=(len(indptr) - 1, identity["vocab_size"])).tocsc()

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        return self.search_encoded(self.encoder.encode(queries.texts, self.encoder.query_maxlen, show_progress=False), n, allowed)

    def score(self, queries: QueryBatch, positions: list[np.ndarray]) -> list[np.ndarray]:
        """Each query's exact SPLADE score (dot product of term weights) of the documents at its ``positions``."""
        encoded = self.encoder.encode(queries.texts, self.encoder.query_maxlen, show_progress=False)
        return [np.asarray(self.matrix[:, terms] @ weights).ravel()[rows].astype(np.float32) if len(terms) else np.zeros(len(rows), np.float32) for (terms, weights), rows in zip(encoded, positions)]

    def search_encoded(self, queries: Sequence[tuple[np.ndarray, np.ndarray]], n: int, allowed=None) -> list[Candidates]:
        """Top-``n`` rows and scores for queries given as (term ids, weights)."""
        out = []
        for terms, weights in queries:
            if len(terms) == 0:
                out.append(Candidates.empty())
                continue
            out.append(top_n(np.asarray(self.matrix[:, terms] @ weights).ravel(), n, allowed))
        return out
