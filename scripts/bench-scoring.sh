#!/usr/bin/env bash
# Batch scoring benchmark: one process on 1 and 2 threads against mpirun -np N clm-score-mpi
# (1 thread per rank), alternated for R rounds in one session (timings on a shared machine
# drift; compare within a round). Checks that threads give the same bytes, and ranks too (with
# the portable forward kernel: the same customers, order, stages and actions, with scores equal
# to float rounding), then prints customers/s (features + LSTM), the read time, wall time and
# peak resident memory per process.
#   scripts/bench-scoring.sh [--np N] [--rounds R] EVENTS [clm-score batch options naming the model]
# Default model options: --checkpoints runs/checkpoints --run cdnow-lstm.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_bench_flags "$@"
set -- "${clm_rest[@]}"
events=$(clm_caller_path "${1:?usage: scripts/bench-scoring.sh [--np N] [--rounds R] EVENTS [model options]}")
shift
options=("$@")
# The model options' paths (--checkpoints) are the caller's, as given; the default is the demo's.
for ((k = 0; k < ${#options[@]} - 1; k++)); do
    if [ "${options[k]}" = --checkpoints ]; then options[k + 1]=$(clm_caller_path "${options[k + 1]}"); fi
done
[ ${#options[@]} -eq 0 ] && options=(--checkpoints runs/checkpoints --run cdnow-lstm)
swift build -c release --product clm-score >/dev/null 2>&1
swift build -c release --product clm-score-mpi >/dev/null 2>&1
bin="$(swift build -c release --show-bin-path)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

report() {  # report ROUND WORKERS LOG WALL MEMORY
    local speed read
    speed=$(grep -o "speed *[0-9]* customers/s" "$3" | grep -o "[0-9]*" | head -1)
    read=$(grep -o "read [0-9.]* s" "$3" | grep -o "[0-9.]*")
    printf "%-6s %-22s %12s %8s %8s  %s\n" "$1" "$2" "$speed" "$read" "$4" "$5"
}

printf "%-6s %-22s %12s %8s %8s  %s\n" round workers "customers/s" "read s" "wall s" "peak RSS MiB per process"
for round in $(seq 1 "$rounds"); do
    for threads in 1 2; do
        start=$(date +%s.%N)
        /usr/bin/time -f "%M" -o "$work/rss" "$bin/clm-score" batch "${options[@]}" --events "$events" \
            --out "$work/one-$threads.csv" --threads "$threads" >"$work/one.log" 2>&1 \
            || { echo "clm-score batch failed:"; tail -20 "$work/one.log"; exit 1; }
        wall=$(echo "$(date +%s.%N) - $start" | bc)
        report "$round" "1 process × $threads thread$([ "$threads" -gt 1 ] && echo s)" "$work/one.log" "$(printf %.1f "$wall")" "$(( $(cat "$work/rss") / 1024 ))"
    done
    start=$(date +%s.%N)
    clm_mpirun_local "$ranks" /usr/bin/time -f "rss %M" "$bin/clm-score-mpi" "${options[@]}" --events "$events" \
        --out "$work/ranks.csv" --threads 1 >"$work/ranks.log" 2>&1 \
        || { echo "clm-score-mpi failed:"; tail -20 "$work/ranks.log"; exit 1; }
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    memory=$(grep -o "^rss [0-9]*" "$work/ranks.log" | awk '{printf "%s%d", (NR > 1 ? ", " : ""), $2 / 1024}')
    report "$round" "$ranks ranks × 1 thread" "$work/ranks.log" "$(printf %.1f "$wall")" "$memory"
    grep -o "bytes per rank: [0-9, ]*" "$work/ranks.log" | sed 's/^/       output /'
    cmp -s "$work/one-1.csv" "$work/one-2.csv" || { echo "DIFFERENT OUTPUT: 1 and 2 threads"; exit 1; }
done
echo "threads: the same bytes"
kernel=$(grep -o "([a-z0-9]* kernel)" "$work/one.log" | head -1)
if cmp -s "$work/ranks.csv" "$work/one-1.csv"; then
    echo "ranks: the same bytes $kernel"
else
    # Only the portable kernel's scores depend on batch composition (float rounding).
    clm_same_scores "$work/ranks.csv" "$work/one-1.csv"
fi
