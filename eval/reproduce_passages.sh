#!/usr/bin/env bash
# Reruns docs/passages.md: SciFact and NFCorpus indexed as today (documents cut at 256 tokens) and
# as passages (--passage-tokens 256: a longer document becomes overlapping passages that each fit
# the model, stride 3/4), both with the default settings otherwise; nDCG@10 of the default search
# and of exhaustive MaxSim. Then this repository's docs/ as passages of 128 tokens against the same
# files cut at 256, with questions about their later sections. From the repository root after
# `pip install -e '.[all]'`; about 40 minutes on 2 cores.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
HOME_DIR=${HOME_DIR:-/tmp/mvr-passages}
mkdir -p "$OUT" "$HOME_DIR"
for ds in scifact nfcorpus; do
  mvr index "$DATA/$ds" --name "$ds-cut" --index-dir "$HOME_DIR" --overwrite --quiet
  mvr index "$DATA/$ds" --name "$ds-passages" --passage-tokens 256 --index-dir "$HOME_DIR" --overwrite --quiet
  for kind in cut passages; do
    mvr eval "$DATA/$ds" --index "$ds-$kind" --index-dir "$HOME_DIR" --compare-exhaustive --output "$OUT/passages-$ds-$kind.json" --quiet
  done
done
mvr index docs --name docs-cut --index-dir "$HOME_DIR" --overwrite --quiet
mvr index docs --name docs-passages --passage-tokens 128 --index-dir "$HOME_DIR" --overwrite --quiet
python -m mvr.eval.passages "$HOME_DIR" --output "$OUT/passages-docs.json"
