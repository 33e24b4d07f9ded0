#!/usr/bin/env bash
# Launches a training job: the coordinator as rank 0 and N-1 workers, as one MPI job.
#
#   scripts/train.sh --np N --config cluster/lstm.yaml [--hostfile hostfiles/F [--iface IFACE]]
#                    [--max-restarts N [--min-ranks M]] [coordinator flags...]
#   scripts/train.sh --slurm [--np N] --config F [--iface IFACE] [--max-restarts N] [flags...]
#
# --slurm runs inside a Slurm allocation (cluster/slurm/train.sbatch calls it so): mpirun takes
# the nodes and slots from Slurm, one rank per task (--np defaults to SLURM_NTASKS), ranks bound
# to cores, and a supervised restart runs again on the same allocation.
#
# --max-restarts N supervises the job: when it fails for a reason a restart can fix (a rank
# died, a watchdog fired, a host stopped answering), it is launched again from the newest
# checkpoint that verifies (--resume latest-valid), at most N times, each attempt logged with
# its cause, the step it resumed from and the time lost. It stops at once on what a restart
# cannot fix (a bad configuration, dataset or key, ranks that disagree, a run that exists, the
# same divergence twice). A clean finish exits 0.
#
# Stopping: SIGINT (Ctrl-C) or SIGTERM to the supervisor is passed on to mpirun at once, which
# stops every rank; the supervisor then exits 130 or 143 and never restarts. An attempt whose
# ranks were ended by SIGINT or SIGTERM from elsewhere (a scheduler's cancel) is a stop too. If
# the supervisor itself is killed, even by SIGKILL, the kernel sends mpirun SIGTERM, so nothing
# it started outlives it. Started with SIGINT ignored (a background job of a script), it
# restores the default first, so Ctrl-C still works.
#
# With a hostfile, every restart first asks each host of the hostfile, one by one, whether it
# answers and has the binaries; hosts that do not are left out of that attempt and the job
# continues on the ranks the remaining hosts' slots hold, down to --min-ranks M (default 1;
# below it the supervisor stops and names the hosts). A resume on fewer ranks starts the saved
# epoch over from its first step, and says so. A host that answers again is used again on the
# next restart.
#
# Coordinator flags (e.g. --epochs 3, --resume latest, --set lstm.hidden=32) are passed through.
# Relative paths (--config, --hostfile, --data, --checkpoints and those inside the configuration)
# are relative to the directory train.sh is started from, as for any command.
# On one machine ranks may outnumber cores (--oversubscribe); with a hostfile they may not.
#
# With a hostfile (several hosts, docs/cluster.md) the script first checks, on every host, that
# it is reachable and that the binaries exist at the same path, and refuses to start otherwise;
# the job itself then checks that the checkpoint root and dataset are shared (SharedStorageCheck).
#
# Environment:
#   CLM_BIN                 directory holding clm-coordinator and clm-worker (skips the build);
#                           on a cluster, a path that exists on every host
#   CLM_PREFLIGHT_TIMEOUT   seconds the per-host checks may take (default 30)
#   OMPI_MCA_*              any other Open MPI setting, e.g. OMPI_MCA_plm_rsh_agent
set -euo pipefail
source "$(dirname "$0")/common.sh"
# Started with SIGINT or SIGTERM ignored (a background job of a script, nohup), bash could not
# trap them and the job would pass the ignoring on to every rank: start again with the defaults.
clm_restore_stop_signals "$0" "$@"

ranks=2
config=""
hostfile=""
iface=""
passthrough=()
max_restarts=""
min_ranks=1
slurm=""
np_given=""
while [ $# -gt 0 ]; do
    case "$1" in
        --np) ranks=$2; np_given=yes; shift 2 ;;
        --max-restarts) max_restarts=$2; shift 2 ;;
        --min-ranks) min_ranks=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --hostfile) hostfile=$2; shift 2 ;;
        --iface) iface=$2; shift 2 ;;
        --slurm) slurm=yes; shift ;;
        *) passthrough+=("$1"); shift ;;
    esac
done
if [ -n "$slurm" ]; then
    [ -n "${SLURM_NTASKS:-}" ] || { echo "--slurm runs inside a Slurm allocation (sbatch or salloc): no SLURM_NTASKS here" >&2; exit 64; }
    [ -z "$hostfile" ] || { echo "--slurm takes the hosts from the allocation: drop --hostfile" >&2; exit 64; }
    [ -n "$np_given" ] || ranks=$SLURM_NTASKS
fi
usage="usage: scripts/train.sh --np N --config cluster/lstm.yaml [--hostfile F [--iface IFACE]] [flags]"
[ -n "$config" ] || { echo "$usage" >&2; exit 64; }
[ -f "$config" ] || { echo "configuration $config does not exist" >&2; exit 66; }
[ "$ranks" -ge 1 ] || { echo "--np must be at least 1" >&2; exit 64; }
[ -z "$hostfile" ] || [ -f "$hostfile" ] || { echo "hostfile $hostfile does not exist" >&2; exit 66; }
[ -z "$iface" ] || [ -n "$hostfile$slurm" ] || { echo "--iface only applies with --hostfile or --slurm (one machine needs no network)" >&2; exit 64; }
[ -z "$max_restarts" ] || [[ "$max_restarts" =~ ^[0-9]+$ ]] || { echo "--max-restarts needs a whole number, got '$max_restarts'" >&2; exit 64; }
[[ "$min_ranks" =~ ^[0-9]+$ ]] && [ "$min_ranks" -ge 1 ] && [ "$min_ranks" -le "$ranks" ] \
    || { echo "--min-ranks needs a whole number from 1 to --np ($ranks), got '$min_ranks'" >&2; exit 64; }

# Paths are the caller's: --config, --hostfile and the job's own paths (--data, --checkpoints
# and those in the configuration) are relative to the directory train.sh is started from.
if [ -n "${CLM_BIN:-}" ]; then
    bin=$(cd "$CLM_BIN" && pwd)
else
    root=$(clm_root)
    swift build --package-path "$root" -c release --product clm-coordinator >/dev/null
    swift build --package-path "$root" -c release --product clm-worker >/dev/null
    bin="$(swift build --package-path "$root" -c release --show-bin-path)"
fi

# Settings shared by the pre-flight and the job, so the checks travel the same way the job will.
# In an allocation each task has its core; elsewhere ranks may share cores with anything.
if [ -n "$slurm" ]; then common=(--bind-to core --map-by core); else common=(--bind-to none); fi
if [ -n "$iface" ]; then
    # Both the data transport (btl) and Open MPI's own control channel (oob) would otherwise try
    # every interface, including docker bridges and ones other hosts cannot route to, and hang.
    common+=(--mca btl_tcp_if_include "$iface" --mca oob_tcp_if_include "$iface")
fi
# Ranks on other hosts get only what is forwarded: BLAS threads, the root permission, the
# progress style, a build tag, and the library path when the Swift runtime is found through it.
export CLM_PROGRESS=${CLM_PROGRESS:-$([ -t 1 ] && echo bar || echo plain)}
forward=(OPENBLAS_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM CLM_PROGRESS)
[ -n "${CLM_VERSION_SUFFIX:-}" ] && forward+=(CLM_VERSION_SUFFIX)
[ -n "${LD_LIBRARY_PATH:-}" ] && forward+=(LD_LIBRARY_PATH)
for name in "${forward[@]}"; do common+=(-x "$name"); done

# Asks every host in the hostfile, one process each, whether the binaries are there. mpirun
# itself failing or timing out means a host is unreachable; probing the hosts one by one then
# names it (mpirun's own message often only says that "an ORTE daemon" failed).
preflight() {
    local limit=${CLM_PREFLIGHT_TIMEOUT:-30} hosts=() output status=0 host
    mapfile -t hosts < <(awk '!/^[[:space:]]*(#|$)/ && !seen[$1]++ { print $1 }' "$hostfile")
    [ ${#hosts[@]} -gt 0 ] || { echo "hostfile $hostfile lists no hosts" >&2; exit 66; }
    local probe='if test -x "$1" && test -x "$2"; then r=ok; else r=missing; fi; echo "clm-preflight $OMPI_COMM_WORLD_RANK $r $(hostname)"'
    echo "pre-flight: ${#hosts[@]} host(s) from $hostfile: ${hosts[*]}"
    output=$(timeout "$limit" mpirun "${common[@]}" --hostfile "$hostfile" -np ${#hosts[@]} --map-by node \
        sh -c "$probe" sh "$bin/clm-coordinator" "$bin/clm-worker" 2>&1) || status=$?
    if [ "$status" -ne 0 ] || [ "$(grep -c '^clm-preflight ' <<<"$output")" -ne ${#hosts[@]} ]; then
        local unreachable=()
        for host in "${hosts[@]}"; do
            timeout "$limit" mpirun "${common[@]}" --host "$host" -np 1 true >/dev/null 2>&1 || unreachable+=("$host")
        done
        if [ ${#unreachable[@]} -gt 0 ]; then
            echo "train.sh: cannot start processes on ${unreachable[*]} (from $hostfile): check that" \
                "'ssh HOST true' works without a password from $(hostname), that Open MPI is installed there," \
                "and that --iface names an interface the hosts share (timeout ${limit}s)" >&2
        else
            echo "train.sh: the pre-flight on the hosts of $hostfile failed (status $status); mpirun said:" >&2
            echo "$output" | tail -n 20 >&2
        fi
        exit 69
    fi
    # With --map-by node, rank r runs on the r-th distinct host of the hostfile.
    local missing=()
    while read -r _ rank result name; do
        [ "$result" = ok ] || missing+=("${hosts[$rank]} ($name)")
    done < <(grep '^clm-preflight ' <<<"$output")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "train.sh: $bin/clm-coordinator or clm-worker is missing or not executable on ${missing[*]}:" \
            "build on every host at the same path, or put the binaries on the shared file system and set CLM_BIN" >&2
        exit 69
    fi
    echo "pre-flight: every host is reachable and has the binaries"
}

# Restarts: asks each host of the hostfile alone whether it answers and has the binaries, and
# writes the lines of the hosts that do to $active_hostfile; sets $available_ranks to their
# slots (1 where a line gives none, capped at --np) and $left_out to the others.
active_hostfile=""
probe_hosts() {
    local limit=${CLM_PREFLIGHT_TIMEOUT:-30} host slots answer
    local probe='if test -x "$1" && test -x "$2"; then echo clm-probe-ok; fi'
    [ -n "$active_hostfile" ] || active_hostfile=$(mktemp)
    : >"$active_hostfile"
    available_ranks=0
    left_out=()
    while read -r host rest; do
        # </dev/null: mpirun would otherwise read the rest of the host list.
        answer=$(timeout "$limit" mpirun "${common[@]}" --host "$host" -np 1 sh -c "$probe" sh "$bin/clm-coordinator" "$bin/clm-worker" </dev/null 2>/dev/null || true)
        if [ "$answer" = clm-probe-ok ]; then
            echo "$host $rest" >>"$active_hostfile"
            slots=$(grep -oE "slots=[0-9]+" <<<"$rest" | cut -d= -f2 || true)
            available_ranks=$((available_ranks + ${slots:-1}))
        else
            left_out+=("$host")
        fi
    done < <(awk '!/^[[:space:]]*(#|$)/ && !seen[$1]++' "$hostfile")
    [ "$available_ranks" -le "$ranks" ] || available_ranks=$ranks
}

# All-reduce algorithm: OpenMPI's own choice (coll tuned's decision rules). At the LSTM's
# 127 KiB gradient on 2 ranks, forcing each algorithm in turn (coll_tuned_allreduce_algorithm
# 1-6, clm-bench allreduce, twice) found none that beat the default in both rounds (default
# 3.35 / 3.84 GB/s bus bandwidth; recursive doubling 3.72 / 3.08, ring 4.09 / 1.23, segmented
# ring 3.33 / 3.37, Rabenseifner 3.88 / 3.35), so none is forced.
launch=(mpirun "${common[@]}")
if [ -n "$hostfile$slurm" ]; then
    [ -n "$slurm" ] || preflight
    # When a host dies or its network goes down, mpirun ends the job only once its control
    # connection to that host's daemon fails. Keepalive probes notice that after ~11 s, but only
    # while the connection is idle: once the watchdog's abort has queued data for the lost host,
    # TCP retransmits for many minutes instead (measured with scripts/netns-cluster.sh). So the
    # probes must finish well inside watchdog_seconds. The peer's kernel answers them, so a busy
    # host is never mistaken for a lost one. OMPI_MCA_oob_tcp_keepalive_* settings win.
    if [ -z "${OMPI_MCA_oob_tcp_keepalive_time:-}" ]; then
        launch+=(--mca oob_tcp_keepalive_time 5 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3)
    fi
    [ -n "$slurm" ] || launch+=(--hostfile "$hostfile")
else
    launch+=(--oversubscribe)
fi
job_ranks=$ranks
job() {  # job [coordinator flags...]: the mpirun command line (on $job_ranks ranks)
    local line=("${launch[@]}" -np 1 "$bin/clm-coordinator" --config "$config" "$@")
    if [ "$job_ranks" -gt 1 ]; then line+=(: -np $((job_ranks - 1)) "$bin/clm-worker"); fi
    printf '%s\0' "${line[@]}"
}
if [ -z "$max_restarts" ]; then
    mapfile -d '' command < <(job "${passthrough[@]}")
    echo "+ ${command[*]}"
    exec "${command[@]}"
fi

# --- supervised --------------------------------------------------------------------------
# The run's directory, to date the newest checkpoint: the flags win over the file, as in the job.
run_name=$(awk -F': *' '/^run:/ { print $2; exit }' "$config")
checkpoint_root=$(awk -F': *' '/^checkpoints:/ { print $2; exit }' "$config")
for ((k = 0; k < ${#passthrough[@]}; k++)); do
    value=${passthrough[k + 1]:-}
    case "${passthrough[k]}" in
        --run) run_name=$value ;;
        --checkpoints) checkpoint_root=$value ;;
        --set) case "$value" in run=*) run_name=${value#run=} ;; checkpoints=*) checkpoint_root=${value#checkpoints=} ;; esac ;;
    esac
done
latest_pointer="$checkpoint_root/$run_name/latest"
# The flags without any --resume: a restart chooses its own.
fresh_flags=()
for ((k = 0; k < ${#passthrough[@]}; k++)); do
    if [ "${passthrough[k]}" = "--resume" ]; then k=$((k + 1)); continue; fi
    fresh_flags+=("${passthrough[k]}")
done

# A signal to the supervisor stops the attempt at once: mpirun runs in the background so that
# bash runs the trap while it waits (it holds traps until a foreground command ends), and the
# trap passes the signal on to mpirun, which stops every rank.
stop_signal=""
attempt_pid=""
forward_signal() {  # forward_signal NAME
    stop_signal=$1
    if [ -n "$attempt_pid" ]; then kill -s "$1" "$attempt_pid" 2>/dev/null || true; fi
}
stop() {  # stop WHEN: says when the stop signal came and exits with the shell's status for it
    echo "== supervisor: stopped by SIG$stop_signal $1"
    [ "$stop_signal" = INT ] && exit 130
    exit 143
}
trap 'forward_signal INT' INT
trap 'forward_signal TERM' TERM
attempt_log=$(mktemp)
trap 'rm -f "$attempt_log" ${active_hostfile:+"$active_hostfile"}' EXIT
flags=("${passthrough[@]}")
diverged_at=""
attempt=1
while true; do
    # A signal between attempts (while hosts are probed) stops before the next one starts.
    [ -z "$stop_signal" ] || stop "before attempt $attempt"
    mapfile -d '' command < <(job "${flags[@]}")
    echo "== supervisor: attempt $attempt of at most $((max_restarts + 1)): ${command[*]}"
    started=$(date +%s)
    # The kernel sends mpirun SIGTERM if the supervisor dies, even by SIGKILL, so no attempt
    # outlives it: mpirun then stops its ranks.
    setpriv --pdeathsig TERM "${command[@]}" >"$attempt_log" 2>&1 &
    attempt_pid=$!
    tail -n +1 -s 0.2 -f --pid="$attempt_pid" "$attempt_log" &
    echo_pid=$!
    # A trapped signal ends `wait` early; the attempt has ended once its process is gone, and
    # a last `wait` then gives its status. After a stop signal the wait is bounded: an mpirun
    # still there 30 s later is killed (its ranks then lose their daemon and end).
    while kill -0 "$attempt_pid" 2>/dev/null; do
        if [ -n "$stop_signal" ]; then
            for _ in $(seq 1 150); do kill -0 "$attempt_pid" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$attempt_pid" 2>/dev/null || true
        fi
        wait "$attempt_pid" 2>/dev/null || true
    done
    status=0
    wait "$attempt_pid" 2>/dev/null || status=$?
    attempt_pid=""
    # tail sees the attempt gone within 0.2 s and prints what is left of the log first.
    wait "$echo_pid" 2>/dev/null || true
    ended=$(date +%s)
    if [ "$status" -eq 0 ]; then
        echo "== supervisor: attempt $attempt finished the job"
        exit 0
    fi
    [ -z "$stop_signal" ] || stop "during attempt $attempt; not restarting"
    # Ranks or mpirun ended by SIGINT or SIGTERM were stopped on purpose (Ctrl-C, a scheduler's
    # cancel, an operator): that is a stop too, never a failure to restart from.
    line=""
    if [ "$status" -eq 130 ] || [ "$status" -eq 143 ] \
        || line=$(grep -m1 -E "exited on signal (2|15) " "$attempt_log"); then
        echo "== supervisor: attempt $attempt was stopped by a signal (status $status${line:+: $line}); not restarting"
        exit "$status"
    fi
    # What a restart cannot fix ends the supervision with the job's own reason.
    reason=""
    if grep -q "^clm-coordinator: error: " "$attempt_log"; then
        reason="the job could not start: $(grep -m1 "^clm-coordinator: error: " "$attempt_log" | sed 's/^clm-coordinator: error: //')"
    elif line=$(grep -m1 -E "ranks disagree before the first step|already has checkpoints|damaged dataset|no dataset at" "$attempt_log"); then
        reason="$line"
    elif line=$(grep -m1 -oE "parameters diverged at step [0-9]+" "$attempt_log"); then
        step=${line##* }
        if [ "$step" = "$diverged_at" ]; then
            reason="the parameters diverged at step $step twice: a restart repeats it"
        fi
        diverged_at=$step
    fi
    if [ -n "$reason" ]; then
        echo "== supervisor: attempt $attempt failed (status $status) and a restart cannot fix it: $reason" >&2
        exit "$status"
    fi
    cause=$(grep -m1 -oE "ranks that did not arrive: [^;]*|parameters diverged at step [0-9]+|exited on signal [0-9]+[^.]*|lost communication with a remote daemon|training failed: [^\n]{0,160}" "$attempt_log" || true)
    if [ "$attempt" -gt "$max_restarts" ]; then
        echo "== supervisor: attempt $attempt failed (status $status${cause:+: $cause}); no restarts left of $max_restarts" >&2
        exit "$status"
    fi
    lost="since the attempt began $((ended - started)) s"
    if [ -f "$latest_pointer" ]; then
        saved=$(stat -c %Y "$latest_pointer")
        lost="$((ended - (saved > started ? saved : started))) s of work after its newest checkpoint ($(tr -d '\n' <"$latest_pointer"))"
        flags=("${fresh_flags[@]}" --resume latest-valid)
    else
        flags=("${fresh_flags[@]}")
    fi
    echo "== supervisor: attempt $attempt failed (status $status${cause:+: $cause}); lost $lost; restarting from the newest valid checkpoint"
    attempt=$((attempt + 1))
    if [ -n "$hostfile" ]; then
        probe_hosts
        if [ "$available_ranks" -lt "$min_ranks" ]; then
            echo "== supervisor: only $available_ranks rank(s) fit on the hosts that answer (${left_out[*]} did not), fewer than --min-ranks $min_ranks; stopping" >&2
            exit "$status"
        fi
        if [ ${#left_out[@]} -gt 0 ]; then
            echo "== supervisor: leaving out ${left_out[*]} (no answer or no binaries); continuing on $available_ranks of $ranks ranks"
        elif [ "$job_ranks" -lt "$ranks" ]; then
            echo "== supervisor: every host answers again; back to $ranks ranks"
        fi
        job_ranks=$available_ranks
        for ((k = 0; k < ${#launch[@]}; k++)); do
            [ "${launch[k]}" = "--hostfile" ] && launch[k + 1]=$active_hostfile
        done
    fi
done
