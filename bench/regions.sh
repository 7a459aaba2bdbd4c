#!/usr/bin/env bash
# BENCHMARKS.md "Defect regions": the default detector on the four shared sets at 16 shots,
# 3 draws; per candidate peak fraction of the region rule, the share of ground-truth defects a
# region finds (IoU >= 0.3), and FRR / recall by minimum defect area. JSON and console output
# go to bench/results/regions/. Usage: [SETS="..."] [THREADS=n] bench/regions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets}
OUT=bench/results/regions
THREADS=${THREADS:-2}
SETS=${SETS:-mvtec_bottle_512 mvtec_screw_512 magnetic_tile bsdata_pitting}
mkdir -p "$OUT"
for set in $SETS; do
  .venv/bin/nominal evaluate "$DATA/$set" --shots 16 --seeds 3 --threads "$THREADS" \
    --json "$OUT/$set.json" | tee "$OUT/$set.txt"
done
