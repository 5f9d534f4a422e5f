#!/usr/bin/env bash
# Reruns the figures of docs/speed.md: the per-stage benchmark (one thread and all cores, kernel
# against NumPy and torch einsum, float32 peak, query encoding in PyTorch and ONNX Runtime, and
# nDCG@10 against exhaustive MaxSim) on the full index with its default first stage, and on the
# 4x-clustered index with bm25s candidates (the ~1 ms configuration); then the no-regression check
# (the default two-stage search evaluated with each query runtime).
# Needs the indexes `scifact` and `nfcorpus` (eval/reproduce.sh). Run on an otherwise idle machine.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results/speed}
mkdir -p "$OUT"
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
