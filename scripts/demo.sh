#!/usr/bin/env bash
# The demo: synthetic sample -> plan -> synth (Phase 1 -> generator -> Phase 3) -> where things are.
set -euo pipefail
OUT=${1:-demo-out}
rm -rf "$OUT"
echo "== 1/3 writing a synthetic sample in Cityscapes layout"
instsynth sample --config configs/demo.yaml --out "$OUT/cityscapes"
echo "== 2/3 planning (Phase 1 selection)"
instsynth plan "$OUT/cityscapes" --config configs/demo.yaml --out "$OUT/plan.parquet"
echo "== 3/3 synthesizing (Phase 1 crop -> pass-through generator -> Phase 3 focused crop)"
instsynth synth "$OUT/plan.parquet" --config configs/demo.yaml --out "$OUT/identity" \
  --generator identity --executor local --limit 6
echo
echo "wrote:"
echo "  $OUT/cityscapes        synthetic sample (Cityscapes layout)"
echo "  $OUT/plan.parquet      work plan"
echo "  $OUT/identity/data     committed IS-Cityscapes shards ($(ls "$OUT/identity/data" | wc -l) files)"
echo "  $OUT/identity/README.md dataset card"
