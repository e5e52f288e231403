#!/usr/bin/env bash
# The demo: synthetic sample -> originals -> synth (recolor, on a local Ray) -> stats -> preview -> quality -> report.
set -euo pipefail
OUT=${1:-demo-out}
CFG=configs/demo.yaml
rm -rf "$OUT"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} RAY_USAGE_STATS_ENABLED=0
echo "== 1/7 writing a synthetic sample in Cityscapes layout (not Cityscapes data)"
instsynth sample --config $CFG --out "$OUT/cityscapes"
echo "== 2/7 writing the original training images as rows"
instsynth originals "$OUT/cityscapes" --config $CFG --out "$OUT/original"
echo "== 3/7 synthesizing on a local Ray: plan -> Phase 1 -> recolor generator -> Phase 3 -> shards"
instsynth synth "$OUT/cityscapes" --config $CFG --out "$OUT/recolor" --generator recolor
echo "== 4/7 per-class counts (Table I style)"
instsynth stats "$OUT/original" "$OUT/recolor" --out "$OUT/stats"
echo "== 5/7 preview grids: samples, and before/after pairs (source window | synthesized, prompt, scores)"
instsynth preview "$OUT/recolor" --out "$OUT/stats/preview.png"
instsynth preview "$OUT/recolor" --compare --n 8 --out "$OUT/stats/compare.png"
echo "== 6/7 generation quality (Table IV style; metrics without configured weights are named)"
instsynth quality "$OUT/recolor" --config $CFG --out "$OUT/stats"
echo "== 7/7 the browsable report: every sample before/after, classes, quality, runs, failures"
instsynth report "$OUT/recolor" "$OUT/original" --out "$OUT/report"
echo
echo "where everything is (open the report first):"
echo "  $OUT/report/index.html        THE REPORT: open it in a browser (file://$(cd "$OUT" && pwd)/report/index.html)"
echo "  $OUT/cityscapes               synthetic sample, Cityscapes layout"
echo "  $OUT/original                 original training images as IS-Cityscapes rows"
echo "  $OUT/recolor/data             committed shards ($(ls "$OUT/recolor/data" | wc -l) Parquet files)"
echo "  $OUT/recolor/README.md        dataset card: datasets.load_dataset(\"$OUT/recolor\", split=\"train\")"
echo "  $OUT/recolor/_runs            run records (hosts, throughput)"
echo "  $OUT/stats/class_counts.png   per-class bar chart"
echo "  $OUT/stats/preview.png        sample grid with prompts and instance outlines"
echo "  $OUT/stats/compare.png        before/after grid: source window | synthesized window, prompt, scores"
echo "  $OUT/stats/quality.txt        generation quality table (+ quality.json, quality.png)"
