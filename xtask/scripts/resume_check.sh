#!/bin/bash
# Kills a real prune search (SIGKILL) once its checkpoint records the first generation, resumes
# it with the same arguments, and compares the result with an uninterrupted run.
# Usage: xtask/scripts/resume_check.sh [OUT_DIR]   (run from the repository root after
# `cargo build --release`, or with WHITTLE=path/to/whittle; about 2 × the time of one small
# search)
set -euo pipefail
out=${1:-out/resume-check}
whittle=${WHITTLE:-target/release/whittle}
args=(prune --board rpi5 --latency-budget-ms 12.7 --task sst2 --population 8 --generations 3
      --patience 3 --seed 1 --no-refit --uniform-keep 1.0 --json)
rm -rf "$out/whole" "$out/resumed"
"$whittle" "${args[@]}" --out "$out/whole" > /dev/null
"$whittle" "${args[@]}" --out "$out/resumed" > /dev/null &
pid=$!
while kill -0 "$pid" 2> /dev/null; do
  if [ -f "$out/resumed/checkpoint.json" ] && [ "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['generations'])" "$out/resumed/checkpoint.json" 2> /dev/null || echo 0)" -ge 1 ]; then
    kill -KILL "$pid"
    echo "killed after the first generation"
    break
  fi
  sleep 1
done
wait "$pid" || true
"$whittle" "${args[@]}" --out "$out/resumed" --resume > /dev/null
cmp "$out/whole/genome.json" "$out/resumed/genome.json"
cmp "$out/whole/checkpoint.json" "$out/resumed/checkpoint.json"
echo "same genome and same final checkpoint"
