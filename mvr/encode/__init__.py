"""Text -> token vectors: model forms (``forms``), runtimes torch / ONNX / int8 (``runtimes``),
the encoder (``encoder``) and what it returns (``tokens``)."""

from .encoder import Encoder
from .forms import DEFAULT_MODEL_NAME, EncoderSpec, default_model_path, detect_spec
from .tokens import TokenVectors, token_classes

__all__ = ["Encoder", "EncoderSpec", "TokenVectors", "DEFAULT_MODEL_NAME", "default_model_path", "detect_spec", "token_classes"]
