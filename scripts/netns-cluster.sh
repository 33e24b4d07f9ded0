#!/usr/bin/env bash
# A real multi-host test on one machine: three network namespaces ("hosts") on a bridge, each with
# its own hostname, loopback and Open MPI session directory, and a training job launched by
# scripts/train.sh --hostfile across them with the TCP transport only. Checks:
#   - the ranks land on three hosts, and the final model equals a single-host run with as many ranks;
#   - the pre-flight refuses an unreachable host and a host without the binaries, naming them;
#   - the job refuses to train when one host does not see the shared checkpoint root;
#   - a host cut off mid-run (link down) ends the job with a message within the watchdog limit
#     plus a margin, and the latest checkpoint still resumes;
#   - under the supervisor (--max-restarts, --min-ranks 2), a host lost for good is left out on
#     the restart and the job finishes by itself on the other two hosts, saying so.
# Needs root, iproute2 and util-linux (unshare). Binaries come from CLM_BIN or a release build.
# Prints "netns-cluster: N passed, M failed"; exits 77 when it cannot run here.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

skip() { echo "netns-cluster: skipped: $1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "ip (iproute2) is not installed"
command -v unshare >/dev/null || skip "unshare (util-linux) is not installed"

# Names carry this script's pid so that runs in other worktrees on the same machine do not collide;
# interface names are limited to 15 characters.
id=$(( $$ % 100000 ))
bridge="clmbr$id"
names=(a b c)
namespaces=()
for name in "${names[@]}"; do namespaces+=("clm$id$name"); done

# A /24 in 10.0.0.0/8 that no interface uses yet, picked from the pid and moved on when taken.
subnet_octet=$(( id % 200 + 20 ))
while ip -4 -o addr show | grep -q " 10\.213\.$subnet_octet\."; do subnet_octet=$(( (subnet_octet + 1) % 200 + 20 )); done
prefix="10.213.$subnet_octet"
subnet="$prefix.0/24"

work=$(mktemp -d /tmp/clm-netns.XXXXXX)
created_bridge=0
teardown() {
    local status=$?
    set +e
    # An interrupted fault scenario leaves its mpirun and time-out guard behind.
    for pid in ${launcher:-} ${guard:-}; do
        pkill -P "$pid" 2>/dev/null
        kill "$pid" 2>/dev/null
    done
    for ns in "${namespaces[@]}"; do
        ip netns list 2>/dev/null | grep -qw "$ns" || continue
        # A namespace with processes in it survives `ip netns del`: end them first.
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns"
    done
    for index in "${!names[@]}"; do ip link del "clmv$id$index" 2>/dev/null; done
    [ "$created_bridge" -eq 1 ] && ip link del "$bridge" 2>/dev/null
    rm -rf "$work"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

passed=0
failed=0

# --- the virtual cluster --------------------------------------------------------------------
# Root without CAP_NET_ADMIN (an unprivileged container) cannot build the cluster: skip, not fail.
ip link add "$bridge" type bridge 2>"$work/bridge.err" || skip "cannot create a bridge here: $(cat "$work/bridge.err")"
created_bridge=1
ip addr add "$prefix.1/24" dev "$bridge"
ip link set "$bridge" up
hosts=()
for index in "${!names[@]}"; do
    ns=${namespaces[$index]} address="$prefix.$((11 + index))"
    ip netns add "$ns"
    ip link add "clmv$id$index" type veth peer name eth0 netns "$ns"
    ip link set "clmv$id$index" master "$bridge" up
    # Ranks reach their local orted over 127.0.0.1: without lo the job hangs.
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "$work/tmp-${names[$index]}"
    echo "$address $ns clm-node-${names[$index]} $work/tmp-${names[$index]}" >>"$work/hosts"
    hosts+=("$address")
done
echo "== virtual cluster: bridge $bridge ($prefix.1), hosts ${hosts[*]} in namespaces ${namespaces[*]}"

# The rsh agent: Open MPI calls it like ssh (`AGENT [options] HOST command words...`). It runs the
# command in HOST's namespace, under that host's name and with its own TMPDIR, since a shared
# /tmp makes session directories of different "hosts" collide now and then.
# CLM_NETNS_HIDE="ADDRESS:DIR" mounts an empty tmpfs over DIR on that host only (a directory
# that is not shared); `ip netns exec` gives every command a private mount namespace.
cat >"$work/agent" <<'AGENT'
#!/bin/sh
while [ $# -gt 0 ]; do
    case "$1" in
        -l|-p|-o|-i|-F|-E|-b|-c|-e|-m|-L|-R|-D|-S|-W|-J) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
line=$(awk -v host="$host" '$1 == host' "$(dirname "$0")/hosts")
if [ -z "$line" ]; then
    echo "netns agent: no namespace for host '$host'" >&2
    exit 255
fi
set -- "$line" "$*"
ns=$(echo "$1" | cut -d' ' -f2) name=$(echo "$1" | cut -d' ' -f3) tmp=$(echo "$1" | cut -d' ' -f4)
hide=""
case "${CLM_NETNS_HIDE:-}" in "$host:"*) hide=${CLM_NETNS_HIDE#"$host:"} ;; esac
exec ip netns exec "$ns" unshare --uts env TMPDIR="$tmp" CLM_HIDE="$hide" CLM_HOST="$name" CLM_COMMAND="$2" \
    sh -c 'hostname "$CLM_HOST" && { [ -z "$CLM_HIDE" ] || mount -t tmpfs clm-hidden "$CLM_HIDE"; } && exec sh -c "$CLM_COMMAND"'
AGENT
chmod +x "$work/agent"
for address in "${hosts[@]}"; do echo "$address slots=1"; done >"$work/hostfile"

# Every mpirun below (the pre-flight's too) launches through the agent and talks TCP only, so
# traffic crosses the bridge. Short out-of-band keepalives let mpirun notice a lost host within
# seconds instead of minutes.
export OMPI_MCA_plm_rsh_agent="$work/agent"
export OMPI_MCA_btl="tcp,self"
export OMPI_MCA_oob_tcp_keepalive_time=1 OMPI_MCA_oob_tcp_keepalive_intvl=1 OMPI_MCA_oob_tcp_keepalive_probes=3
# mpirun's own session directory; the agent gives each host its own.
export TMPDIR="$work/tmp-root"
mkdir -p "$TMPDIR"
export CLM_PROGRESS=plain CLM_PREFLIGHT_TIMEOUT=20

if [ -z "${CLM_BIN:-}" ]; then
    build=${CLM_BUILD:-release}
    for product in clm-coordinator clm-worker clm-data; do swift build -c "$build" --product "$product" >/dev/null; done
    export CLM_BIN="$(swift build -c "$build" --show-bin-path)"
fi
bin=$CLM_BIN

# --- data and configuration on the "shared" file system (all namespaces see the same one) ---
shared="$work/shared"
mkdir -p "$shared"
"$bin/clm-data" synth --customers 600 --products 100 --seed 5 --out "$shared/events.csv" >/dev/null
"$bin/clm-data" import --input "$shared/events.csv" --product-col product_id --out "$shared/data" >/dev/null
watchdog=8
cat >"$shared/lstm.yaml" <<YAML
model: lstm
data: $shared/data
checkpoints: $shared/checkpoints
run: cluster
epochs: 2
min_steps: 0
batch_size: 16
learning_rate: 0.01
warmup_steps: 2
checkpoint_every_steps: 4
keep_checkpoints: 5
checksum_every_steps: 4
watchdog_seconds: $watchdog
lstm:
  hidden: 8
  layers: 1
YAML
ranks=${#hosts[@]}
cluster() { scripts/train.sh --np "$ranks" --config "$shared/lstm.yaml" --hostfile "$work/hostfile" --iface "$subnet" "$@"; }
latest_model() {
    sha256sum "$shared/checkpoints/$1/$(tr -d '\n' <"$shared/checkpoints/$1/latest")/model.safetensors" | cut -d' ' -f1
}

# Bytes host c received over its link: proof that the job's traffic crossed the bridge.
received_by_c() { cat "/sys/class/net/clmv${id}2/statistics/tx_bytes"; }

echo "== $ranks ranks on $ranks hosts vs $ranks ranks on one host"
start=$(date +%s)
before=$(received_by_c)
if cluster --run cluster >"$work/cluster.log" 2>&1; then
    grep -E "^(pre-flight|placement|training|done)" "$work/cluster.log" || true
    crossed=$(( $(received_by_c) - before ))
    echo "   (cluster run took $(( $(date +%s) - start ))s; host c received $crossed bytes over its link)"
    # 16 all-reduces of 594 floats plus the shards: far more than the control traffic alone.
    if [ "$crossed" -gt 100000 ]; then
        pass "training traffic crossed the virtual network"
    else
        fail "only $crossed bytes reached host c: the ranks did not talk over TCP between hosts"
    fi
    placement=$(grep "^placement: " "$work/cluster.log" || true)
    if [ "$placement" = "placement: clm-node-a rank 0; clm-node-b rank 1; clm-node-c rank 2" ]; then
        pass "one rank on each of the $ranks hosts"
    else
        fail "unexpected placement '$placement'"
    fi
    # The same job on this machine, shared memory allowed, no hostfile.
    if env -u OMPI_MCA_btl -u OMPI_MCA_plm_rsh_agent scripts/train.sh --np "$ranks" --config "$shared/lstm.yaml" \
        --run local >"$work/local.log" 2>&1; then
        if [ "$(latest_model cluster)" = "$(latest_model local)" ]; then
            pass "final model across hosts equals the single-host run ($(latest_model cluster | cut -c1-16))"
        else
            fail "final model across hosts ($(latest_model cluster | cut -c1-16)) differs from the single-host run ($(latest_model local | cut -c1-16))"
        fi
    else
        tail -n 20 "$work/local.log"
        fail "single-host reference run"
    fi
else
    tail -n 30 "$work/cluster.log"
    fail "training across $ranks hosts"
fi

echo "== pre-flight: a host that does not answer"
unreachable="$prefix.99"
{ cat "$work/hostfile"; echo "$unreachable slots=1"; } >"$work/hostfile-unreachable"
status=0
scripts/train.sh --np "$ranks" --config "$shared/lstm.yaml" --hostfile "$work/hostfile-unreachable" --iface "$subnet" \
    --run never >"$work/unreachable.log" 2>&1 || status=$?
grep "^train.sh: " "$work/unreachable.log" || true
if [ "$status" -eq 69 ] && grep -q "^train.sh: cannot start processes on $unreachable " "$work/unreachable.log" \
    && [ ! -e "$shared/checkpoints/never" ]; then
    pass "refused to start, naming $unreachable"
else
    tail -n 10 "$work/unreachable.log"
    fail "unreachable host: status $status"
fi

echo "== pre-flight: a host without the binaries"
status=0
CLM_NETNS_HIDE="${hosts[2]}:$bin" cluster --run never >"$work/nobin.log" 2>&1 || status=$?
grep "^train.sh: " "$work/nobin.log" || true
if [ "$status" -eq 69 ] && grep -q "missing or not executable on ${hosts[2]} (clm-node-c)" "$work/nobin.log"; then
    pass "refused to start, naming ${hosts[2]}"
else
    tail -n 10 "$work/nobin.log"
    fail "missing binaries: status $status"
fi

echo "== a host that does not share the checkpoint root"
status=0
CLM_NETNS_HIDE="${hosts[1]}:$shared/checkpoints" cluster --run unshared >"$work/unshared.log" 2>&1 || status=$?
grep "shared storage check failed" "$work/unshared.log" | head -1 || true
if [ "$status" -ne 0 ] && grep -q "rank 1 (clm-node-b) cannot read the token rank 0 (clm-node-a) wrote" "$work/unshared.log" \
    && ! grep -q "^training " "$work/unshared.log"; then
    pass "job stopped before training, naming rank 1 on clm-node-b"
else
    tail -n 10 "$work/unshared.log"
    fail "unshared checkpoint root: status $status"
fi

# Waits for the background job $launcher and sets $status; a guard kills it after $1 seconds in
# case mpirun hangs, so that the check after it fails instead of the whole test stalling.
wait_for_launcher() {
    status=0
    ( sleep "$1"; kill -9 "$launcher" 2>/dev/null ) &
    guard=$!
    wait "$launcher" || status=$?
    pkill -P "$guard" 2>/dev/null || true
    kill "$guard" 2>/dev/null || true
    wait "$guard" 2>/dev/null || true
    launcher="" guard=""
}

# Ends what is left on host c and brings its link back. Ranks stranded on a cut-off host never
# hear of the abort; a real node would be rebooted.
reconnect_third_host() {
    local pids
    pids=$(ip netns pids "${namespaces[2]}" || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    ip link set "clmv${id}2" up
}

echo "== a host cut off mid-run (link down), then resume from latest"
cluster --run cut --epochs 500 >"$work/cut.log" 2>&1 &
launcher=$!
# The run's first checkpoint: from then on the job is mid-run.
clm_wait_for_file "$shared/checkpoints/cut/latest" 60 || true
ip link set "clmv${id}2" down
start=$(date +%s)
limit=$((watchdog + 20))
wait_for_launcher "$limit"
elapsed=$(( $(date +%s) - start ))
grep -E "collective watchdog|did not arrive|ORTE has lost|Remote daemon|aborting" "$work/cut.log" | head -5 || true
if [ "$status" -ne 0 ] && [ "$status" -ne 137 ] && [ "$elapsed" -le "$limit" ] \
    && grep -qE "Remote daemon: .* on node ${hosts[2]}\$|ranks that did not arrive: 2 " "$work/cut.log"; then
    pass "job ended ${elapsed}s after the link went down (limit ${limit}s), status $status, naming ${hosts[2]}"
else
    tail -n 20 "$work/cut.log"
    fail "cut-off host: status $status after ${elapsed}s"
fi
reconnect_third_host
step=$(tr -d '\n' <"$shared/checkpoints/cut/latest" 2>/dev/null || echo none)
saved=$(grep -o '"globalStep" *: *[0-9]*' "$shared/checkpoints/cut/$step/training.json" 2>/dev/null | grep -o '[0-9]*$' || echo 0)
# A few steps past the checkpoint prove it loads on every rank; the 500 epochs need not run.
if cluster --run cut --resume latest --stop-after-steps $((saved + 3)) >"$work/resume.log" 2>&1 \
    && grep -q "resuming" "$work/resume.log"; then
    pass "latest checkpoint ($step) after the cut verifies and resumes across the hosts"
else
    tail -n 20 "$work/resume.log"
    fail "resume after the cut from $step"
fi

echo "== supervised: a host lost for good; the job finishes on the other two"
cluster --run shrink --epochs 40 --max-restarts 2 --min-ranks 2 >"$work/shrink.log" 2>&1 &
launcher=$!
clm_wait_for_file "$shared/checkpoints/shrink/latest" 60 || true
ip link set "clmv${id}2" down
# Detection (watchdog, keepalives), one probe time-out for the lost host, then the rest on two.
wait_for_launcher 240
grep -E "^== supervisor|^resuming" "$work/shrink.log" || true
if [ "$status" -eq 0 ] && grep -q "^== supervisor: leaving out ${hosts[2]} (no answer or no binaries); continuing on 2 of 3 ranks" "$work/shrink.log" \
    && grep -q "^resuming on 2 ranks from a checkpoint saved on 3" "$work/shrink.log" \
    && grep -q "^== supervisor: attempt 2 finished the job" "$work/shrink.log"; then
    pass "the supervised job left out ${hosts[2]} and finished on 2 hosts by itself"
else
    tail -n 25 "$work/shrink.log"
    fail "supervised job with a host lost for good: status $status"
fi
reconnect_third_host

echo "netns-cluster: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
