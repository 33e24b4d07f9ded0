#!/usr/bin/env bash
# Training throughput of the project's models next to plain PyTorch peers of the same shape
# (scripts/lstm_peer.py, scripts/graphsage_peer.py), alternated so both see the same machine
# state:
#   scripts/bench-model-peers.sh lstm|graphsage --python /path/to/venv/bin/python [--rounds 2] [--seconds 3]
# lstm times every element-wise kernel set this CPU runs (clm-bench models --kernel all).
# The peers need torch, which the project never installs: point --python at a virtualenv
# outside the project. Every run is bounded in time.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

model=${1:-}
case $model in
    lstm) peer=scripts/lstm_peer.py pattern='^(cblas|LSTM)' flags=(--kernel all) ;;
    graphsage) peer=scripts/graphsage_peer.py pattern='^GraphSAGE|^  time' flags=() ;;
    *) echo "usage: $0 lstm|graphsage --python PATH [--rounds N] [--seconds S]" >&2; exit 2 ;;
esac
shift
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
    clm_run_bounded 300 "$bench" models --model "$model" "${flags[@]}" --seconds "$seconds" | grep -E "$pattern"
    clm_run_bounded 300 "$python" "$peer" --seconds "$seconds"
done
