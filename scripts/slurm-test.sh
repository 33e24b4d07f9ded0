#!/usr/bin/env bash
# Runs cluster/slurm/train.sbatch under a real Slurm on this machine: installs slurm-wlm and
# munge when missing, starts munged, slurmctld and slurmd with a generated one-node
# configuration under a temporary directory, and checks that
#   - a 2-task job trains and checkpoints, and its latest checkpoint resumes;
#   - scancel in the middle of a run leaves a latest checkpoint that verifies and resumes;
#   - with CLM_MAX_RESTARTS, a worker killed mid-run is restarted inside the same allocation and
#     the job completes.
# It stops the daemons it started, by their pids, and removes what it wrote. Exits 77 (skip)
# where it cannot run: not root, or no package manager to install Slurm with.
# Prints "slurm: N passed, M failed" and exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

skip() { echo "slurm-test: skipped: $1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to start Slurm's daemons"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || skip "slurm-wlm and munge are not installed and apt-get is missing"
    echo "installing slurm-wlm and munge"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

build=${CLM_BUILD:-debug}
swift build -c "$build" --product clm-data >/dev/null
swift build -c "$build" --product clm-coordinator >/dev/null
swift build -c "$build" --product clm-worker >/dev/null
bin="$(swift build -c "$build" --show-bin-path)"

work=$(mktemp -d /tmp/clm-slurm.XXXXXX)
chmod 755 "$work"
munge_pid="" ; ctld_pid="" ; slurmd_pid=""
teardown() {
    local status=$?
    # Cancel whatever is left, then stop the daemons this script started, by their pids.
    [ -n "$ctld_pid" ] && scancel --quiet --user=root 2>/dev/null || true
    for pid in "$slurmd_pid" "$ctld_pid" "$munge_pid"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "$slurmd_pid" "$ctld_pid" "$munge_pid"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    [ -n "${CLM_KEEP_WORK:-}" ] || rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

passed=0
failed=0

# --- munge and Slurm, one node -------------------------------------------------------------
host=$(hostname -s)
mkdir -p "$work/munge" "$work/spool/ctld" "$work/spool/d" "$work/log"
chown munge:munge "$work/munge"
# munged refuses a socket directory others can write to; it lives in the work directory.
runuser -u munge -- munged --socket="$work/munge/socket" --pid-file="$work/munge/munged.pid" \
    --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" --force
for _ in $(seq 1 50); do [ -s "$work/munge/munged.pid" ] && break; sleep 0.1; done
munge_pid=$(cat "$work/munge/munged.pid" 2>/dev/null || true)
[ -n "$munge_pid" ] || { cat "$work/munge/munged.log" 2>/dev/null; echo "munged did not start"; exit 1; }

cat >"$work/slurm.conf" <<CONF
ClusterName=clm-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/socket
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$work/spool/ctld
SlurmdSpoolDir=$work/spool/d
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"
slurmctld -f "$SLURM_CONF"
for _ in $(seq 1 50); do [ -s "$work/slurmctld.pid" ] && break; sleep 0.1; done
ctld_pid=$(cat "$work/slurmctld.pid" 2>/dev/null || true)
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 50); do [ -s "$work/slurmd.pid" ] && break; sleep 0.1; done
slurmd_pid=$(cat "$work/slurmd.pid" 2>/dev/null || true)
ready=""
for _ in $(seq 1 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then ready=yes; break; fi
    sleep 0.2
done
if [ -z "$ready" ]; then
    tail -n 20 "$work/log/slurmctld.log" "$work/log/slurmd.log" 2>/dev/null || true
    echo "slurm-test: the node did not become idle"
    exit 1
fi
echo "slurm: controller pid $ctld_pid, node daemon pid $slurmd_pid, munged pid $munge_pid; node $host $(sinfo -h -o %t)"

# --- the data and configuration ------------------------------------------------------------
"$bin/clm-data" synth --customers 1500 --products 200 --seed 3 --out "$work/events.csv" >/dev/null
"$bin/clm-data" import --input "$work/events.csv" --out "$work/data" >/dev/null
cat >"$work/lstm.yaml" <<YAML
model: lstm
data: $work/data
checkpoints: $work/checkpoints
run: slurm
epochs: 2
min_steps: 0
batch_size: 32
learning_rate: 0.01
checkpoint_every_steps: 5
keep_checkpoints: 20
watchdog_seconds: 30
lstm:
  hidden: 8
  layers: 1
YAML
export CLM_BIN="$bin"

# A resume of `run` on one local rank for 2 more steps: it succeeds only when latest verifies.
resumes() {
    local run=$1
    clm_mpirun_local 1 "$bin/clm-coordinator" --config "$work/lstm.yaml" --run "$run" --resume latest \
        --stop-after-steps "$(( $(tr -dc 0-9 <"$work/checkpoints/$run/latest" | sed 's/^0*//') + 2 ))" \
        >"$work/resume-$run.log" 2>&1
}

echo "== sbatch -n 2: the job trains and checkpoints"
status=0
timeout 600 sbatch -W --nodes=1 --ntasks=2 --ntasks-per-node=2 --time=10 --output="$work/trained.out" \
    cluster/slurm/train.sbatch "$work/lstm.yaml" >"$work/submit.log" 2>&1 || status=$?
if [ "$status" -eq 0 ] && grep -q "^done: 2 epochs" "$work/trained.out" && [ -f "$work/checkpoints/slurm/latest" ] && resumes slurm; then
    grep -E "^(training|done)" "$work/trained.out"
    pass "sbatch ran the 2-rank job to the end; its latest checkpoint resumes"
else
    cat "$work/submit.log"; tail -n 20 "$work/trained.out" 2>/dev/null || true
    fail "sbatch job: status $status"
fi

echo "== scancel mid-run leaves a latest checkpoint that verifies"
sed -e 's/^run: slurm/run: cancelled/' -e 's/^epochs: 2/epochs: 500/' "$work/lstm.yaml" >"$work/long.yaml"
job=$(sbatch --parsable --nodes=1 --ntasks=2 --ntasks-per-node=2 --time=10 --output="$work/cancelled.out" \
    cluster/slurm/train.sbatch "$work/long.yaml")
# The run's first checkpoint: from then on the job is mid-run.
clm_wait_for_file "$work/checkpoints/cancelled/latest" 120 || true
scancel "$job"
gone=""
for _ in $(seq 1 300); do
    if [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && ! pgrep -f "^$bin/clm-(worker|coordinator)( |$)" >/dev/null; then
        gone=yes; break
    fi
    sleep 0.2
done
if [ -n "$gone" ] && [ -f "$work/checkpoints/cancelled/latest" ] && resumes cancelled; then
    pass "scancel ended job $job and left no process; latest ($(tr -d '\n' <"$work/checkpoints/cancelled/latest")) verifies and resumes"
else
    tail -n 10 "$work/cancelled.out" "$work/resume-cancelled.log" 2>/dev/null || true
    fail "scancel: job gone '$gone'"
fi

echo "== CLM_MAX_RESTARTS=2: a worker killed mid-run, the job restarts inside its allocation"
sed -e 's/^run: slurm/run: supervised/' -e 's/^epochs: 2/epochs: 40/' "$work/lstm.yaml" >"$work/supervised.yaml"
job=$(CLM_MAX_RESTARTS=2 sbatch --parsable --nodes=1 --ntasks=2 --ntasks-per-node=2 --time=10 \
    --output="$work/supervised.out" cluster/slurm/train.sbatch "$work/supervised.yaml")
clm_wait_for_file "$work/checkpoints/supervised/latest" 120 || true
victim=$(pgrep -f "^$bin/clm-worker( |$)" | head -1 || true)
[ -n "$victim" ] && kill -9 "$victim"
state=""
for _ in $(seq 1 1500); do
    if [ -z "$(squeue -h -j "$job" 2>/dev/null)" ]; then
        state=$(scontrol show job "$job" 2>/dev/null | grep -o "JobState=[A-Z]*" | cut -d= -f2 || true)
        break
    fi
    sleep 0.2
done
grep "^== supervisor" "$work/supervised.out" || true
if [ -n "$victim" ] && [ "$state" = COMPLETED ] && grep -q "^== supervisor: attempt 1 failed" "$work/supervised.out" \
    && grep -q "^== supervisor: attempt 2 finished the job" "$work/supervised.out" && grep -q "^done: " "$work/supervised.out"; then
    pass "job $job restarted inside its allocation after kill -9 of a worker and completed"
else
    tail -n 15 "$work/supervised.out" 2>/dev/null || true
    fail "supervised Slurm job: victim '$victim', state '$state'"
fi

echo "slurm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
