"""Linear dimension reduction of token vectors, fitted at index time and applied to queries.

Uncentred PCA (the top eigenvectors of the token second-moment matrix ``X^T X / n``), then
re-normalisation: inner products of unit vectors are what MaxSim compares, so the reduction keeps
the directions that carry most of the squared inner-product mass (as LeanVec's query-agnostic
variant does), and the mean is not removed.
"""

from __future__ import annotations

import numpy as np


def fit_pca(sample: np.ndarray, n_components: int) -> np.ndarray:
    """Projection float32 ``(dim, n_components)`` from a float ``(n, dim)`` sample of token vectors."""
    sample = np.asarray(sample, dtype=np.float64)
    second_moment = sample.T @ sample / max(len(sample), 1)
    eigenvalues, eigenvectors = np.linalg.eigh(second_moment)
    components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:n_components]]
    # Deterministic signs: the largest-magnitude entry of each component is positive.
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_components)])
    return np.ascontiguousarray(components * signs, dtype=np.float32)


def project(vectors: np.ndarray, projection, queries: bool = False) -> np.ndarray:
    """Apply a projection (a matrix, or a trained :class:`~mvr.vectors.heads.Head`) and re-normalise
    rows (rows of zero norm stay zero); identity when None. ``queries``: the vectors are a query's
    tokens (a head may weigh them)."""
    if projection is None:
        return vectors
    if not isinstance(projection, np.ndarray):  # a trained head (vectors/heads.py) projects itself
        return projection.queries(vectors) if queries else projection(vectors)
    return normalise_rows(np.asarray(vectors, dtype=np.float32) @ projection)


def normalise_rows(rows: np.ndarray) -> np.ndarray:
    """L2-normalise float rows in place (rows of zero norm stay zero); returns them."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return rows


def stored(vectors: np.ndarray, projection) -> np.ndarray:
    """A document's token vectors as an index stores them, float16: the model's vectors in float16
    (a build's spool, mvr/encoding.py), then projected (:func:`project`), then float16."""
    spooled = half(vectors)
    if projection is None:  # float16 to float32 and back is the identity (and took a second per 500,000 vectors)
        return spooled
    return half(project(torch_cast(spooled, "float32"), projection))


def half(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` in float16, rounded as NumPy's ``astype`` rounds (to nearest, ties to even: the
    same bits, but for a signalling NaN, which comes back quiet); float32 through PyTorch's
    vectorised conversion, about 4x NumPy's on one thread."""
    vectors = np.asarray(vectors)
    return torch_cast(vectors, "float16") if vectors.dtype == np.float32 else vectors.astype(np.float16, copy=False)


def torch_cast(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """float16 <-> float32 with PyTorch (exact one way, rounded to nearest even the other)."""
    import torch

    return torch.from_numpy(np.require(vectors, requirements=("C", "W"))).to(getattr(torch, dtype)).numpy()  # torch warns at a read-only array
