"""What one request may ask of a server; each limit has a ``mvr serve`` option of the same name."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, is_number

LIMITS = {
    "max_body_bytes": 32 * 2**20,  # a request body (an add of many documents)
    "max_batch": 128,  # queries in one search request
    "max_query_chars": 8192,  # characters of one query
    "max_k": 1000,
    "max_candidates": 10_000,
    "max_documents": 10_000,  # documents or ids in one add / delete request
    "max_wait": 60.0,  # seconds a write may wait for another process's writer
    "request_seconds": 30.0,  # for a request to arrive whole (headers, then body): slower clients are cut off
}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = LIMITS["max_body_bytes"]
    max_batch: int = LIMITS["max_batch"]
    max_query_chars: int = LIMITS["max_query_chars"]
    max_k: int = LIMITS["max_k"]
    max_candidates: int = LIMITS["max_candidates"]
    max_documents: int = LIMITS["max_documents"]
    max_wait: float = LIMITS["max_wait"]
    request_seconds: float = LIMITS["request_seconds"]

    def __post_init__(self):
        for name, value in vars(self).items():
            if not is_number(value) or not 0 < value < float("inf"):  # nan too: it would reach asyncio's timers
                raise ConfigError(f"server limit {name} must be a positive number, got {value!r}.")
