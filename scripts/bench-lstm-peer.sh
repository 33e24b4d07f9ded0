#!/usr/bin/env bash
# LSTM training throughput of the project next to a plain PyTorch peer of the same model
# (scripts/lstm_peer.py), alternated so both see the same machine state:
#   scripts/bench-lstm-peer.sh --python /path/to/venv/bin/python [--rounds 2] [--seconds 3]
# The peer needs torch, which the project never installs: point --python at a virtualenv
# outside the project. Each clm-bench call is bounded in time.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

python="" rounds=2 seconds=3
while [ $# -gt 0 ]; do
    case $1 in
        --python) python=$2; [[ $python == */* ]] && python=$(clm_caller_path "$python"); shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$python" ] || { echo "--python PATH is required (a Python with torch)" >&2; exit 2; }
"$python" -c "import torch" 2>/dev/null || { echo "$python cannot import torch" >&2; exit 2; }

clm_stop_children_on_signal
clm_run_bounded 3600 swift build -c release --product clm-bench >/dev/null
bench="$(swift build -c release --show-bin-path)/clm-bench"
for round in $(seq "$rounds"); do
    echo "== round $round"
    clm_run_bounded 300 "$bench" models --model lstm --kernel all --seconds "$seconds" | grep -E '^(cblas|LSTM)'
    clm_run_bounded 300 "$python" scripts/lstm_peer.py --seconds "$seconds"
done
