"""The int8 document exports, made from a float ONNX export in a child process
(``python -m mvr.encode.quantize``): ONNX Runtime's quantiser logs advice through the root logger
and configures it on first use, so it never runs in the process that asked for it.

``plain``: every MatMul's weights quantised to int8 per output channel, activations per run (ONNX
Runtime dynamic quantisation): the ``onnx-int8`` runtime, unchanged since indexes first recorded it.

``fused``: the ``onnx-int8-fused`` runtime. ONNX Runtime's transformer optimizer first fuses each
layer's attention (one ``Attention`` node: the Q, K and V products, softmax and mask), the
embeddings with their layer norm, and each bias with its GELU. Residual adds stay apart from their
layer norms: ONNX Runtime's fused ``SkipLayerNormalization`` takes five times as long here as the
two apart (the session that runs the graph turns that fusion off too, see
:data:`FUSED_SESSION_OFF`). The products with weights (and the fused attention's Q/K/V product) are then quantised as
``plain`` does, while the products of two activations (query by key, weights by value) stay
float32. The fused float graph must give the unfused one's outputs (a probe input through both);
where the optimizer fails or they differ, the unfused graph is quantised the same way.
"""

from __future__ import annotations

import json
import sys

import numpy as np

# ONNX Runtime's own graph optimisations that a session running the ``fused`` graph leaves off.
FUSED_SESSION_OFF = ["SkipLayerNormFusion"]


def quantize(source: str, target: str, exclude: list[str] | None = None, ops: list[str] | None = None) -> None:
    """``source`` with its MatMul weights (``ops``: those node kinds) int8 per output channel,
    into ``target``; the nodes named in ``exclude`` stay float."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    extra = {"DefaultTensorType": TensorProto.FLOAT} if ops else {}  # fused ops defeat the quantiser's shape inference
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=ops, nodes_to_exclude=exclude or [], extra_options=extra)


def activation_products(model) -> list[str]:
    """The MatMul nodes of ``model`` (an onnx ModelProto) that multiply two activations."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and not any(name in weights for name in node.input)]


def _outputs(model_bytes: bytes, probe: list[int]) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    ids = np.array([probe], dtype=np.int64)
    given = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return session.run(None, {i.name: given[i.name] for i in session.get_inputs()})[0]


def fuse_and_quantize(source: str, target: str, heads: int, hidden: int, probe: list[int]) -> dict:
    """The ``fused`` export of ``source`` (an export traced through plain attention) into
    ``target``; returns what was fused (empty where the unfused graph was quantised) and why not."""
    import onnx

    plain = onnx.load(source)
    graph, fused, why = plain, {}, None
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
        optimized = optimize_model(source, model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1, optimization_options=options)
        candidate = optimized.model
        counts = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        want, got = _outputs(plain.SerializeToString(), probe), _outputs(candidate.SerializeToString(), probe)
        if want.shape == got.shape and np.allclose(want, got, rtol=1e-3, atol=1e-3):
            graph, fused = candidate, counts
        else:
            why = f"the fused graph's outputs differ from the traced one's by up to {float(np.abs(want - got).max()):.3g}"
    except Exception as error:  # an architecture the optimizer cannot read: the traced graph, unfused
        why = f"{type(error).__name__}: {error}".splitlines()[0]
    staged = f"{target}.fused.onnx"
    onnx.save(graph, staged)
    try:
        quantize(staged, target, exclude=activation_products(graph), ops=["MatMul", "Attention"])
    finally:
        import os

        os.unlink(staged)
    return {"fused": fused, **({"unfused_because": why} if why else {})}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, source, target = argv[:3]
    if kind == "plain":
        quantize(source, target)
        report = {}
    else:
        heads, hidden, probe = int(argv[3]), int(argv[4]), json.loads(argv[5])
        report = fuse_and_quantize(source, target, heads, hidden, probe)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
