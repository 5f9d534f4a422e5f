#!/usr/bin/env bash
# Rebuilds every row of docs/results.md that issue 2 (core engine) reports: the default model,
# exhaustive MaxSim, full dims and PCA to 128 / 64 dims, on SciFact and NFCorpus.
# Run from the repository root after `pip install -e .`; takes about 40 minutes on 2 cores.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
for ds in scifact nfcorpus; do
  mvr index "$DATA/$ds/corpus.jsonl" --name "$ds" --overwrite --quiet
  mvr eval "$DATA/$ds" --index "$ds" --output "$OUT/$ds-exhaustive.json" --quiet
  for d in 128 64; do
    mvr index "$DATA/$ds/corpus.jsonl" --name "$ds-pca$d" --pca-dim "$d" --overwrite --quiet
    mvr eval "$DATA/$ds" --index "$ds-pca$d" --output "$OUT/$ds-exhaustive-pca$d.json" --quiet
  done
done
python -m mvr.eval.table "$OUT"/*.json --output docs/results.md
