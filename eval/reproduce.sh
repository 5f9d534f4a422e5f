#!/usr/bin/env bash
# Reruns every measured figure in docs/ (docs/results.md, docs/fde.md, docs/fde-sweep.png):
# the default model with exhaustive MaxSim (full dims, PCA 128 / 64) and with the MUVERA FDE
# first stage, on SciFact and NFCorpus. From the repository root after `pip install -e '.[all]'`;
# about 75 minutes on 2 cores. BUILD=0 reuses indexes built before. The figures were measured on
# indexes whose documents ran through PyTorch, so the builds here ask for that runtime
# (--doc-runtime torch); the default int8 runtime is compared with it in docs/speed.md.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
BUILD=${BUILD:-1}
mkdir -p "$OUT"
for ds in scifact nfcorpus; do
  if [ "$BUILD" = 1 ]; then
    mvr index "$DATA/$ds/corpus.jsonl" --name "$ds" --doc-runtime torch --overwrite --quiet
    for d in 128 64; do
      mvr index "$DATA/$ds/corpus.jsonl" --name "$ds-pca$d" --pca-dim "$d" --doc-runtime torch --no-fde --overwrite --quiet
    done
  else
    mvr fde "$ds"  # the default FDE on the existing index (no re-encoding)
  fi
  # Exhaustive MaxSim and the FDE candidate sweep, in one process (latency ratios from one run).
  mvr eval "$DATA/$ds" --index "$ds" --first-stage fde --candidates 25,50,100,200,500,1000 --compare-exhaustive \
    --output "$OUT/$ds-fde.json" --quiet
  # The default first stage, FDE + bm25s, likewise; then the share of candidates taken from FDE.
  mvr eval "$DATA/$ds" --index "$ds" --first-stage fde+bm25s --candidates 10,25,50,100,200 --compare-exhaustive \
    --output "$OUT/$ds-hybrid.json" --quiet
  mkdir -p "$OUT/hybrid-share"
  for share in 1.0 0.9 0.7 0.5; do
    mvr eval "$DATA/$ds" --index "$ds" --first-stage fde+bm25s --candidates 25,50,100 --dense-share "$share" \
      --output "$OUT/hybrid-share/$ds-hybrid-share$share.json" --quiet
  done
  for d in 128 64; do
    mvr eval "$DATA/$ds" --index "$ds-pca$d" --first-stage exhaustive --output "$OUT/$ds-pca$d.json" --quiet
  done
  # FDE settings compared on the same stored vectors (no re-encoding).
  python -m mvr.eval.fde_settings "$DATA/$ds" --index "$ds" --output "$OUT/fde-settings-$ds.json" \
    --setting k_sim=5,d_proj=16,reps=20,fill_empty=1 \
    --setting k_sim=5,d_proj=16,reps=20,fill_empty=0 \
    --setting k_sim=4,d_proj=32,reps=20,fill_empty=0 \
    --setting k_sim=4,d_proj=16,reps=40,fill_empty=0 \
    --setting k_sim=4,d_proj=16,reps=20,fill_empty=0 \
    --setting k_sim=4,d_proj=32,reps=20,fill_empty=0,d_final=4096 \
    --setting k_sim=4,d_proj=32,reps=20,fill_empty=0,d_final=2048 \
    --setting k_sim=5,d_proj=32,reps=20,fill_empty=0
done
python -m mvr.eval.table --again docs/results.md  # the table of the reports it links (with OUT=docs/results, those just written)
python -m mvr.eval.plot "$OUT/scifact-fde.json" "$OUT/nfcorpus-fde.json" --output docs/fde-sweep.png \
  --also "$OUT/scifact-hybrid.json" "$OUT/nfcorpus-hybrid.json"
