#!/usr/bin/env bash
# Reruns the figures of docs/filters.md, docs/metadata-store.md and docs/living.md (issue 13) on SciFact: metadata
# filters at 1/10/50% selectivity against exact filtered MaxSim (on the index `scifact-meta`,
# built by the study), and adds / deletes / segments against an index built in one go (indexes
# under a temporary folder, several GB). About 35 minutes on 2 cores with nothing else running.
set -euo pipefail
DATA=${DATA:-../shared/datasets}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
python -m mvr.eval.filters "$DATA/scifact" --index scifact-meta --output "$OUT/filters-scifact.json" --markdown docs/filters.md
python -m mvr.eval.metadata_store "$DATA/scifact" --output "$OUT/metadata-store-scifact.json" --markdown docs/metadata-store.md
python -m mvr.eval.living "$DATA/scifact" --output "$OUT/living-scifact.json" --markdown docs/living.md
