#!/usr/bin/env bash
# Reruns the figures of docs/speed.md: the per-stage benchmark (one thread and all cores, kernel
# against NumPy and torch einsum, float32 peak, query encoding in PyTorch and ONNX Runtime) and
# the no-regression check (the default two-stage search evaluated with each query runtime).
# Needs the indexes `scifact` and `nfcorpus` (eval/reproduce.sh). Run on an otherwise idle machine.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results/speed}
mkdir -p "$OUT"
for ds in ${DATASETS:-scifact}; do
  python -m mvr.eval.bench "$DATA/$ds" --index "$ds" --output "$OUT/bench-$ds.json"
  for runtime in torch onnx; do
    MVR_QUERY_RUNTIME=$runtime mvr eval "$DATA/$ds" --index "$ds" --first-stage fde+bm25s --candidates 25,100 \
      --output "$OUT/eval-$ds-$runtime.json" --quiet
  done
done
