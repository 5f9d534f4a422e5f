"""Numba hot loops of mvr: arrays in, arrays out; no I/O, no torch, no configuration.

Installed as ``mvr._kernels`` (the name ``kernels`` is taken on PyPI).
"""

from .codecs import maxsim_codes_candidates, maxsim_codes_early_exit, maxsim_codes_many
from .maxsim import maxsim_candidates, maxsim_early_exit, maxsim_exhaustive, maxsim_exhaustive_many, maxsim_matmul_many
from .topk import topk, topk_rows

__all__ = ["maxsim_codes_candidates", "maxsim_codes_early_exit", "maxsim_codes_many", "maxsim_candidates", "maxsim_early_exit", "maxsim_exhaustive", "maxsim_exhaustive_many", "maxsim_matmul_many", "topk", "topk_rows"]
