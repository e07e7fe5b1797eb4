#!/bin/bash
# The GPU check's runs, on a machine with an NVIDIA GPU and its driver: the real-model CUDA test
# (GPU logits, Gram statistics and storage rescaling against the CPU's), `whittle eval` on the
# search split and a one-generation `whittle prune`, each on the CPU and on the GPU. It needs
# no Rust and no network: the binaries and the model come in a kit folder that
# `cargo xtask gpu-check --kit` builds elsewhere (`cargo xtask gpu-check` on a machine with Rust
# builds them in place and calls `run` itself). `cargo xtask gpu-check --results DIR` turns
# what `run` writes into the check's JSON line.
#
# Usage (from the repository root, which holds the task data):
#   xtask/scripts/gpu_kit.sh stage PART_DIR   copy one part of a kit into $KIT
#   xtask/scripts/gpu_kit.sh run OUT_DIR      assemble $KIT, run everything, write into OUT_DIR
# KIT defaults to /tmp/whittle-gpu-kit. A kit holds `whittle` and `real_model_cuda` (or their
# `.xz`), the model as pieces `<its file name>.partNN`, and `SHA256SUMS` over the assembled
# files.
set -euo pipefail
kit=${KIT:-/tmp/whittle-gpu-kit}

stage() {
  mkdir -p "$kit"
  cp -r "$1"/. "$kit"/
  echo "gpu_kit: staged $(ls "$1" | tr '\n' ' ')into $kit"
}

# Decompresses the binaries, joins the model's pieces and checks every file against the sums.
assemble() {
  cd "$kit"
  for packed in *.xz; do
    [ -e "$packed" ] || continue
    python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$packed" "${packed%.xz}"
    rm "$packed"
    chmod +x "${packed%.xz}"
  done
  local first
  for first in *.part00; do
    [ -e "$first" ] || continue
    mkdir -p models
    cat "${first%00}"?? > "models/${first%.part00}"
    rm "${first%00}"??
  done
  # The built-in tasks read their data from the source tree the binaries were built in
  # (`source_root`): where this copy of it lies elsewhere, that path points here.
  if [ -f source_root ]; then
    local root
    root=$(cat source_root)
    if [ ! -e "$root/host/tasks/sst2.toml" ]; then
      mkdir -p "$(dirname "$root")"
      ln -sfn "$OLDPWD" "$root"
    fi
  fi
  if [ -f SHA256SUMS ] && ! sha256sum --quiet -c SHA256SUMS; then
    echo "gpu_kit: the kit in $kit is incomplete or damaged (a part not staged, or cut in transfer); stage every part again" >&2
    exit 2
  fi
  cd - > /dev/null
}

# Adds to LD_LIBRARY_PATH the folders of the libraries the binaries link that the loader does
# not find (CUDA's runtime, cuBLAS, cuRAND and NVRTC: in a toolkit, or in the nvidia-* wheels of
# a Python environment); the driver's libcuda is the system's.
find_libraries() {
  local dirs="" lib found
  for lib in $(ldd "$kit/whittle" "$kit/real_model_cuda" | awk '/not found/ {print $1}' | sort -u); do
    found=$(find /usr/local /opt /usr/lib /root -name "$lib" -print -quit 2> /dev/null || true)
    if [ -z "$found" ]; then
      echo "gpu_kit: $lib, which the binaries link, is not on this machine; install it (CUDA 13, or its nvidia-* wheels), or carry it" >&2
      exit 2
    fi
    dirs="$dirs:$(dirname "$found")"
  done
  export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# Runs a command, its stdout kept in $kit/work (its stderr shown), and appends one line to
# OUT/runs.jsonl: the run's name, its exit status, its wall seconds and the last line of its
# stdout that is a JSON object. A failed run is recorded and the next one runs.
timed() {
  local name=$1
  shift
  echo "gpu_kit: $name: $*"
  local start end status=0
  start=$(date +%s.%N)
  "$@" > "$kit/work/$name.out" || status=$?
  end=$(date +%s.%N)
  python3 - "$name" "$status" "$start" "$end" "$kit/work/$name.out" >> "$out/runs.jsonl" << 'PY'
import json, sys
name, status, start, end, path = sys.argv[1:]
last = None
for line in open(path, encoding="utf-8", errors="replace"):
    try:
        value = json.loads(line)
    except ValueError:
        continue
    if isinstance(value, dict):
        last = value
print(json.dumps({"name": name, "status": int(status), "seconds": float(end) - float(start), "json": last}))
PY
  if [ "$status" != 0 ]; then
    echo "gpu_kit: $name failed (exit status $status); its stdout is in $kit/work/$name.out" >&2
    tail -n 20 "$kit/work/$name.out" >&2
  fi
}

run() {
  out=$(realpath -m "$1")
  mkdir -p "$out"
  rm -f "$out/runs.jsonl"
  assemble
  if ! gpu=$(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader); then
    echo "gpu_kit: nvidia-smi failed: no NVIDIA GPU or driver here; the check needs both (driver R580 or later for CUDA 13)" >&2
    exit 2
  fi
  python3 -c 'import json, sys
name, driver, cap = [x.strip() for x in sys.argv[1].splitlines()[0].split(",")]
print(json.dumps({"name": "gpu", "json": {"gpu": name, "driver": driver, "compute_cap": cap}}))' "$gpu" >> "$out/runs.jsonl"
  find_libraries
  mkdir -p "$kit/work"
  export WHITTLE_MODEL_DIR="$kit/models"
  local whittle="$kit/whittle"
  # Most telling first, the slowest last: a call cut at its time limit keeps what ran.
  timed parity "$kit/real_model_cuda" --nocapture --test-threads 1
  local eval=(eval --task sst2 --split search --json)
  timed eval-gpu "$whittle" "${eval[@]}" --cuda
  timed eval-cpu "$whittle" "${eval[@]}"
  # Each side calibrates and factorizes from nothing, in its own cache.
  for side in gpu cpu; do
    local dir="$kit/work/prune-$side"
    rm -rf "$dir"
    local flags=()
    if [ "$side" = gpu ]; then flags=(--cuda); fi
    timed "prune-$side" "$whittle" prune --board jetson-orin --calibration-tokens 16384 \
      --head-examples 512 --uniform-keep 1.0 --generations 1 --no-recover --refine-tries 0 --json \
      --out "$dir/out" --cache-dir "$dir/cache" "${flags[@]}"
    if [ -f "$dir/out/genome.json" ]; then
      python3 -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "genome": json.load(open(sys.argv[2]))}))' \
        "genome-$side" "$dir/out/genome.json" >> "$out/runs.jsonl"
    fi
  done
  echo "gpu_kit: done; $out/runs.jsonl holds the runs (cargo xtask gpu-check --results $out)"
}

case "${1:-}" in
  stage) stage "${2:?usage: gpu_kit.sh stage PART_DIR}" ;;
  run) run "${2:?usage: gpu_kit.sh run OUT_DIR}" ;;
  *)
    echo "usage: gpu_kit.sh stage PART_DIR | run OUT_DIR" >&2
    exit 2
    ;;
esac
