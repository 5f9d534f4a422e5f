"""Document ids: what one may hold (:func:`check_id`, for ids read from a corpus or given to a
build) and the ids a caller asks for (:func:`asked_ids`, to delete, fetch or rerank)."""

from __future__ import annotations

import unicodedata

from .errors import CorpusError, QueryError, is_utf8, many, shown

# Characters that would make an id print as another id, or break a TREC run's whitespace-separated
# fields: controls, invisible format characters, line and paragraph separators (whitespace apart).
_BAD_ID_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible format character", "Zl": "a line separator", "Zp": "a paragraph separator"}


# The longest id, in UTF-8 bytes: ids are stored at the width of the longest one of their segment
# (four bytes a character), so one long id costs every document of its segment as much.
MAX_ID_BYTES = 512


def _id_problem(doc_id: str) -> str | None:
    if not doc_id:
        return "is empty"
    if not is_utf8(doc_id):
        return "holds a lone surrogate (no character: the text was decoded wrongly)"
    if len(doc_id) > MAX_ID_BYTES // 4 and len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
        return f"is {len(doc_id.encode('utf-8'))} bytes long (UTF-8), over the {MAX_ID_BYTES} an id may have"
    for char in doc_id:
        if char.isspace():
            return f"holds whitespace ({char!r})"
        if unicodedata.category(char) in _BAD_ID_CATEGORIES:
            return f"holds {_BAD_ID_CATEGORIES[unicodedata.category(char)]} ({char!r})"
    return None


def check_id(doc_id, where: str, fix: str = "change the id") -> str:
    """``doc_id`` as a string, or CorpusError where it is empty, not a string or integer, or holds
    whitespace or control characters."""
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise CorpusError(f"{where}: the id must be a string or an integer, got {type(doc_id).__name__}.")
    doc_id = str(doc_id)
    problem = _id_problem(doc_id)
    if problem:
        raise CorpusError(
            f"{where}: document id {shown(doc_id)} {problem}; ids must be non-empty, at most {MAX_ID_BYTES} bytes, without whitespace or "
            f"control characters (they are shown and written to TREC runs as one field): {fix}."
        )
    return doc_id


def asked_ids(ids) -> list[str]:
    """The ids a caller asks for (to delete, to fetch) as a list, or a QueryError for one that is no
    string (an integer may be a position given by mistake) or holds a lone surrogate."""
    ids = [ids] if isinstance(ids, str) else list(many(ids, "ids must be a document id or a list of them", QueryError, ordered=False))
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str):
            stored = f" (a document given the id {doc_id} has the id {str(doc_id)!r})" if isinstance(doc_id, int) and not isinstance(doc_id, bool) and abs(doc_id) < 10**18 else ""
            raise QueryError(f"document ids are strings; id #{i} is {type(doc_id).__name__} {shown(doc_id)}{stored}.")
        if not is_utf8(doc_id):
            raise QueryError(f"id #{i} holds a lone surrogate (no character: it was decoded wrongly); send ids as UTF-8.")
    return ids
