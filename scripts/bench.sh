#!/usr/bin/env bash
# Runs a clm-bench benchmark in release mode.
#   scripts/bench.sh allreduce [--np N] [clm-bench options]
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

benchmark=${1:?usage: scripts/bench.sh allreduce [--np N] [options]}
shift
ranks=2
if [ "${1:-}" = "--np" ]; then ranks=$2; shift 2; fi
swift build -c release --product clm-bench >/dev/null
clm_mpirun_local "$ranks" "$(swift build -c release --show-bin-path)/clm-bench" "$benchmark" "$@"
