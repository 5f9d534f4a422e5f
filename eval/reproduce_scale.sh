#!/usr/bin/env bash
# Reruns docs/scale.md. (1) The centroid stage on SciFact and NFCorpus: their float16 indexes
# (`mvr index DATA --name scifact`, as the README builds them) derived to the tiny preset (named small until issue 16) with the
# centroid stage, nDCG@10 of exhaustive MaxSim, the centroid stage alone and joined by bm25s.
# (2) The synthetic corpus at 10,000, 100,000 and 1,000,000 documents, drawn from the SciFact
# index's token vectors, and the plot. (3) How close real SciFact queries come to their relevant
# documents (what the synthetic queries are set from). From the repository root after
# `pip install -e '.[all]'`; about 2 hours on 2 cores, 1.5 of them the million documents.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
HOME_DIR=${HOME_DIR:-/tmp/mvr-scale}
SOURCES=${SOURCES:-indexes}  # where the float16 scifact and nfcorpus indexes are
mkdir -p "$OUT" "$HOME_DIR"
for ds in scifact nfcorpus; do
  mvr index --from "$SOURCES/$ds" --name "$ds-small" --preset tiny --no-fde --centroid-stage --index-dir "$HOME_DIR" --overwrite --quiet
  mvr eval "$DATA/$ds" --index "$ds-small" --index-dir "$HOME_DIR" --first-stage exhaustive --output "$OUT/scale-$ds-exhaustive.json" --quiet
  mvr eval "$DATA/$ds" --index "$ds-small" --index-dir "$HOME_DIR" --first-stage centroids --candidates 100,256 --threads 1 --output "$OUT/scale-$ds-centroids.json" --quiet
  mvr eval "$DATA/$ds" --index "$ds-small" --index-dir "$HOME_DIR" --first-stage centroids+bm25s --candidates 50,100 --threads 1 --output "$OUT/scale-$ds-centroids-bm25s.json" --quiet
done
for n in 10000 100000 1000000; do
  python -m mvr.eval.scale --documents "$n" --source "$SOURCES/scifact" --output "$OUT/scale-$n.json" --quiet
done
python -m mvr.eval.scale --plot "$OUT"/scale-10000.json "$OUT"/scale-100000.json "$OUT"/scale-1000000.json --output docs/scale.png --markdown "$OUT/scale.md"
python -m mvr.eval.scale --calibrate "$DATA/scifact" --source "$SOURCES/scifact" --output "$OUT/scale-calibration-scifact.json"
