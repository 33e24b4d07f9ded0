#!/usr/bin/env bash
# The main job in one command. Until the training loop lands this sets the machine up, runs the
# collectives self-check on 2 ranks and prints the all-reduce bandwidth table.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

scripts/setup.sh
bin="$(swift build -c release --show-bin-path)"
swift build -c release --product clm-multirank-tests
echo "== collectives self-check on 2 ranks"
clm_mpirun_local 2 "$bin/clm-multirank-tests" | grep -E "^(FAIL|multirank)"
echo "== all-reduce bandwidth on 2 ranks"
clm_mpirun_local 2 "$bin/clm-bench" allreduce
