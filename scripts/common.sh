# Shared by the scripts in this folder: sourced, never run.

# Debian packages the project builds and runs with.
# iproute2 lets scripts/test.sh run the multi-host test on network namespaces; python3-numpy
# runs the scoring interop check (scripts/score_reference.py); libxgboost-dev is the gradient
# boosting baseline's C library; python3-venv makes the measuring tools' virtualenv.
CLM_APT_PACKAGES=(libopenmpi-dev openmpi-bin libopenblas-dev pkg-config iproute2 python3-numpy libxgboost-dev python3-venv)

# mpirun refuses to start as root unless told twice, and then exits 0 without running anything:
# allow it here so that scripts behave the same for root (CI, containers) and for users.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One BLAS thread per rank: the ranks already occupy the cores.
export OPENBLAS_NUM_THREADS=1

# clm_restore_stop_signals SCRIPT ARGS...: when this shell started with SIGINT or SIGTERM
# ignored, runs SCRIPT again with both at their defaults (bash cannot trap or reset a signal
# that was ignored when it started, and every process it starts would inherit the ignoring).
clm_restore_stop_signals() {
    local ignored
    ignored=$(awk '/^SigIgn:/ { print $2 }' /proc/$$/status 2>/dev/null || echo 0)
    # SIGINT is bit 1 of the mask, SIGTERM bit 14.
    if (( (16#${ignored:-0} & 0x4002) != 0 )); then
        exec env --default-signal=INT,TERM "$@"
    fi
}

# The directory the script was started from, before it moves to the repository: relative paths
# a user gives a script are relative to it, as for any command.
clm_caller_dir=$PWD

# PATH as given when absolute, else relative to the caller's directory.
clm_caller_path() {  # clm_caller_path PATH
    case $1 in
        /*) echo "$1" ;;
        *) echo "$clm_caller_dir/$1" ;;
    esac
}

clm_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# Installs the Debian packages that are missing; does nothing when all are present.
clm_install_packages() {
    local missing=()
    for package in "${CLM_APT_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# clm_python_tools PACKAGE==VERSION...: prints the python of a virtualenv outside the project
# holding the named measuring and checking tools (xgboost, schemathesis, onnxruntime...), made
# once and reused. They check the project; nothing the project runs imports them.
clm_python_tools() {
    local venv="${CLM_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/clm-tools-venv}" python=python3
    [ -x /usr/bin/python3 ] && python=/usr/bin/python3
    if [ ! -x "$venv/bin/python" ]; then
        clm_run_bounded 300 "$python" -m venv "$venv" >&2 || { echo "could not make a virtualenv at $venv" >&2; return 1; }
    fi
    clm_run_bounded 1200 "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2 \
        || { echo "pip could not install $* into $venv" >&2; return 1; }
    echo "$venv/bin/python"
}

# mpirun for this machine: oversubscription lets a 2-core box run 4 ranks.
clm_mpirun_local() {
    local ranks=$1
    shift
    mpirun --oversubscribe --bind-to none -np "$ranks" "$@"
}

# pass / fail for the end-to-end test scripts: one line each, counted in $passed and $failed
# (each script sets both to 0 and ends with "<name>: $passed passed, $failed failed").
pass() { echo "ok: $1"; passed=$((passed + 1)); }
fail() { echo "FAILED: $1"; failed=$((failed + 1)); }

# clm_service_port PID LOG [SECONDS]: prints the loopback port a `clm-score serve --port 0`
# started as PID announces in LOG, polling every 0.2 s until it does, the server exits, or
# SECONDS (default 60) pass; prints nothing and returns 1 if it never listened.
clm_service_port() {
    local pid=$1 log=$2 tries=$(( ${3:-60} * 5 )) port=""
    for _ in $(seq 1 "$tries"); do
        port=$(grep -oE "^listening on http://127\.0\.0\.1:[0-9]+" "$log" | grep -oE "[0-9]+$" || true)
        [ -n "$port" ] && { echo "$port"; return 0; }
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# Waits until FILE exists, polling every 0.2 s for at most SECONDS (default 60); a deadline,
# never a guess. Used to wait for a run's first checkpoint, after which the job is mid-run.
clm_wait_for_file() {
    local file=$1 tries=$(( ${2:-60} * 5 ))
    for _ in $(seq 1 "$tries"); do
        [ -f "$file" ] && return 0
        sleep 0.2
    done
    return 1
}

# Every process this shell started, directly or not (children before their parents' siblings).
clm_descendants() {  # clm_descendants PID
    local child
    for child in $(pgrep -P "$1" || true); do
        echo "$child"
        clm_descendants "$child"
    done
}

# Stops PID and everything it started: SIGTERM first (mpirun stops its ranks on it), SIGKILL
# to what is left after 5 s. Processes that started a process group of their own are found too.
clm_stop_tree() {  # clm_stop_tree PID
    local pids
    pids=$(echo "$1"; clm_descendants "$1")
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 25); do
        kill -0 $pids 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL $pids 2>/dev/null || true
}

# Waits at most SECONDS for the background job PID of this shell and returns its status. Past
# the deadline it says so, stops the job and everything it started, and returns 124. It polls
# with short sleeps, so a trap of this shell runs within 0.2 s of its signal.
clm_wait_bounded() {  # clm_wait_bounded PID SECONDS
    local pid=$1 limit=$2
    for _ in $(seq 1 $((limit * 5))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; return; }
        sleep 0.2
    done
    echo "gave up waiting for process $pid ($(ps -o args= -p "$pid" | cut -c1-120)) after $limit s; stopping it" >&2
    clm_stop_tree "$pid"
    wait "$pid" 2>/dev/null || true
    return 124
}

# Runs COMMAND (a program or a shell function) with a deadline of SECONDS, in the background so
# that a signal to this shell is handled at once (see clm_stop_children_on_signal).
clm_run_bounded() {  # clm_run_bounded SECONDS COMMAND...
    local limit=$1
    shift
    "$@" &
    clm_wait_bounded $! "$limit"
}

# A test script stopped by SIGINT or SIGTERM stops everything it started before it exits.
clm_stop_children_on_signal() {
    trap 'trap - INT TERM; echo "stopped by a signal: stopping what this script started" >&2; for child in $(pgrep -P $$ || true); do clm_stop_tree "$child"; done; exit 130' INT TERM
}

# The benchmark scripts' shared flags: --np N (default 2) and --rounds R (default 2) into $ranks
# and $rounds; the arguments after them are left in the array clm_rest.
clm_bench_flags() {
    ranks=2
    rounds=2
    while [ $# -gt 0 ]; do
        case "$1" in
            --np) ranks=$2; shift 2 ;;
            --rounds) rounds=$2; shift 2 ;;
            *) break ;;
        esac
    done
    clm_rest=("$@")
}

# Two batch score CSVs with the same header and rows, ids, periods, stages and actions, and
# scores equal to float32 rounding (1e-5 relative); prints the worst difference.
clm_same_scores() {  # clm_same_scores A B
    python3 - "$1" "$2" <<'PY'
import csv, sys
a, b = csv.reader(open(sys.argv[1])), csv.reader(open(sys.argv[2]))
header = next(a)
if header != next(b):
    sys.exit("different headers")
numeric = {i for i, c in enumerate(header) if c in ("churn_probability", "expected_spend") or c.startswith("p_")}
worst, rows = 0.0, 0
for x, y in zip(a, b, strict=True):
    rows += 1
    for i, (p, q) in enumerate(zip(x, y, strict=True)):
        if i in numeric:
            worst = max(worst, abs(float(p) - float(q)) / max(1.0, abs(float(q))))
        elif p != q:
            sys.exit(f"row {rows}: {header[i]} {p} vs {q}")
if worst > 1e-5:
    sys.exit(f"scores differ by {worst:.1e} (relative)")
print(f"{rows} rows: same customers, order, stages and actions; worst relative score difference {worst:.1e}")
PY
}
