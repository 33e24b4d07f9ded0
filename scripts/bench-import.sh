#!/usr/bin/env bash
# Import benchmark: the same event file imported by one process and by mpirun -np N, alternated
# for R rounds in one session (timings on a shared machine drift; compare within a round).
# Checks that both wrote the same dataset, then prints events/s of the parse-and-aggregate
# pass, total wall time and peak resident memory per process.
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

printf "%-6s %-9s %14s %9s  %s\n" round ranks "events/s" "total s" "peak RSS MiB per process"
for round in $(seq 1 "$rounds"); do
    /usr/bin/time -f "%M" -o "$work/one.rss" "$clm_data" import --input "$input" --out "$work/one" "${options[@]}" >"$work/one.log"
    speed=$(grep -o "speed *[0-9,]* events/s" "$work/one.log" | grep -o "[0-9,]*" | head -1)
    total=$(grep -o "total [0-9.]* s" "$work/one.log" | grep -o "[0-9.]*")
    printf "%-6s %-9s %14s %9s  %s\n" "$round" 1 "$speed" "$total" "$(( $(cat "$work/one.rss") / 1024 ))"
    clm_mpirun_local "$ranks" "$clm_data" import --input "$input" --out "$work/many" "${options[@]}" >"$work/many.log"
    speed=$(grep -o "speed *[0-9,]* events/s" "$work/many.log" | grep -o "[0-9,]*" | head -1)
    total=$(grep -o "total [0-9.]* s" "$work/many.log" | grep -o "[0-9.]*")
    memory=$(grep -o "peak memory *[0-9., ]* MiB" "$work/many.log" | sed 's/peak memory *//; s/ MiB//')
    printf "%-6s %-9s %14s %9s  %s\n" "$round" "$ranks" "$speed" "$total" "$memory"
    for file in "$work"/one/*; do
        cmp -s "$file" "$work/many/$(basename "$file")" || { echo "DIFFERENT OUTPUT: $(basename "$file")"; exit 1; }
    done
done
echo "the $ranks-rank datasets equal the one-process ones, file for file"
