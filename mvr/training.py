"""Training a projection head on training queries: ``mvr train-projection`` (issue 16, lever 4).

The transformer stays frozen: the head (mvr/vectors/heads.py) learns on the vectors an index
already stores and on the training queries' token vectors, so it trains on a CPU in minutes.

- Queries: the judged queries of a training split, a seeded share held out for validation.
- Each training query: one of its relevant documents, ``negatives`` documents drawn from the
  hard candidates (bm25s's top ``mined`` and the index's MaxSim top ``mined``, judged ones
  removed), and every other document of the batch (in-batch negatives; those judged relevant to
  the query are masked).
- Loss: cross-entropy over MaxSim scores (mean over the query's tokens) divided by
  ``temperature``; Adam.
- Optionally, a learned weight per query token (``query_weights``; issue 16's lever 3): MaxSim
  sums ``w_i max_j q_i . d_j`` with ``w_i = softplus(x_i . u + c)`` from the token's own vector.
- Start: uncentred PCA of the stored vectors to ``dim`` (the identity when ``dim`` is the
  model's), the feed-forward of a residual head at zero, so epoch 0 is the plain (or PCA) model.
- Validation after each epoch: nDCG@10 (trec_eval's) of the held-out queries' candidates
  reranked by the head's MaxSim; the best epoch's weights are kept.

    mvr train-projection ../shared/datasets/scifact --index scifact --split train --output scifact-head.npz
"""

from __future__ import annotations

import time

import numpy as np

from .errors import ConfigError, QueryError, is_number
from .progress import progress
from .vectors import fit_pca
from .tuning import ideal_dcg
from .vectors.heads import KINDS, Head



def _pools(index, texts: list[str], encoded, mined: int) -> list[np.ndarray]:
    """Each query's hard candidates: bm25s's top ``mined`` (where the index has it) and the
    index's MaxSim top ``mined``, as positions, first found first."""
    runs = [index.search_encoded(encoded, mined, first_stage="exhaustive", preset="none").indices]
    if index.has_stage("bm25s"):
        runs.append(index.search_encoded(None, mined, texts=texts, first_stage="bm25s", rerank=False, preset="none").indices)
    pools = []
    for q in range(len(texts)):
        rows = np.concatenate([run[q][run[q] >= 0] for run in runs])
        pools.append(rows[np.sort(np.unique(rows, return_index=True)[1])].astype(np.int64))
    return pools


class _Documents:
    """The stored vectors of the documents training reads, padded: float16 torch ``(n, L, dim)``."""

    def __init__(self, index, positions: np.ndarray):
        import torch

        self.row = {int(p): i for i, p in enumerate(positions)}
        vectors = [index.document_vectors(int(p)) for p in positions]
        self.lengths = torch.tensor([len(v) for v in vectors])
        width = int(self.lengths.max())
        self.vectors = torch.zeros((len(vectors), width, index.dim), dtype=torch.float16)
        for i, v in enumerate(vectors):
            self.vectors[i, : len(v)] = torch.from_numpy(v.astype(np.float16))

    def take(self, positions):
        import torch

        rows = torch.tensor([self.row[int(p)] for p in positions])
        lengths = self.lengths[rows]
        width = int(lengths.max())
        mask = torch.arange(width)[None, :] < lengths[:, None]
        return self.vectors[rows, :width].float(), mask


def _module(head: Head):
    """The head as a torch module (float32 parameters initialised from ``head``)."""
    import torch

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kind = head.kind
            self.skip = torch.nn.Parameter(torch.from_numpy(head.skip.copy()))
            if head.kind == "residual":
                self.up = torch.nn.Parameter(torch.from_numpy(head.up.copy()))
                self.bias = torch.nn.Parameter(torch.from_numpy(head.bias.copy()))
                self.down = torch.nn.Parameter(torch.from_numpy(head.down.copy()))
            if head.query_weight is not None:
                self.query_weight = torch.nn.Parameter(torch.from_numpy(head.query_weight.copy()))

        def forward(self, x):
            y = x @ self.skip
            if self.kind == "residual":
                y = y + torch.nn.functional.gelu(x @ self.up + self.bias) @ self.down
            return torch.nn.functional.normalize(y, dim=-1)

        def queries(self, x):
            y = self(x)
            if hasattr(self, "query_weight"):
                y = y * torch.nn.functional.softplus(x @ self.query_weight[:-1] + self.query_weight[-1])[..., None]
            return y

        def to_head(self) -> Head:
            parts = {k: getattr(self, k).detach().numpy().copy() for k in ("skip", "up", "bias", "down", "query_weight") if hasattr(self, k)}
            return Head(self.kind, **parts)

    return Module()


def _maxsim(q, q_mask, d, d_mask):
    """Mean-over-query-tokens MaxSim of every query ``(B, Lq, dim)`` with every document ``(N, Ld, dim)``: ``(B, N)``."""
    import torch

    sim = torch.einsum("bid,njd->bnij", q, d)
    sim = sim.masked_fill(~d_mask[None, :, None, :], -1e4).amax(dim=-1)
    return (sim * q_mask[:, None, :]).sum(-1) / q_mask.sum(-1, keepdim=True)


def _ndcg(order: list, judged: dict) -> float:
    gains = np.array([max(judged.get(d, 0), 0) for d in order[:10]], dtype=np.float64)
    ideal = ideal_dcg(judged)
    return float(np.dot(gains, 1.0 / np.log2(np.arange(2, len(gains) + 2))) / ideal) if ideal > 0 else 0.0


def train_projection(
    index, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, kind: str = "linear", dim: int | None = 128, hidden: int | None = None,
    epochs: int = 20, batch_size: int = 16, negatives: int = 7, mined: int = 50, temperature: float = 0.05, learning_rate: float = 1e-3,
    validation: float = 0.2, query_weights: bool = False, seed: int = 0, show_progress=None,
) -> tuple[Head, dict]:
    """Train a projection head for ``index``'s model on ``queries`` / ``qrels`` (a training split).
    ``dim``: output dimensions (None: the model's); ``hidden``: a residual head's feed-forward width
    (default: twice the model's dimensions); ``query_weights``: also learn a weight for each query
    token (softplus of a linear function of its vector, 1 at the start). Returns the head of the best validation epoch and a
    report (its settings, queries, and nDCG@10 of the held-out queries per epoch)."""
    import torch

    if kind not in KINDS:
        raise ConfigError(f"unknown projection head kind {kind!r}; available: {', '.join(KINDS)}.")
    if index.projection is not None:
        raise ConfigError(f"index {index.name!r} already projects its vectors (--pca-dim or --projection); train on an index of the model's own vectors.")
    if index.config.passage_tokens:
        raise QueryError(f"index {index.name!r} holds passages; train on an index of whole documents, as the judgements are.")
    dim_in = index.dim
    dim = dim_in if dim is None else int(dim)
    if not 1 <= dim <= dim_in:
        raise ConfigError(f"dim must lie in [1, {dim_in}] (the model's dimensions), got {dim}.")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 2), ("negatives", negatives, 0), ("mined", mined, 1)):
        if not is_number(value, whole=True) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    for name, value, high, within in (("temperature", temperature, 10, "(0, 10]"), ("learning_rate", learning_rate, 1, "(0, 1]"), ("validation", validation, 1, "(0, 1): the share of queries held out, on which the best epoch is chosen")):
        if not is_number(value) or not 0 < value <= high or (name == "validation" and value == high):
            raise ConfigError(f"{name} must lie in {within}, got {value!r}.")
    if not is_number(seed, whole=True) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}.")
    rng = np.random.default_rng(seed)
    judged = {d for q in queries if q in qrels for d in qrels[q]}
    live = {d for d in judged if d in index}  # live documents only (deleted rows keep their ids)
    qids = [q for q in queries if q in qrels and any(r > 0 and d in live for d, r in qrels[q].items())]
    if len(qids) < 2:
        raise QueryError("training needs at least two queries with a relevant document in the index; check the split and the index's corpus.")
    order = rng.permutation(len(qids))
    held = int(round(validation * len(qids)))
    val_ids, train_ids = [qids[i] for i in order[:held]], [qids[i] for i in order[held:]]
    if not train_ids or not val_ids:
        raise QueryError(f"validation={validation} holds out {len(val_ids)} of the {len(qids)} queries; choose it so that some train and some pick the epoch.")
    texts = [queries[q] for q in qids]
    started = time.perf_counter()
    encoded = index.encode_queries(texts)
    pools = dict(zip(qids, _pools(index, texts, encoded, mined)))
    q_vectors = {q: encoded.vectors[encoded.offsets[i] : encoded.offsets[i + 1]] for i, q in enumerate(qids)}
    positive = {q: np.array([index.position(d) for d, r in qrels[q].items() if r > 0 and d in live], dtype=np.int64) for q in qids}
    hard = {q: pools[q][~np.isin(pools[q], [index.position(d) for d in qrels[q] if d in live])] for q in qids}
    needed = np.unique(np.concatenate([*pools.values(), *(positive[q] for q in train_ids)]))
    documents = _Documents(index, needed)
    doc_ids = index.doc_ids

    sample = documents.vectors[documents.vectors.abs().sum(-1) > 0][:200_000].float().numpy()
    skip = fit_pca(sample, dim) if dim < dim_in else np.eye(dim_in, dtype=np.float32)
    width = hidden or 2 * dim_in
    weigh = np.concatenate([np.zeros(dim_in), [np.log(np.e - 1.0)]]) if query_weights else None  # softplus(c) = 1
    init = Head(kind, skip, query_weight=weigh) if kind == "linear" else Head(kind, skip, rng.normal(0, dim_in**-0.5, (dim_in, width)), np.zeros(width), np.zeros((width, dim)), weigh)
    module = _module(init)
    optimiser = torch.optim.Adam(module.parameters(), lr=learning_rate)

    def queries_tensor(ids):
        rows = [torch.from_numpy(q_vectors[q]) for q in ids]
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.bool) for r in rows], batch_first=True)
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), mask

    def validate(model) -> float:
        if not val_ids:
            return float("nan")
        with torch.no_grad():
            scores = []
            for q in val_ids:
                qv, qm = queries_tensor([q])
                dv, dm = documents.take(pools[q])
                s = _maxsim(model.queries(qv) if model else qv, qm, model(dv) if model else dv, dm)[0].numpy()
                ranked = [str(doc_ids[p]) for p in pools[q][np.argsort(-s, kind="stable")]]
                scores.append(_ndcg([d for d in ranked if d != q], qrels[q]))
        return round(float(np.mean(scores)), 4)

    history = [{"epoch": 0, "validation_ndcg_at_10": validate(module)}]
    untrained = validate(None)
    best, best_state = history[0]["validation_ndcg_at_10"], {k: v.clone() for k, v in module.state_dict().items()}
    bar = progress(total=epochs * ((len(train_ids) + batch_size - 1) // batch_size), desc="training", unit="batch", show=show_progress)
    for epoch in range(1, epochs + 1):
        losses = []
        for start in range(0, len(train_ids), batch_size):
            ids = train_ids[start : start + batch_size]
            docs = []
            for q in ids:
                docs.append(int(rng.choice(positive[q])))
                docs.extend(int(p) for p in rng.choice(hard[q], size=min(negatives, len(hard[q])), replace=False))
            labels, at = [], 0
            for q in ids:
                labels.append(at)
                at += 1 + min(negatives, len(hard[q]))
            qv, qm = queries_tensor(ids)
            dv, dm = documents.take(docs)
            scores = _maxsim(module.queries(qv), qm, module(dv), dm)
            judged = torch.tensor([[qrels[q].get(str(doc_ids[p]), 0) > 0 and j != labels[b] for j, p in enumerate(docs)] for b, q in enumerate(ids)])
            loss = torch.nn.functional.cross_entropy(scores.masked_fill(judged, -1e4) / temperature, torch.tensor(labels))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.update(1)
        rng.shuffle(train_ids)
        score = validate(module)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "validation_ndcg_at_10": score})
        if not val_ids or score > best:
            best, best_state = score, {k: v.clone() for k, v in module.state_dict().items()}
    bar.close()
    module.load_state_dict(best_state)
    trained = module.to_head()
    trained.model_sha256 = index.manifest["encoder"]["weights_sha256"]
    report = {
        "kind": kind, "dim_in": dim_in, "dim": dim, "hidden": width if kind == "residual" else None, "epochs": epochs, "batch_size": batch_size,
        "negatives": negatives, "mined": mined, "temperature": temperature, "learning_rate": learning_rate, "query_weights": query_weights, "seed": seed,
        "train_queries": len(train_ids), "validation_queries": len(val_ids),
        "validation_ndcg_at_10": {"model": untrained, "start": history[0]["validation_ndcg_at_10"], "best": best,
                                  "best_epoch": next((h["epoch"] for h in history if h["validation_ndcg_at_10"] == best), epochs)},
        "history": history, "seconds": round(time.perf_counter() - started, 1),
    }
    return trained, report
