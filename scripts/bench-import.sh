#!/usr/bin/env bash
# Import benchmark: the same event file imported by one process and by mpirun -np N, alternated
# for R rounds in one session (timings on a shared machine drift; compare within a round).
# Checks that both wrote the same dataset, then prints events/s of the parse-and-aggregate
# pass, total wall time and peak resident memory per process. Each round also runs N
# one-process imports at once, which share nothing but the machine: their combined throughput
# against one alone is the most N ranks could gain here, whatever the import does.
#   scripts/bench-import.sh [--np N] [--rounds R] FILE [clm-data import options]
# Default FILE options: --cutoff 2021-09-30 --horizon 91 (the date-ordered benchmark file:
#   clm-data synth --date-ordered --rows 10000000 --customers 1000000 --products 20000 --seed 7 --out FILE).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_bench_flags "$@"
set -- "${clm_rest[@]}"
input=${1:?usage: scripts/bench-import.sh [--np N] [--rounds R] FILE [import options]}
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

printf "%-6s %-9s %14s %9s  %s\n" round ranks "events/s" "total s" "peak RSS MiB per process"
for round in $(seq 1 "$rounds"); do
    settle "$work/one" "$work/many"
    /usr/bin/time -f "%M" -o "$work/one.rss" "$clm_data" import --input "$input" --out "$work/one" "${options[@]}" >"$work/one.log"
    speed=$(grep -o "speed *[0-9,]* events/s" "$work/one.log" | grep -o "[0-9,]*" | head -1)
    total=$(grep -o "total [0-9.]* s" "$work/one.log" | grep -o "[0-9.]*")
    printf "%-6s %-9s %14s %9s  %s\n" "$round" 1 "$speed" "$total" "$(( $(cat "$work/one.rss") / 1024 ))"
    one_speed=${speed//,/} one_total=$total
    sync
    clm_mpirun_local "$ranks" "$clm_data" import --input "$input" --out "$work/many" "${options[@]}" >"$work/many.log"
    speed=$(grep -o "speed *[0-9,]* events/s" "$work/many.log" | grep -o "[0-9,]*" | head -1)
    total=$(grep -o "total [0-9.]* s" "$work/many.log" | grep -o "[0-9.]*")
    memory=$(grep -o "peak memory *[0-9., ]* MiB" "$work/many.log" | sed 's/peak memory *//; s/ MiB//')
    printf "%-6s %-9s %14s %9s  %s\n" "$round" "$ranks" "$speed" "$total" "$memory"
    sync
    pids=()
    for k in $(seq 1 "$ranks"); do
        "$clm_data" import --input "$input" --out "$work/alone$k" "${options[@]}" >"$work/alone$k.log" 2>&1 &
        pids+=($!)
    done
    for k in "${!pids[@]}"; do
        wait "${pids[$k]}" || { echo "a side-by-side import failed:"; cat "$work/alone$((k + 1)).log"; exit 1; }
    done
    python3 - "$ranks" "$one_speed" "$one_total" "$work"/alone*.log <<'PY'
import re, sys
ranks, one_speed, one_total = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
speeds, totals = [], []
for log in sys.argv[4:]:
    text = open(log).read()
    speeds.append(float(re.search(r"speed *([0-9,]+) events/s", text).group(1).replace(",", "")))
    totals.append(float(re.search(r"total ([0-9.]+) s", text).group(1)))
print(f"       {ranks} one-process imports at once: events/s {', '.join(f'{s:,.0f}' for s in speeds)}; "
      f"total s {', '.join(f'{t:.2f}' for t in totals)}")
print(f"       ceiling for {ranks} ranks here: parse {sum(speeds) / one_speed:.2f}x, "
      f"whole import {ranks * one_total / max(totals):.2f}x (the same work done {ranks} times, against one alone)")
PY
    rm -rf "$work"/alone*
    for file in "$work"/one/*; do
        cmp -s "$file" "$work/many/$(basename "$file")" || { echo "DIFFERENT OUTPUT: $(basename "$file")"; exit 1; }
    done
done
echo "the $ranks-rank datasets equal the one-process ones, file for file"
