#!/usr/bin/env bash
# Import benchmark: the same event file imported, in each of R rounds of one session (timings
# on a shared machine drift; compare within a round), by one process on one core (taskset),
# by one process on every core, and by mpirun -np N. Prints events/s of the parse-and-aggregate
# pass, total wall time and peak resident memory per process, and checks that all three wrote
# the same dataset. Each round also runs N one-core imports at once, each on a core of its
# own, which share nothing but the machine: their combined throughput against one alone is
# the most N ranks could gain over one core here, whatever the import does. Then the polars
# peer (scripts/import_peer.py, a lazy query writing weekly sums, pair counts and labels to
# parquet, from the tools' virtualenv outside the project) on one core with one thread and on
# every core, in the same round, with the project's ratio against it.
#   scripts/bench-import.sh [--np N] [--rounds R] FILE [clm-data import options]
# Default FILE options: --cutoff 2021-09-30 --horizon 91 (the date-ordered benchmark file:
#   clm-data synth --date-ordered --rows 10000000 --customers 1000000 --products 20000 --seed 7 --out FILE).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_bench_flags "$@"
set -- "${clm_rest[@]}"
input=$(clm_caller_path "${1:?usage: scripts/bench-import.sh [--np N] [--rounds R] FILE [import options]}")
shift
options=("$@")
[ ${#options[@]} -eq 0 ] && options=(--cutoff 2021-09-30 --horizon 91)
swift build -c release --product clm-data >/dev/null 2>&1
clm_data="$(swift build -c release --show-bin-path)/clm-data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Each timed import starts with no earlier output and nothing left to write back: an import
# replacing its previous dataset deletes 1.4 GB inside the timed run, and the writeback of the
# run before otherwise lands in the next (rank 0 of a 2-rank import spent 31% of its samples
# copying into the page cache right after another import, 9% after a sync).
settle() {
    rm -rf "$@"
    sync
}

cores=$(nproc)
# The peer needs the cut-off and horizon; without both in the options it is left out.
cutoff="" horizon=""
for ((k = 0; k < ${#options[@]}; k++)); do
    case "${options[$k]}" in
        --cutoff) cutoff=${options[$((k + 1))]:-} ;;
        --horizon) horizon=${options[$((k + 1))]:-} ;;
    esac
done
polars_python=""
if [ -n "$cutoff" ] && [ -n "$horizon" ]; then
    polars_python=$(clm_python_tools "polars==2.1.0")
else
    echo "(no --cutoff and --horizon among the import options: the polars peer is left out)"
fi
# One polars run: prints its row and leaves PEER_TOTAL set.
timed_peer() {  # timed_peer LABEL THREADS [taskset -c CPU]
    local label=$1 threads=$2
    shift 2
    settle "$work/polars"
    POLARS_MAX_THREADS=$threads "$@" "$polars_python" scripts/import_peer.py "$input" "$work/polars" \
        --cutoff "$cutoff" --horizon "$horizon" >"$work/peer.log"
    PEER_TOTAL=$(grep -oE "[0-9.]+ s," "$work/peer.log" | grep -oE "[0-9.]+")
    local memory
    memory=$(grep -oE "peak RSS [0-9]+" "$work/peer.log" | grep -oE "[0-9]+$")
    printf "%-6s %-22s %14s %9s  %s\n" "$round" "$label" "" "$PEER_TOTAL" "$memory"
}
# One timed import: prints its row and leaves SPEED and TOTAL set.
timed_import() {  # timed_import LABEL OUTPUT COMMAND...
    local label=$1 output=$2
    shift 2
    settle "$output"
    "$@" import --input "$input" --out "$output" "${options[@]}" >"$work/run.log"
    SPEED=$(grep -o "speed *[0-9,]* events/s" "$work/run.log" | grep -o "[0-9,]*" | head -1)
    TOTAL=$(grep -o "total [0-9.]* s" "$work/run.log" | grep -o "[0-9.]*")
    local memory
    memory=$(grep -o "peak memory *[0-9., ]* MiB" "$work/run.log" | sed 's/peak memory *//; s/ MiB//')
    printf "%-6s %-22s %14s %9s  %s\n" "$round" "$label" "$SPEED" "$TOTAL" "$memory"
}

printf "%-6s %-22s %14s %9s  %s\n" round run "events/s" "total s" "peak RSS MiB per process"
for round in $(seq 1 "$rounds"); do
    # One core: the import sees a single CPU in its affinity mask, so it runs on one thread.
    timed_import "1 process, 1 core" "$work/core" taskset -c 0 "$clm_data"
    core_speed=${SPEED//,/} core_total=$TOTAL
    timed_import "1 process, $cores cores" "$work/one" "$clm_data"
    one_speed=${SPEED//,/} one_total=$TOTAL
    timed_import "$ranks ranks" "$work/many" clm_mpirun_local "$ranks" "$clm_data"
    many_speed=${SPEED//,/} many_total=$TOTAL
    # N one-core imports at once, each pinned to a core of its own, share nothing but the
    # machine: their combined speed against one alone bounds what N ranks could reach here.
    settle "$work"/alone*
    pids=()
    for k in $(seq 1 "$ranks"); do
        taskset -c $(( (k - 1) % cores )) "$clm_data" import --input "$input" --out "$work/alone$k" "${options[@]}" >"$work/alone$k.log" 2>&1 &
        pids+=($!)
    done
    for k in "${!pids[@]}"; do
        wait "${pids[$k]}" || { echo "a side-by-side import failed:"; cat "$work/alone$((k + 1)).log"; exit 1; }
    done
    python3 - "$ranks" "$core_speed" "$core_total" "$many_speed" "$many_total" "$work"/alone*.log <<'PY'
import re, sys
ranks, core_speed, core_total, many_speed, many_total = int(sys.argv[1]), *map(float, sys.argv[2:6])
speeds, totals = [], []
for log in sys.argv[6:]:
    text = open(log).read()
    speeds.append(float(re.search(r"speed *([0-9,]+) events/s", text).group(1).replace(",", "")))
    totals.append(float(re.search(r"total ([0-9.]+) s", text).group(1)))
print(f"       {ranks} one-core imports at once: events/s {', '.join(f'{s:,.0f}' for s in speeds)}; "
      f"total s {', '.join(f'{t:.2f}' for t in totals)}")
print(f"       {ranks} ranks against one core: parse {many_speed / core_speed:.2f}x, whole import {core_total / many_total:.2f}x; "
      f"ceiling here: parse {sum(speeds) / core_speed:.2f}x, whole import {ranks * core_total / max(totals):.2f}x")
PY
    rm -rf "$work"/alone*
    if [ -n "$polars_python" ]; then
        timed_peer "polars, 1 thread" 1 taskset -c 0
        peer_core_total=$PEER_TOTAL
        timed_peer "polars, $cores threads" "$cores"
        peer_all_total=$PEER_TOTAL
        python3 -c 'import sys; c, m, p1, pn = map(float, sys.argv[1:5]); print(f"       project against polars (time ratio, above 1: the project is faster): one core {p1 / c:.2f}x, {sys.argv[5]} {pn / m:.2f}x")' \
            "$core_total" "$many_total" "$peer_core_total" "$peer_all_total" "$ranks ranks vs $cores threads"
    fi
    for other in core many; do
        for file in "$work"/one/*; do
            cmp -s "$file" "$work/$other/$(basename "$file")" || { echo "DIFFERENT OUTPUT: $other/$(basename "$file")"; exit 1; }
        done
    done
done
echo "the one-core and $ranks-rank datasets equal the all-cores one, file for file"
