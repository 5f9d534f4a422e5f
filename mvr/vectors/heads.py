"""A trained projection head on top of the model's token vectors (mvr/training.py trains it).

Two kinds, after "Simple Projection Variants Improve ColBERT Performance" (Clavié et al., 2025):

    linear     y = x P
    residual   y = x P + gelu(x A + b) B      (a two-layer feed-forward beside the linear skip)

and, optionally, learned query-token weights: a query token's vector is then scaled by
``softplus(x . u + c)``, so it counts for that much in MaxSim (documents are not weighted).

``x``: the encoder's L2-normalised token vectors, ``(n, dim_in)``; ``y`` is re-normalised, so
MaxSim compares unit vectors as before. ``dim`` (the output) may be smaller than ``dim_in``: the
head is then a compression too. Saved as one ``.npz`` (float32 arrays and the kind); an index
keeps its copy as ``projection.npz`` in every segment and applies it to queries and documents
alike, as it does a PCA ``projection.npy``.

    >>> import numpy as np
    >>> head = Head("linear", np.eye(4, 2, dtype=np.float32))
    >>> head.shape, head(np.eye(4, dtype=np.float32)[:2]).tolist()
    ((4, 2), [[1.0, 0.0], [0.0, 1.0]])
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..threads import NPY_LOCK
from .pca import normalise_rows

KINDS = ("linear", "residual")
FORMAT = "mvr-projection-head"
FILE = "projection.npz"  # its name inside a segment


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU, the exact (erf) form torch.nn.functional.gelu computes by default."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@dataclass
class Head:
    kind: str
    skip: np.ndarray  # P, float32 (dim_in, dim)
    up: np.ndarray | None = None  # A, float32 (dim_in, hidden)
    bias: np.ndarray | None = None  # b, float32 (hidden,)
    down: np.ndarray | None = None  # B, float32 (hidden, dim)
    query_weight: np.ndarray | None = None  # (u, c), float32 (dim_in + 1,): query token i weighs softplus(x_i . u + c)
    model_sha256: str | None = None  # the weights of the model it was trained for (its encoder identity's weights_sha256)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown projection head kind {self.kind!r}; available: {', '.join(KINDS)}.")
        if any(np.iscomplexobj(p) for p in (self.skip, self.up, self.bias, self.down, self.query_weight) if p is not None):
            raise ConfigError("a projection head's weights must be real numbers; these are complex.")
        self.skip = np.ascontiguousarray(self.skip, dtype=np.float32)
        if self.skip.ndim != 2 or min(self.skip.shape) < 1 or (self.bias is not None and np.ndim(self.bias) != 1):
            raise ConfigError(f"a projection head's weights must be 2-D matrices with at least one row and column (its bias a vector); skip has shape {self.skip.shape}.")
        parts = (self.up, self.bias, self.down)
        if self.kind == "linear" and any(p is not None for p in parts):
            raise ConfigError("a linear projection head has no feed-forward weights.")
        if self.kind == "residual":
            if any(p is None for p in parts):
                raise ConfigError("a residual projection head needs its feed-forward weights (up, bias, down).")
            self.up, self.bias, self.down = (np.ascontiguousarray(p, dtype=np.float32) for p in parts)
            if self.up.shape != (self.skip.shape[0], len(self.bias)) or self.down.shape != (len(self.bias), self.skip.shape[1]):
                raise ConfigError(f"projection head shapes disagree: skip {self.skip.shape}, up {self.up.shape}, bias {self.bias.shape}, down {self.down.shape}.")
        if self.query_weight is not None:
            self.query_weight = np.ascontiguousarray(self.query_weight, dtype=np.float32)
            if self.query_weight.shape != (self.skip.shape[0] + 1,):
                raise ConfigError(f"a projection head's query weights must be {self.skip.shape[0] + 1} numbers, got shape {self.query_weight.shape}.")
            parts = (*parts, self.query_weight)
        if not all(np.isfinite(p).all() for p in (self.skip, *(p for p in parts if p is not None))):
            raise ConfigError("a projection head's weights must be finite 2-D matrices.")
        if not self.skip.any() and (self.down is None or not self.down.any()):
            raise ConfigError("a projection head whose weights are all zero maps every vector to zero.")

    @property
    def shape(self) -> tuple[int, int]:
        """``(dim_in, dim)``, as a projection matrix's shape reads."""
        return self.skip.shape

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """Project float ``(n, dim_in)`` rows and re-normalise them (rows of zero norm stay zero)."""
        x = np.asarray(vectors, dtype=np.float32)
        y = x @ self.skip
        if self.kind == "residual":
            y += _gelu(x @ self.up + self.bias).astype(np.float32) @ self.down
        with np.errstate(over="ignore", invalid="ignore"):  # finite weights whose products, or their squares, overflow float32
            if not np.isfinite(np.einsum("ij,ij->i", y, y)).all():
                raise ConfigError("the projection head's outputs overflow float32 (its weights are too large); train it again with `mvr train-projection`.")
        return normalise_rows(y)

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query token vectors: projected as documents are, then each scaled by its learned weight
        (when the head has them): MaxSim sums ``w_i max_j q_i . d_j``, since w_i > 0."""
        y = self(vectors)
        if self.query_weight is not None:
            logits = np.asarray(vectors, dtype=np.float32) @ self.query_weight[:-1] + self.query_weight[-1]
            y *= np.logaddexp(0.0, logits).astype(np.float32)[:, None]  # softplus
        return y

    def arrays(self) -> dict[str, np.ndarray]:
        parts = {"skip": self.skip, "up": self.up, "bias": self.bias, "down": self.down, "query_weight": self.query_weight}
        model = {"model_sha256": np.array(self.model_sha256)} if self.model_sha256 else {}
        return {"format": np.array(FORMAT), "kind": np.array(self.kind), **model, **{k: v for k, v in parts.items() if v is not None}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the head as ``path`` (an .npz), whole or not at all (a temporary file renamed)."""
        path = Path(path)
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays())
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.kind.encode())
        for array in (self.skip, self.up, self.bias, self.down, self.query_weight):
            if array is not None:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Head":
        """Read a head written by :meth:`save` (``mvr train-projection``); a clear error otherwise."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no projection head at {path}; train one with `mvr train-projection` (it writes an .npz).")
        try:
            with NPY_LOCK, np.load(path, allow_pickle=False) as data:  # each array's header parsed as it is read (mvr/threads.py)
                if "format" not in data.files or str(data["format"]) != FORMAT:
                    raise ConfigError(f"{path} is not a projection head written by `mvr train-projection`.")
                model = str(data["model_sha256"]) if "model_sha256" in data.files else None
                kind, arrays = str(data["kind"]), [data[k] if k in data.files else None for k in ("skip", "up", "bias", "down", "query_weight")]
            try:
                return cls(kind, *arrays, model)
            except ConfigError as error:
                raise ConfigError(f"{path}: {error}") from None
        except ConfigError:
            raise
        except Exception as exc:  # a truncated or foreign file: zipfile, pickle and value errors alike
            raise ConfigError(f"{path} is not a readable projection head ({type(exc).__name__}: {exc}); train one again with `mvr train-projection`.") from None


def configured(config, model_dim: int) -> Head | None:
    """The head ``config.projection`` names, checked against the model's ``model_dim`` and, once
    an index recorded it (:func:`pinned`), against its checksum; None without one."""
    if config.projection is None:
        return None
    head = Head.load(config.projection)
    if head.shape[0] != model_dim:
        raise ConfigError(f"the projection head {config.projection} takes {head.shape[0]}-dim vectors, the model makes {model_dim}; train one for this model (`mvr train-projection`).")
    if config.projection_sha256 and head.sha256 != config.projection_sha256:
        raise ConfigError(f"the projection head at {config.projection} is not the one this index was built with (its checksum differs); put the original file back there.")
    return head


def pinned(config, encoder: dict):
    """``(config, head)``: ``config`` with its head's path made absolute and its checksum recorded
    (an index that later needs the head again, for documents added once all were deleted, gets the
    same one or a clear error), after checking the head against the model of ``encoder`` (an
    encoder identity); ``(config, None)`` without a head."""
    import dataclasses

    head = configured(config, encoder["dim"])
    if head is None:
        return config, None
    if head.model_sha256 and head.model_sha256 != encoder.get("weights_sha256"):
        raise ConfigError(f"the projection head {config.projection} was trained for another model (weights sha256 {head.model_sha256[:12]}); train one for {encoder.get('name')}.")
    return dataclasses.replace(config, projection=str(Path(config.projection).resolve()), projection_sha256=head.sha256), head


def save_projection(folder: Path, projection) -> None:
    """A segment's projection: a PCA matrix as ``projection.npy``, a trained head as ``projection.npz``."""
    if isinstance(projection, Head):
        projection.save(Path(folder) / FILE)
    else:
        np.save(Path(folder) / "projection.npy", projection)
