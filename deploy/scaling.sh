#!/usr/bin/env bash
# Issue 23's scaling curves on a many-core machine, in one short call: the acceleration
# milestone (GEMM 1024³, prefill 512, decode at batch 1 and 16, the server's peak over HTTP, at
# 1, 2, 4, … N threads; the AMX rows where the CPU has them), with the machine's description
# kept beside the figures. Needs a release `tito` (built here, or carried) and, to skip training,
# the trained course GPT in .tt-cache/transformer.
#
#   deploy/scaling.sh [OUT_DIR]        (default: $OUT, else ./scaling-out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-scaling-out}}
mkdir -p "$out"
exe=${TITO:-target/release/tito}
[ -x "$exe" ] || cargo build --release -p tito
{ lscpu; echo; nproc; grep -m1 -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u; } > "$out/machine.txt" 2>&1 || true
"$exe" milestone acceleration --json > "$out/acceleration.json" 2> "$out/acceleration.log"
echo "figures: $out/acceleration.json (render with: cargo tito report --only acceleration --from-data)"
