"""Text -> token vectors: model forms (``forms``), runtimes torch / ONNX / int8 (``runtimes``),
the encoder (``encoder``) and what it returns (``tokens``)."""

import copyreg

from .encoder import Encoder
from .forms import DEFAULT_MODEL_NAME, EncoderSpec, default_model_path, detect_spec, encoder_settings
from .tokens import TokenVectors, token_classes

__all__ = ["Encoder", "EncoderSpec", "TokenVectors", "DEFAULT_MODEL_NAME", "default_model_path", "detect_spec", "token_classes"]


def _settings(encoder: Encoder) -> tuple:
    """An Encoder pickled or deep-copied (a framework's copy of a retriever, another process): the
    settings that load it again, not its model's weights; a copy made of its path alone encoded
    with the model's own lengths and runtimes, which the index then refused, or did not."""
    return _load, (encoder_settings(encoder),)


def _load(settings: dict) -> Encoder:
    return Encoder(**settings)


copyreg.pickle(Encoder, _settings)
