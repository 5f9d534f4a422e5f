"""What encoders hand out: :class:`TokenVectors` (one flat float32 matrix plus offsets, never
padded 3-D tensors), and the token classes that pruning and clustering name."""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass

import numpy as np


# A text longer than 64 characters per kept token is cut before the tokenizer sees it (a 10 MB
# one-line document would otherwise be tokenised whole, 1.5 GB, to keep a few hundred tokens).
# WordPiece averages 4-6 characters a token on prose, so one cut nearly always suffices; a cut
# that yields too few tokens is widened (see input_ids), so the figure never changes the tokens.
CHARS_PER_TOKEN = 64
_BREAKS = (" ", "\n", "\t", "\r")


def prefix_end(text: str, limit: int) -> int:
    """Where to cut ``text`` to at most ``limit`` characters so that its tokens are the first
    tokens of the whole text: before a run of ASCII whitespace, where every tokenizer mvr reads
    (WordPiece, byte-level BPE, SentencePiece) ends a word; 0 where the window has none."""
    if len(text) <= limit:
        return len(text)
    end = max(text.rfind(c, 0, limit + 1) for c in _BREAKS)
    while end > 0 and text[end - 1] in _BREAKS:
        end -= 1
    return max(end, 0)


def input_ids(tokenizer, texts: list[str], marker: int | None, maxlen: int, expand: bool = False) -> tuple[list[list[int]], np.ndarray]:
    """Model input ids of each text ([CLS], ``marker`` if any, the text's tokens cut to fit
    ``maxlen``, [SEP]; ``expand``: padded with [MASK] to ``maxlen``), and which texts were cut."""
    body = maxlen - 2 - (marker is not None)
    if not texts:
        return [], np.zeros(0, dtype=bool)
    # One token more than fits tells truncated texts apart from those that fit exactly. A cut
    # text giving no more than that may have lost tokens past its cut: it is tried again with a
    # window four times as wide, up to the whole text.
    pieces: list[list[int]] = [[] for _ in texts]
    pending = list(range(len(texts)))
    window = CHARS_PER_TOKEN * (body + 1) if tokenizer.truncation_side == "right" else None  # "left" keeps the end
    while pending:
        ends = [len(texts[i]) if window is None else prefix_end(texts[i], window) for i in pending]
        found = tokenizer([texts[i][:end] for i, end in zip(pending, ends)], add_special_tokens=False, truncation=True, max_length=body + 1)["input_ids"]
        retry = []
        for i, end, ids in zip(pending, ends, found):
            if end < len(texts[i]) and len(ids) <= body:
                retry.append(i)
            else:
                pieces[i] = ids
        pending, window = retry, (window or 0) * 4
    truncated = np.array([len(ids) > body for ids in pieces], dtype=bool)
    head = [tokenizer.cls_token_id] + ([marker] if marker is not None else [])
    sequences = [head + ids[:body] + [tokenizer.sep_token_id] for ids in pieces]
    if expand:
        sequences = [ids + [tokenizer.mask_token_id] * (maxlen - len(ids)) for ids in sequences]
    return sequences, truncated


def character_spans(tokenizer, text: str, expected: list[int], head: int, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The vocabulary id and character span in ``text`` of each of ``expected`` (the model input ids
    :func:`input_ids` gives ``text``: ``head`` special tokens, the body, [SEP]) not in ``skip``;
    ``(-1, -1)`` for the special ones; None where ``tokenizer`` tokenises the text otherwise."""
    body = expected[head:-1]
    for window in (prefix_end(text, CHARS_PER_TOKEN * 4 * (len(body) + 1)), len(text)):  # the head first, as input_ids reads it
        found = tokenizer(text[:window], add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=len(body) + 1)
        if found["input_ids"][: len(body)] == body:
            break
    else:
        return None
    ids = np.array(expected, dtype=np.int64)
    spans = np.array([(-1, -1)] * head + [tuple(s) for s in found["offset_mapping"][: len(body)]] + [(-1, -1)], dtype=np.int64).reshape(-1, 2)
    keep = ~np.isin(ids, skip)
    return ids[keep], spans[keep]


@dataclass(frozen=True)
class TokenVectors:
    """Token vectors of several texts: ``vectors`` float32 (float16 where asked) ``(n_tokens, dim)``, ``offsets`` int64
    ``(n_texts + 1,)``; text ``i`` owns rows ``offsets[i]:offsets[i + 1]``. ``token_ids`` int32
    ``(n_tokens,)``: the vocabulary id behind each vector (None where unknown); ``truncated`` bool
    ``(n_texts,)``: the text was cut at the maximum length; ``model``: the sha256 of the weights
    that encoded them (None: not known), which a search of an index of another model refuses."""

    vectors: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    model: str | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def token_classes(tokenizer, marker_ids=()) -> dict[str, np.ndarray]:
    """Vocabulary ids of each class that pruning and clustering name: "special" ([CLS], [SEP],
    [PAD], [MASK] and the model's markers), "punctuation" (word pieces made only of punctuation)
    and "stopwords" (whole words of Lucene's English stopword list)."""
    from bm25s.stopwords import STOPWORDS_EN

    tok = tokenizer
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, *marker_ids}
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    punctuation = [i for i, p in enumerate(pieces) if p and p.removeprefix("##") and all(ch in string.punctuation for ch in p.removeprefix("##"))]
    stop_set = set(STOPWORDS_EN)
    stopwords = [i for i, p in enumerate(pieces) if p in stop_set]
    classes = {"special": special, "punctuation": punctuation, "stopwords": stopwords}
    return {name: np.array(sorted(i for i in ids if i is not None), dtype=np.int32) for name, ids in classes.items()}


def vector_dtype(dtype) -> np.dtype:
    """``dtype`` where vectors may be handed out in it (float32, or float16 as stored), else an
    EncoderError."""
    from ..errors import EncoderError

    try:
        found = np.dtype(dtype)
    except Exception:  # TypeError mostly; a malformed string can raise others
        found = None
    if found not in (np.float32, np.float16):
        raise EncoderError(f"dtype must be float32 or float16, got {dtype!r}.")
    return found


def checked_texts(texts, is_query: bool) -> list[str]:
    """``texts`` as a list of strings (a query alone as one), or an EncoderError for what is not:
    a document string alone (it would be read letter by letter), bytes, a mapping, a number, None,
    an element that is no string or holds a lone surrogate (the tokenizer fails on it)."""
    from ..errors import EncoderError, is_utf8, many

    if isinstance(texts, str) and is_query:
        return [texts]
    texts = list(many(texts, f"{'queries' if is_query else 'documents'} are a list of strings", EncoderError))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EncoderError(f"text #{i} is a {type(text).__name__}, expected str.")
        if not is_utf8(text):
            raise EncoderError(f"text #{i} holds a lone surrogate (no character: it was decoded wrongly); give it as UTF-8 text.")
    return texts


def tokenizer_checksum(tokenizer) -> str:
    """sha256 of how ``tokenizer`` cuts text into ids: a fast one's serialised normaliser,
    pre-tokeniser, vocabulary and post-processor (its padding and truncation, which calls change,
    left out), a slow one's vocabulary and settings. The same weights with another tokenizer (one
    that no longer lower-cases, say) give other ids, so an index records it with its encoder."""
    if getattr(tokenizer, "is_fast", False):
        return backend_checksum(tokenizer.backend_tokenizer)
    form = {"vocab": sorted(tokenizer.get_vocab().items()), "settings": {k: v for k, v in tokenizer.init_kwargs.items() if isinstance(v, (str, int, float, bool))}}
    return _form_checksum(form)


def backend_checksum(backend) -> str:
    """:func:`tokenizer_checksum` of a fast tokenizer, from its ``tokenizers.Tokenizer`` alone
    (as mvr/encode/queries.py reads ``tokenizer.json``)."""
    return _form_checksum({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")})


def _form_checksum(form: dict) -> str:
    return hashlib.sha256(json.dumps(form, sort_keys=True, default=str).encode("utf-8")).hexdigest()
