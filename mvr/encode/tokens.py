"""What encoders hand out: :class:`TokenVectors` (one flat float32 matrix plus offsets, never
padded 3-D tensors), and the token classes that pruning and clustering name."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenVectors:
    """Token vectors of several texts: ``vectors`` float32 ``(n_tokens, dim)``, ``offsets`` int64
    ``(n_texts + 1,)``; text ``i`` owns rows ``offsets[i]:offsets[i + 1]``. ``token_ids`` int32
    ``(n_tokens,)``: the vocabulary id behind each vector (None where unknown); ``truncated`` bool
    ``(n_texts,)``: the text was cut at the maximum length."""

    vectors: np.ndarray
    offsets: np.ndarray
    truncated: np.ndarray | None = None
    token_ids: np.ndarray | None = None

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
