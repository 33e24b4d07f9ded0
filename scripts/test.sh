#!/usr/bin/env bash
# The project's test command: unit tests, then the multi-rank tests under real mpirun at
# 1-4 ranks, then the failure scenarios. Installs what it needs first. Exits non-zero on any
# failure, including a rank that never reported (mpirun can exit 0 without starting anything).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_install_packages

echo "== unit tests (swift test)"
swift test 2>&1 | tee /tmp/clm-swift-test.log | grep -vE "^(◇|✔) Test .* (started|passed)" || true
# tee hides swift test's own status behind the pipe; read it from the log instead.
grep -qE "Test run with [0-9]+ tests? .*passed" /tmp/clm-swift-test.log \
    || { echo "swift test failed"; exit 1; }

echo "== building the multi-rank tests"
swift build --product clm-multirank-tests
multirank="$(swift build --show-bin-path)/clm-multirank-tests"

total_passed=0
total_failed=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# Runs the collective checks at $1 ranks and verifies that every rank printed its summary.
run_ranks() {
    local ranks=$1 log="$log_dir/np$1.log" status=0
    echo "== multi-rank tests at $ranks rank(s)"
    timeout 600 bash -c "$(declare -f clm_mpirun_local); clm_mpirun_local $ranks '$multirank'" >"$log" 2>&1 || status=$?
    grep -E "^(FAIL|multirank)" "$log" || true
    local reported
    reported=$(grep -cE "^multirank rank=[0-9]+ size=$ranks: [0-9]+ passed, 0 failed$" "$log" || true)
    if [ "$status" -ne 0 ] || [ "$reported" -ne "$ranks" ]; then
        echo "multi-rank tests at $ranks ranks FAILED: mpirun status $status, $reported of $ranks ranks reported success"
        tail -40 "$log"
        total_failed=$((total_failed + 1))
        return
    fi
    total_passed=$((total_passed + 1))
}

for ranks in 1 2 3 4; do run_ranks "$ranks"; done

# A rank that never reaches a collective: the watchdog (2 s limit) must end the job well before
# the stuck rank's 60 s sleep, name it, and make mpirun fail.
echo "== failure scenario: a rank that never arrives"
log="$log_dir/missing.log"
start=$(date +%s)
status=0
timeout 120 bash -c "$(declare -f clm_mpirun_local); clm_mpirun_local 3 '$multirank' --scenario missing-rank" >"$log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))
grep -E "collective watchdog|did not arrive|aborting" "$log" | head -6 || true
if [ "$status" -ne 0 ] && [ "$elapsed" -lt 30 ] && grep -q "ranks that did not arrive: 2 " "$log" \
    && ! grep -q "passed the barrier" "$log"; then
    echo "watchdog ended the job in ${elapsed}s with status $status, naming rank 2"
    total_passed=$((total_passed + 1))
else
    echo "watchdog scenario FAILED: status $status after ${elapsed}s"
    tail -30 "$log"
    total_failed=$((total_failed + 1))
fi

# The check above must be able to fail: one rank failing one check has to turn the run red.
echo "== failure scenario: one rank fails a check"
log="$log_dir/failing.log"
status=0
timeout 120 bash -c "$(declare -f clm_mpirun_local); clm_mpirun_local 3 '$multirank' --scenario failing-rank" >"$log" 2>&1 || status=$?
reported=$(grep -cE "^multirank rank=[0-9]+ size=3: [0-9]+ passed, 0 failed$" "$log" || true)
if [ "$status" -ne 0 ] && [ "$reported" -eq 2 ] && grep -q "^FAIL rank 1/3" "$log"; then
    echo "a failing rank 1 was detected: mpirun status $status, 2 of 3 ranks reported success"
    total_passed=$((total_passed + 1))
else
    echo "failing-rank scenario FAILED: status $status, $reported ranks reported success"
    tail -30 "$log"
    total_failed=$((total_failed + 1))
fi

echo
echo "multi-rank: $total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
