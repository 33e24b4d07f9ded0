#!/usr/bin/env bash
# Training throughput at 1 and 2 ranks side by side, and the share of step time in all-reduce.
#
#   scripts/bench-scaling.sh [--config cluster/lstm.yaml] [--epochs 1] [--ranks "1 2"] [--set key=value ...]
#
# Runs the real job (coordinator + workers under mpirun) for one epoch per world size on the
# configured dataset and prints the samples/s and all-reduce share each run logged. The
# learning-rate scaling does not matter for speed; validation time is excluded by the loop.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

config=cluster/lstm.yaml
epochs=1
ranks_list="1 2"
overrides=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config=$(clm_caller_path "$2"); shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --ranks) ranks_list=$2; shift 2 ;;
        --set) overrides+=(--set "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CLM_PROGRESS=plain

printf '%-6s %-14s %-16s %-10s\n' ranks "samples/s" "all-reduce share" "speed-up"
base=""
for ranks in $ranks_list; do
    scripts/train.sh --np "$ranks" --config "$config" --epochs "$epochs" --checkpoints "$work/ckpt" \
        --run "scaling-$ranks" --set checkpoint_every_epochs=1000 "${overrides[@]}" >"$work/$ranks.log" 2>&1 \
        || { tail -n 20 "$work/$ranks.log"; exit 1; }
    line=$(grep -E '"event":"epoch"' "$work/ckpt/scaling-$ranks/metrics.jsonl" | tail -1)
    rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["samples_per_second"]))' "$line")
    share=$(python3 -c 'import json,sys; print("%.1f%%" % (100*json.loads(sys.argv[1])["allreduce_share"]))' "$line")
    [ -z "$base" ] && base=$rate
    speedup=$(python3 -c "print('%.2fx' % ($rate / $base))")
    printf '%-6s %-14s %-16s %-10s\n' "$ranks" "$rate" "$share" "$speedup"
done
