"""bm25s (no JVM): PyStemmer's English stemmer and English stopwords, k1=0.9, b=0.4, Lucene's BM25
variant, over the stored ``title + " " + text``. Stored in ``<index>/bm25s/``; document ids are
index rows. A query that analyses to no terms gets no candidates (a search that reranks falls back
to the dense first stage, see mvr/first_stage.py)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..progress import progress_enabled
from ..storage.formats import SPARSE_FORMAT, SPARSE_VERSION
from ..threads import NPY_LOCK
from .base import BuildSource, Candidates, QueryBatch, text_stage_manifest, top_n
from .bm25 import BM25_B, BM25_K1


@functools.cache
def _bm25s():
    """bm25s, its logger set to WARNING once where it is at DEBUG, as the package sets it on import:
    its notes ("Building index from IDs objects") reached any logging handler a program (or
    pyserini's import) had set up. A program may set it back after the first use."""
    import bm25s

    if logging.getLogger("bm25s").level == logging.DEBUG:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _tokens(texts: Sequence[str], show: bool = False):
    import Stemmer

    bm25s = _bm25s()

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=show)


def _canonical(tokens):
    """``tokens`` with term ids given in the terms' sorted order: bm25s numbers them in the order
    of a Python set, which changes from process to process, so that two builds of one corpus
    wrote different files (the same scores)."""
    from bm25s.tokenization import Tokenized

    order = sorted(tokens.vocab)
    new = {tokens.vocab[term]: i for i, term in enumerate(order)}
    return Tokenized(ids=[[new[i] for i in doc] for doc in tokens.ids], vocab={term: i for i, term in enumerate(order)})


class BM25S:
    """bm25s over ``<index>/bm25s``, memory-mapped."""

    name = "bm25s"
    format, version = SPARSE_FORMAT, SPARSE_VERSION
    binds = "doc_ids"

    @classmethod
    def check(cls, settings, dim: int) -> None:
        pass

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings=None) -> dict:
        bm25s = _bm25s()
        started = time.perf_counter()
        corpus = [text for _, text in source.texts()]
        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
        show = progress_enabled(source.show_progress)  # bm25s's own bars, on a terminal
        tokens = _canonical(_tokens(corpus, show))
        if not tokens.vocab:  # no document has a term ("x", "the of and"): bm25s cannot index an empty vocabulary; one no query has
            tokens = type(tokens)(ids=tokens.ids, vocab={"": 0})
        with np.errstate(divide="ignore", invalid="ignore"):  # an average length of 0 then
            retriever.index(tokens, show_progress=show)
        retriever.save(str(folder))
        return text_stage_manifest(cls.name, source, len(corpus), time.perf_counter() - started, bm25={"k1": BM25_K1, "b": BM25_B})

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "BM25S":
        return cls(folder)

    def __init__(self, folder: Path):
        bm25s = _bm25s()  # imported outside the lock
        with NPY_LOCK:  # bm25s parses its .npy headers itself (mvr/threads.py)
            self.retriever = bm25s.BM25.load(str(folder), mmap=True)
        self.n_docs = int(self.retriever.scores["num_docs"])

    def _scores(self, texts):
        """Each query's BM25 score of every document (None for a query with no terms left)."""
        tokens = _tokens(texts)
        terms = {index: term for term, index in tokens.vocab.items()}
        return [self.retriever.get_scores([terms[i] for i in ids]) if ids else None for ids in tokens.ids]  # no ids: nothing left after stopwords and stemming

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        return [Candidates.empty() if scores is None else top_n(scores, n, allowed) for scores in self._scores(queries.texts)]

    def score(self, queries: QueryBatch, positions: list[np.ndarray]) -> list[np.ndarray]:
        """Each query's exact BM25 score of the documents at its ``positions`` (0 without terms)."""
        return [np.zeros(len(rows), np.float32) if scores is None else scores[rows].astype(np.float32) for scores, rows in zip(self._scores(queries.texts), positions)]
