#!/usr/bin/env bash
# Today's baseline (BENCHMARKS.md "Baseline"): every registry configuration as shipped on the
# four shared sets, k = 1 and 16, 3 draws, whole test split, plus the allowed-variation table
# of the default at 16 shots on bottle, screw and bsdata. JSON and console output go to
# bench/results/baseline/; the HTML reports (they show dataset images, whose licences keep them
# out of the repository) to $REPORTS, default /tmp/nominal-baseline-reports.
# Usage: [SETS="magnetic_tile ..."] bench/baseline.sh [CONFIG...]  (default: all configurations
# on all four sets)
#   CONFIG: lite0 | vit_l5 | vit_l8 | vit_l6_l9 | vit_l6_l9_336_square
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets}
OUT=bench/results/baseline
THREADS=${THREADS:-2}
REPORTS=${REPORTS:-/tmp/nominal-baseline-reports}
mkdir -p "$OUT" "$REPORTS"

SETS=${SETS:-mvtec_bottle_512 magnetic_tile mvtec_screw_512 bsdata_pitting}

run() {  # NAME DATASET EXTRA_ARGS...
  local name=$1 set=$2; shift 2
  [[ " $SETS " == *" $set "* ]] || return 0
  .venv/bin/nominal evaluate "$DATA/$set" --shots 1,16 --seeds 3 --threads "$THREADS" \
    --json "$OUT/$name.$set.json" --report "$REPORTS/$name.$set" "$@" \
    | tee "$OUT/$name.$set.txt"
}

configs=("${@:-lite0 vit_l5 vit_l8 vit_l6_l9 vit_l6_l9_336_square}")
for config in ${configs[@]}; do
  case $config in
    lite0)
      for set in mvtec_bottle_512 mvtec_screw_512 bsdata_pitting; do
        run lite0 "$set" --perturb
      done
      run lite0 magnetic_tile ;;
    vit_l5|vit_l8|vit_l6_l9)
      for set in mvtec_bottle_512 magnetic_tile mvtec_screw_512 bsdata_pitting; do
        run "$config" "$set" --backbone "vit_small_${config#vit_}"
      done ;;
    vit_l6_l9_336_square)
      for set in mvtec_bottle_512 magnetic_tile mvtec_screw_512 bsdata_pitting; do
        run "$config" "$set" --backbone vit_small_l6_l9 --resolution 336 --resize square
      done ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
  esac
done
