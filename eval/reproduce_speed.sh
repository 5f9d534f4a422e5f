#!/usr/bin/env bash
# Reruns the figures of docs/speed.md: the per-stage benchmark (one thread and all cores, kernel
# against NumPy and torch einsum, float32 peak, query encoding in PyTorch and ONNX Runtime, and
# nDCG@10 against exhaustive MaxSim) on the full index with its default first stage, and on the
# 4x-clustered index with bm25s candidates (the ~1 ms configuration); document encoding with each
# runtime in one process; the int8-encoded index (`onnx-int8`, the default until 2026-11-29) built and
# evaluated against the PyTorch-encoded one; then the no-regression check (the default two-stage
# search evaluated with each query runtime).
# Needs the indexes `scifact` and `nfcorpus` built with --doc-runtime torch (eval/reproduce.sh).
# Run on an otherwise idle machine.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results/speed}
mkdir -p "$OUT"
for ds in ${DATASETS:-scifact nfcorpus}; do
  python -m mvr.eval.bench "$DATA/$ds" --index "$ds" --documents 512 --output "$OUT/documents-$ds.json"
  [ -d "indexes/$ds-int8" ] || mvr index "$DATA/$ds" --name "$ds-int8" --doc-runtime onnx-int8 --quiet
  for index in "$ds" "$ds-int8"; do
    mvr eval "$DATA/$ds" --index "$index" --first-stage fde+bm25s --candidates 100 --compare-exhaustive --output "$OUT/eval-$index-runtime.json" --quiet
  done
done
for ds in ${DATASETS:-scifact}; do
  python -m mvr.eval.bench "$DATA/$ds" --index "$ds" --output "$OUT/bench-$ds.json"
  [ -d "indexes/$ds-c24" ] || mvr index --from "$ds" --name "$ds-c24" --cluster-ratio 0.24 --cluster-idf-weight 0.5 --quiet
  python -m mvr.eval.bench "$DATA/$ds" --index "$ds-c24" --reference "$ds" --first-stage bm25s --candidates 25 \
    --output "$OUT/bench-$ds-c24-bm25s.json"
  for runtime in torch onnx; do
    MVR_QUERY_RUNTIME=$runtime mvr eval "$DATA/$ds" --index "$ds" --first-stage fde+bm25s --candidates 25,100 \
      --output "$OUT/eval-$ds-$runtime.json" --quiet
  done
done
