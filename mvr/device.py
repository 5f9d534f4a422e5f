"""Where PyTorch work runs: the CPU, or a CUDA GPU when there is one.

``device``: "auto" (a CUDA GPU when torch sees one, else the CPU; the default), "cpu", "cuda" or
"cuda:N"; None reads ``$MVR_DEVICE`` (default "auto"). ``precision`` is the autocast type of the
transformer on that device: "fp32" (none), "fp16" or "bf16"; None: fp16 on a GPU, fp32 on the CPU.
The default install's torch is a CPU build: README says how to install a CUDA one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path

from .errors import ConfigError, DeviceMemoryError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
_INSTALL = "install a CUDA build of torch (README, 'GPU'), or use --device cpu"


def cpu_only_torch() -> bool:
    """Whether the installed torch is a build for the CPU alone (no CUDA, no ROCm), read from its
    ``version.py`` without importing it: the import takes about a second, and a search on the CPU
    whose queries run in ONNX Runtime needs nothing else of torch (docs/coldstart.md)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda is None and sys.modules["torch"].version.hip is None
    found = importlib.util.find_spec("torch")
    try:
        text = Path(next(iter(found.submodule_search_locations)), "version.py").read_text(encoding="utf-8")
    except (AttributeError, TypeError, StopIteration, OSError, UnicodeDecodeError):
        return False
    return all(re.search(rf"^{name}\s*(:[^=\n]*)?=\s*None\s*$", text, re.MULTILINE) for name in ("cuda", "hip"))


def resolve_device(device: str | None = None) -> str:
    """"cpu" or "cuda[:N]": what ``device`` (None: ``$MVR_DEVICE``, else "auto") names here."""
    name = device if device is not None else (os.environ.get("MVR_DEVICE") or "auto")
    if not isinstance(name, str) or not (name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit())):
        raise ConfigError(f"device must be one of {', '.join(DEVICES)} or cuda:N; got {name!r}.")
    if name == "cpu" or (name == "auto" and cpu_only_torch()):
        return "cpu"
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        raise ConfigError(f"device {name!r}: torch {torch.__version__} is {build}; {_INSTALL}.")
    at = int(name[5:]) if ":" in name else 0
    if at >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0; choose one of them.")
    return name


def resolve_precision(precision: str | None, device: str) -> str:
    """``precision`` checked, or the default for ``device``: fp16 on a GPU, fp32 on the CPU."""
    if precision is None:
        return "fp32" if device == "cpu" else "fp16"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision == "bf16" and device != "cpu":
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # bf16 arithmetic came with Ampere; before it, torch emulates it slowly, if at all
            raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} ({device}, compute capability {major}.{minor}) has no bf16 arithmetic; use --precision fp16 or fp32.")
    return precision


@contextlib.contextmanager
def device_memory(device: str, doing: str, remedy: str):
    """PyTorch's out-of-memory on ``device`` while ``doing`` made a :class:`DeviceMemoryError`
    whose one line says ``remedy``; the failed work's tensors are let go first (the frames of its
    traceback cleared) and the device's cached blocks given back, for what runs next."""
    import torch

    try:
        yield
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError (torch.OutOfMemoryError from 2.5 on), or cuBLAS's own allocation failing
        if not isinstance(error, torch.cuda.OutOfMemoryError) and "CUBLAS_STATUS_ALLOC_FAILED" not in str(error):
            raise
        traceback.clear_frames(error.__traceback__)
        if device != "cpu":
            torch.cuda.empty_cache()
        raise DeviceMemoryError(f"out of memory on {device} {doing}: {remedy}, or run on the CPU (--device cpu; MVR_DEVICE=cpu for mvr serve).") from None


def autocast_dtype(precision: str):
    """The torch dtype autocast runs in for ``precision`` (None for fp32: no autocast)."""
    import torch

    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
