#!/usr/bin/env bash
# The candidates of BENCHMARKS.md "Tolerance of allowed variations": each on the four shared
# sets, k = 1 and 16, 3 draws, with the allowed-variation table at 16 shots on bottle, screw
# and bsdata (as bench/baseline.sh does for today's default, candidate A). JSON and console
# output go to bench/results/tolerance/. Usage: [SETS="..."] [SHOTS=1,16] bench/tolerance.sh
# CANDIDATE...
#   CANDIDATE: B | C | D (Lite0) | T2 | T4 (the default of their time, C9, with threshold
#   views) | C9 ... C18 (the screening's, settings from bench/candidates.py)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets}
OUT=bench/results/tolerance
THREADS=${THREADS:-1}
SETS=${SETS:-mvtec_bottle_512 mvtec_screw_512 magnetic_tile bsdata_pitting}
SHOTS=${SHOTS:-1,16}
mkdir -p "$OUT"

# A screening candidate's `nominal evaluate` options, one a line (bench/candidates.py).
screened_args() {
  .venv/bin/python -c "import sys; from bench.candidates import evaluate_args
print('\n'.join(evaluate_args(sys.argv[1])))" "$1"
}

for candidate in "$@"; do
  case $candidate in
    B) settings=(--set preset=fast --set variation_views=0 --set edge_weight=0.5) ;;
    C) settings=(--set preset=fast --set variation_views=4 --set edge_weight=0.5) ;;
    D) settings=(--set preset=fast --set variation_views=4 --set edge_weight=0) ;;
    T2|T4) mapfile -t settings < <(screened_args C9)
      settings+=(--set "threshold_views=${candidate#T}") ;;
    C*) mapfile -t settings < <(screened_args "$candidate") ;;
    *) echo "unknown candidate $candidate" >&2; exit 2 ;;
  esac
  for set in $SETS; do
    perturb=(--perturb)
    [[ $set == magnetic_tile ]] && perturb=()  # crops too small for displaced windows
    .venv/bin/nominal evaluate "$DATA/$set" --shots "$SHOTS" --seeds 3 --threads "$THREADS" \
      "${settings[@]}" "${perturb[@]}" --json "$OUT/$candidate.$set.json" \
      | tee "$OUT/$candidate.$set.txt"
  done
done
