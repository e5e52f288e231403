#!/usr/bin/env bash
# Every GPU check in one bounded script: run it once on the lent GPU machine (or at toy size on CPU).
#   bash scripts/gpu_checks.sh OUTDIR [STEP...]      (default: all steps, in this order)
# Each step is bounded by `timeout`, logs to OUTDIR/<step>.log and writes JSON there; a failed or timed-out
# step is reported and the next one runs. SCALE=tiny runs everything at toy size (CPU rehearsal).
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUTDIR [STEP...]}; shift
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
scale=${SCALE:-full}
cache=${TMPDIR:-/tmp}/instsynth-inductor-cache
pack=${PACK:-}   # if set: a .tgz of OUTDIR rewritten after every step (what comes back if the run is cut short)
gen=("$py" "$here/scripts/bench_generate.py" --scale "$scale")
run_step() {  # run_step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "== $name (at most ${secs}s) $(date +%T)"
  timeout "$secs" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then echo "   ok"; elif [ $rc -eq 124 ]; then echo "   TIMED OUT"; else echo "   FAILED (rc $rc)"; fi
  tail -n 12 "$out/$name.log"
  [ -n "$pack" ] && tar -czf "$pack" -C "$out" . 2>/dev/null
}
steps=${*:-"sdxl_ladder gligen e2e compile_cold compile_warm pipeline_cpus blended auto_batch train_full"}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || echo "no GPU" > "$out/gpu.txt"
cat "$out/gpu.txt"
for s in $steps; do
  case $s in
    sdxl_ladder) run_step $s 200 "${gen[@]}" --generator sdxl-inpaint --ladder --json "$out/sdxl_ladder.json" ;;
    compile_cold) rm -rf "$cache"; run_step $s 130 "${gen[@]}" --generator sdxl-inpaint --skip-naive --compile \
                    --compile-cache "$cache" --json "$out/compile_cold.json" ;;
    compile_warm) run_step $s 80 "${gen[@]}" --generator sdxl-inpaint --skip-naive --compile \
                    --compile-cache "$cache" --json "$out/compile_warm.json" ;;
    gligen) run_step $s 100 "${gen[@]}" --generator gligen --profile "$out" --json "$out/gligen.json" ;;
    blended) run_step $s 90 "${gen[@]}" --generator blended-sdxl --skip-naive --json "$out/blended.json" ;;
    sdxl_ladder_long) run_step $s 150 "${gen[@]}" --generator sdxl-inpaint --ladder --skip-naive --probe 4,12 \
                        --json "$out/sdxl_ladder_long.json" ;;
    compile_cold_long) rm -rf "$cache"; run_step $s 130 "${gen[@]}" --generator sdxl-inpaint --skip-naive --compile \
                         --probe 4,12 --compile-cache "$cache" --json "$out/compile_cold_long.json" ;;
    compile_warm_long) run_step $s 80 "${gen[@]}" --generator sdxl-inpaint --skip-naive --compile --probe 4,12 \
                         --compile-cache "$cache" --json "$out/compile_warm_long.json" ;;
    e2e) run_step $s 240 "${gen[@]}" --generator sdxl-inpaint --skip-naive --e2e --e2e-items "${E2E_ITEMS:-48}" \
           --json "$out/e2e.json" ;;
    auto_batch) run_step $s 150 "${gen[@]}" --generator sdxl-inpaint --skip-naive --batch auto --json "$out/auto_batch.json" ;;
    pipeline_cpus) run_step $s 300 $py "$here/scripts/bench_pipeline.py" --cpus "${CPUS:-1,4,16}" --images "${IMAGES:-16}" \
                     --images2 "${IMAGES2:-48}" --big 0 --json "$out/pipeline_cpus.json" ;;
    train_full) run_step $s 120 $py "$here/scripts/bench_train.py" --scale full --iters "${ITERS:-30}" \
                  --json "$out/bench_train_full.json" ;;
    *) echo "unknown step $s (skipped)" ;;
  esac
done
rm -rf "$cache"
echo "done $(date +%T)"
