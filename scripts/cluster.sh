#!/usr/bin/env bash
# `MAX_GPU_WORKERS=16 scripts/cluster.sh up|down|attach|dashboard`: cluster.yaml with the GPU pool size set.
set -euo pipefail
cmd=${1:-up}; shift || true
rendered=$(mktemp --suffix=.yaml)
python - "$rendered" <<'PY'
import os, sys, yaml
cfg = yaml.safe_load(open("cluster.yaml"))
cfg["available_node_types"]["gpu_worker"]["max_workers"] = int(os.environ.get("MAX_GPU_WORKERS", 8))
yaml.safe_dump(cfg, open(sys.argv[1], "w"), sort_keys=False)
PY
case "$cmd" in
  up) ray up -y "$rendered" "$@" ;;
  down) ray down -y "$rendered" "$@" ;;
  attach) ray attach "$rendered" "$@" ;;
  dashboard) ray dashboard "$rendered" "$@" ;;
  *) echo "usage: $0 up|down|attach|dashboard" >&2; exit 2 ;;
esac
