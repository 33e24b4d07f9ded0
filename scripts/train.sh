#!/usr/bin/env bash
# Launches a training job: the coordinator as rank 0 and N-1 workers, as one MPI job.
#
#   scripts/train.sh --np N --config cluster/lstm.yaml [--hostfile hostfiles/F] [coordinator flags...]
#
# Coordinator flags (e.g. --epochs 3, --resume latest, --set lstm.hidden=32) are passed through.
# On one machine ranks may outnumber cores (--oversubscribe); with a hostfile they may not.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

ranks=2
config=""
hostfile=""
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --np) ranks=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --hostfile) hostfile=$2; shift 2 ;;
        *) passthrough+=("$1"); shift ;;
    esac
done
[ -n "$config" ] || { echo "usage: scripts/train.sh --np N --config cluster/lstm.yaml [--hostfile F] [flags]" >&2; exit 64; }
[ -f "$config" ] || { echo "configuration $config does not exist" >&2; exit 66; }
[ "$ranks" -ge 1 ] || { echo "--np must be at least 1" >&2; exit 64; }

swift build -c release --product clm-coordinator >/dev/null
swift build -c release --product clm-worker >/dev/null
bin="$(swift build -c release --show-bin-path)"

launch=(mpirun --bind-to none)
if [ -n "$hostfile" ]; then
    launch+=(--hostfile "$hostfile")
else
    launch+=(--oversubscribe)
fi
# Ranks find their BLAS thread count and the root permission in the environment.
launch+=(-x OPENBLAS_NUM_THREADS -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)
# The progress bar needs to know whether mpirun itself writes to a terminal.
if [ -t 1 ]; then export CLM_PROGRESS=${CLM_PROGRESS:-bar}; else export CLM_PROGRESS=${CLM_PROGRESS:-plain}; fi
launch+=(-x CLM_PROGRESS)
launch+=(-np 1 "$bin/clm-coordinator" --config "$config" "${passthrough[@]}")
if [ "$ranks" -gt 1 ]; then
    launch+=(: -np $((ranks - 1)) "$bin/clm-worker")
fi
echo "+ ${launch[*]}"
exec "${launch[@]}"
