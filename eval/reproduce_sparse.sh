#!/usr/bin/env bash
# Reruns the sparse first-stage figures of docs/sparse.md (issue 4) on indexes built by
# eval/reproduce.sh: BM25 (Lucene through pyserini) and bm25s alone, BM25 + MaxSim rerank per
# candidate count against exhaustive MaxSim, pruning, early exit and fusion (weights tuned on
# SciFact train / NFCorpus dev), and SPLADE. About 40 minutes on 2 cores.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
for ds in scifact nfcorpus; do
  tune_split=train; [ "$ds" = nfcorpus ] && tune_split=dev
  mvr sparse "$ds" --stage bm25 --stage bm25s
  python -m mvr.eval.sparse_study compare "$DATA/$ds" --index "$ds" --output "$OUT/sparse-compare-$ds.json"
  python -m mvr.eval.sparse_study tune "$DATA/$ds" --index "$ds" --split "$tune_split" --output "$OUT/fusion-tuning-$ds.json"
  weight=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['best_weight']['100'])" "$OUT/fusion-tuning-$ds.json")
  for stage in bm25 bm25s; do
    mvr eval "$DATA/$ds" --index "$ds" --first-stage "$stage" --candidates 100 --no-rerank --output "$OUT/$ds-$stage-alone.json" --quiet
  done
  mvr eval "$DATA/$ds" --index "$ds" --first-stage bm25 --candidates 20,50,100,200,1000 --compare-exhaustive --output "$OUT/$ds-bm25-rerank.json" --quiet
  # Pruning, early exit and fusion against plain rerank, interleaved per query in one process.
  python -m mvr.eval.sparse_study options "$DATA/$ds" --index "$ds" --weight "$weight" --output "$OUT/sparse-options-$ds.json"
  mvr eval "$DATA/$ds" --index "$ds" --first-stage bm25 --candidates 100,1000 --fusion rrf --output "$OUT/$ds-bm25-rrf.json" --quiet
  mvr eval "$DATA/$ds" --index "$ds" --first-stage bm25 --candidates 100,1000 --fusion linear --fusion-weight "$weight" --output "$OUT/$ds-bm25-linear.json" --quiet
done
# Learned sparse (SPLADE) with the small real model in ../shared/models (about 15 minutes of encoding).
for ds in scifact nfcorpus; do
  mvr sparse "$ds" --stage splade --splade-model ../shared/models/splade-tiny --quiet
  mvr eval "$DATA/$ds" --index "$ds" --first-stage splade --candidates 100 --no-rerank --output "$OUT/$ds-splade-alone.json" --quiet
  mvr eval "$DATA/$ds" --index "$ds" --first-stage splade --candidates 20,50,100,200,1000 --output "$OUT/$ds-splade-rerank.json" --quiet
  python -m mvr.eval.sparse_study impact "$DATA/$ds" --index "$ds" --output "$OUT/splade-impact-$ds.json"
done
python -m mvr.eval.table --again docs/results.md  # the table of the reports it links (with OUT=docs/results, those just written)
