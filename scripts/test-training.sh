#!/usr/bin/env bash
# End-to-end checks of the training job under real mpirun, on a small synthetic dataset that
# 3 ranks import in parts of 100 customers (so the jobs at 1, 2 and 4 ranks read, and verify
# the parts of, a dataset written at another rank count):
#   - a run killed after step 13 and resumed from its latest checkpoint ends bit-identical to a
#     run trained straight through (same world size);
#   - one process without mpirun equals -np 1 under mpirun;
#   - resuming on another world size works;
#   - kill -9 of a worker ends the job with an error in bounded time, and `latest` still loads;
#   - the run's XGBoost baseline is reproduced by Python's XGBoost on the same rows, and is
#     scores every customer alike at 1, 2 and 3 ranks;
#   - the trained model, scored by the real clm-score, gives training's test scores, and
#     clm-score-mpi at 1-3 ranks scores the same customers in the same order (byte for byte
#     at one rank, to float rounding at more);
#   - a supervised job (train.sh --max-restarts) comes back by itself after kill -9 of a worker,
#     twenty runs with a random rank killed at a random moment all finish bit-identical to an
#     uninterrupted run, and a bad configuration and Ctrl-C stop it at once;
#   - the graph model trains and beats the majority class on test macro-F1.
# Prints "training-e2e: N passed, M failed" and exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"

clm_stop_children_on_signal
build=${CLM_BUILD:-debug}
for product in clm-data clm-coordinator clm-worker clm-score clm-score-mpi; do
    clm_run_bounded 3600 swift build -c "$build" --product "$product" >/dev/null
done
bin="$(swift build -c "$build" --show-bin-path)"
work=$(mktemp -d)
trap '[ -n "${CLM_KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
export CLM_PROGRESS=plain

passed=0
failed=0

"$bin/clm-data" synth --customers 1500 --products 200 --seed 3 --out "$work/events.csv" >/dev/null
clm_run_bounded 300 clm_mpirun_local 3 "$bin/clm-data" import --input "$work/events.csv" \
    --product-col product_id --rows-per-part 100 --out "$work/data" >/dev/null

cat >"$work/lstm.yaml" <<YAML
model: lstm
data: $work/data
checkpoints: $work/checkpoints
run: straight
epochs: 2
min_steps: 0
batch_size: 32
learning_rate: 0.01
warmup_steps: 3
checkpoint_every_steps: 5
keep_checkpoints: 20
checksum_every_steps: 5
watchdog_seconds: 20
lstm:
  hidden: 8
  layers: 2
  dropout: 0.2
YAML

job() {  # job RANKS [coordinator flags...]: at most 5 minutes
    local ranks=$1
    shift
    if [ "$ranks" -eq 1 ]; then
        clm_run_bounded 300 clm_mpirun_local 1 "$bin/clm-coordinator" --config "$work/lstm.yaml" "$@"
    else
        clm_run_bounded 300 clm_mpirun_local 1 "$bin/clm-coordinator" --config "$work/lstm.yaml" "$@" : -np $((ranks - 1)) "$bin/clm-worker"
    fi
}
ranks_of() {  # ranks_of LAUNCHER NAME: pids of the NAME processes of the mpirun that LAUNCHER started
    # Only this job's ranks: a rank of the previous job can still be leaving the process table.
    local mpirun_pid
    for mpirun_pid in $(pgrep -x mpirun -P "$1" || true); do pgrep -x "$2" -P "$mpirun_pid" || true; done
}
latest_model() {  # the SHA-256 of the model in a run's latest checkpoint
    local run=$1
    sha256sum "$work/checkpoints/$run/$(tr -d '\n' <"$work/checkpoints/$run/latest")/model.safetensors" | cut -d' ' -f1
}

echo "== straight run, 2 ranks"
job 2 --run straight >"$work/straight.log" 2>&1 || { tail -n 20 "$work/straight.log"; fail "straight run"; }
grep -E "^(training|epoch|done|  validation|  test)" "$work/straight.log" || true

predictions="$work/checkpoints/straight/test_predictions.csv"
test_customers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["split"]["sizes"][2])' "$work/data/manifest.json")
if [ -f "$predictions" ] && head -1 "$predictions" | grep -q "^dataset_row,churn_label,churn_probability,spend,expected_spend,stage," \
    && [ "$(($(wc -l <"$predictions") - 1))" -eq "$test_customers" ]; then
    pass "test predictions written for all $test_customers test customers"
else
    fail "test predictions missing or incomplete ($predictions)"
fi
# Each rank wrote its own test customers into the file and computed the metrics with the others
# without gathering them: the file must list each test customer once, in dataset order, and
# its columns must give the test AUC and log loss the run logged; the baseline summary must
# hold every customer once.
if python3 - "$predictions" "$work/checkpoints/straight/metrics.jsonl" "$work/checkpoints/straight/baseline_summary.csv" \
        "$work/data/manifest.json" <<'PY'
import csv, json, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
order = [int(r["dataset_row"]) for r in rows]
test = [json.loads(line) for line in open(sys.argv[2]) if '"test"' in line][-1]
labels = [int(r["churn_label"]) for r in rows]
scores = [float(r["churn_probability"]) for r in rows]
positives = [s for s, l in zip(scores, labels) if l == 1]
negatives = [s for s, l in zip(scores, labels) if l == 0]
pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
auc = pairs / (len(positives) * len(negatives))
log_loss = -sum(math.log(min(max(s if l else 1 - s, 1e-15), 1)) for s, l in zip(scores, labels)) / len(rows)
summary = [int(r["dataset_row"]) for r in csv.DictReader(open(sys.argv[3]))]
customers = sum(json.load(open(sys.argv[4]))["split"]["sizes"])
print(f"file AUC {auc:.6f}, logged {test['test_auc']:.6f}; log loss {log_loss:.6f}, logged {test['test_log_loss']:.6f}; "
      f"baseline summary {len(summary)} rows for {customers} customers")
ok = (order == sorted(set(order)) and abs(auc - test["test_auc"]) < 1e-9 and abs(log_loss - test["test_log_loss"]) < 1e-6
      and sorted(summary) == list(range(customers)))
sys.exit(0 if ok else 1)
PY
then
    pass "the 2-rank test predictions and baseline summary hold every customer once and give the logged metrics"
else
    fail "the 2-rank test predictions or baseline summary disagree with the logged metrics"
fi

echo "== the XGBoost baseline refitted by Python's XGBoost on the same rows"
# The run stored its boosting features, labels, predictions and settings; xgboost from PyPI
# (same major version as Debian's C library, in a virtualenv outside the project) must keep the
# same rounds and give the same predictions.
if grep -q '"test_xgboost_auc"' "$work/checkpoints/straight/metrics.jsonl" \
    && xgboost_python=$(clm_python_tools "xgboost==1.7.6") \
    && clm_run_bounded 300 "$xgboost_python" scripts/xgboost_reference.py "$work/checkpoints/straight"; then
    pass "Python's XGBoost reproduces the run's gradient boosting baseline"
else
    fail "the run's gradient boosting baseline is missing or Python's XGBoost disagrees with it"
fi

echo "== the trained model scored by the real clm-score"
# As of the dataset's cut-off the scorer computes the very features training stored, so its
# churn probabilities for the test customers must be the ones training wrote for them.
cutoff=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cutoffDate"])' "$work/data/manifest.json")
if clm_run_bounded 120 "$bin/clm-score" batch --checkpoints "$work/checkpoints" --run straight --events "$work/events.csv" \
        --product-col product_id --as-of "$cutoff" --out "$work/scores.csv" >"$work/score.log" 2>&1 \
    && python3 - "$work/scores.csv" "$predictions" "$work/data/customer_ids.txt" <<'PY'
import csv, math, sys
scores = {row["customer_id"]: row for row in csv.DictReader(open(sys.argv[1]))}
ids = open(sys.argv[3]).read().split("\n")
worst, compared = 0.0, 0
for row in csv.DictReader(open(sys.argv[2])):
    scored = scores[ids[int(row["dataset_row"])]]
    worst = max(worst, abs(float(scored["churn_probability"]) - float(row["churn_probability"])))
    compared += 1
actions = {row["action"] for row in scores.values()}
ok = compared > 0 and worst < 1e-5 and len(scores) == len(ids) - 1 and actions <= {
    "retention_offer", "winback_email", "upsell", "onboarding", "nurture"}
print(f"{len(scores)} customers scored; {compared} test customers compared, worst churn difference {worst:.2e}; actions {sorted(actions)}")
sys.exit(0 if ok else 1)
PY
then
    pass "clm-score batch gives training's test scores for the trained checkpoint"
else
    tail -n 20 "$work/score.log"
    fail "train -> score end to end"
fi

echo "== the same model scored under mpirun by clm-score-mpi"
# One rank scores the batches one process scores: the same bytes. More ranks score their own
# customers in their own batches: with a fused forward kernel (AVX2 or AVX-512, named in the
# summary) a customer's scores do not depend on its batch, so the bytes are the same again; the
# portable path's GEMMs sum in another order, so there the check is the same customers, order,
# stages and actions, and scores equal to float32 rounding. Small reading and exchange rounds make
# customers cross rank boundaries and the rows be dealt out over many rounds.
score_ranks() {  # score_ranks RANKS OUT [extra flags]
    local ranks=$1 out=$2
    shift 2
    clm_run_bounded 120 clm_mpirun_local "$ranks" "$bin/clm-score-mpi" --checkpoints "$work/checkpoints" --run straight --events "$work/events.csv" \
        --product-col product_id --as-of "$cutoff" --out "$out" "$@"
}
clm_run_bounded 120 "$bin/clm-score" batch --checkpoints "$work/checkpoints" --run straight --events "$work/events.csv" \
    --product-col product_id --as-of "$cutoff" --out "$work/scores-threads.csv" --threads 2 >/dev/null 2>&1 || true
if score_ranks 1 "$work/scores-np1.csv" >"$work/score-np1.log" 2>&1 && cmp -s "$work/scores-np1.csv" "$work/scores-threads.csv"; then
    pass "clm-score-mpi at one rank writes clm-score batch's bytes"
else
    tail -n 5 "$work/score-np1.log"
    fail "clm-score-mpi at one rank differs from clm-score batch"
fi
for ranks in 2 3; do
    if score_ranks "$ranks" "$work/scores-np$ranks.csv" --round-bytes-per-rank 4096 --exchange-bytes-per-round 700 >"$work/score-np$ranks.log" 2>&1 \
        && grep -q "on $ranks ranks × " "$work/score-np$ranks.log" \
        && clm_same_scores "$work/scores-np$ranks.csv" "$work/scores-threads.csv"
    then
        if grep -q "(portable kernel)" "$work/score-np$ranks.log"; then
            pass "clm-score-mpi at $ranks ranks scores clm-score batch's customers, in its order, to float rounding"
        elif cmp -s "$work/scores-np$ranks.csv" "$work/scores-threads.csv"; then
            pass "clm-score-mpi at $ranks ranks writes clm-score batch's bytes (fused kernel)"
        else
            fail "clm-score-mpi at $ranks ranks differs from clm-score batch's bytes with a fused kernel"
        fi
    else
        tail -n 5 "$work/score-np$ranks.log"
        fail "clm-score-mpi at $ranks ranks"
    fi
done
# CLM_FORWARD_KERNEL=portable forces the Swift path on any CPU: the same rows, scores to float
# rounding (the fused kernels use FMA), and the summary names the kernel that ran.
if CLM_FORWARD_KERNEL=portable clm_run_bounded 120 "$bin/clm-score" batch --checkpoints "$work/checkpoints" --run straight --events "$work/events.csv" \
        --product-col product_id --as-of "$cutoff" --out "$work/scores-portable.csv" --threads 2 >"$work/score-portable.log" 2>&1 \
    && grep -q "(portable kernel)" "$work/score-portable.log" \
    && clm_same_scores "$work/scores-portable.csv" "$work/scores-threads.csv"; then
    pass "CLM_FORWARD_KERNEL=portable scores the fused kernel's customers to float rounding, and says so"
else
    tail -n 5 "$work/score-portable.log"
    fail "CLM_FORWARD_KERNEL=portable"
fi
status=0
score_ranks 2 "$work/scores-gnn.csv" --gnn-run straight >"$work/score-gnn.log" 2>&1 || status=$?
if [ "$status" -eq 1 ] && [ "$(grep -c "clm-score-mpi: error: --gnn-run" "$work/score-gnn.log")" -eq 1 ] \
    && [ ! -e "$work/scores-gnn.csv" ]; then
    pass "clm-score-mpi refuses a graph model once, with status 1 and no output"
else
    cat "$work/score-gnn.log"
    fail "clm-score-mpi with --gnn-run: status $status"
fi
if ldd "$bin/clm-score" | grep -q "libmpi"; then
    fail "clm-score links MPI (it must run where there is no MPI runtime)"
else
    pass "clm-score does not link MPI"
fi

echo "== stopped after 13 steps, resumed from latest (step 10), 2 ranks"
if job 2 --run resumed --stop-after-steps 13 >"$work/stopped.log" 2>&1 \
    && job 2 --run resumed --resume latest >"$work/resumed.log" 2>&1; then
    grep -E "resuming" "$work/resumed.log" || true
    if [ "$(latest_model straight)" = "$(latest_model resumed)" ]; then
        pass "resumed run is bit-identical to the straight run ($(latest_model resumed | cut -c1-16))"
    else
        fail "resumed run differs from the straight run"
    fi
else
    tail -n 20 "$work/stopped.log" "$work/resumed.log"
    fail "stop/resume runs"
fi

echo "== one process without mpirun vs -np 1 under mpirun"
if clm_run_bounded 300 "$bin/clm-coordinator" --config "$work/lstm.yaml" --run alone >"$work/alone.log" 2>&1 \
    && job 1 --run np1 >"$work/np1.log" 2>&1; then
    if [ "$(latest_model alone)" = "$(latest_model np1)" ]; then
        pass "single process equals -np 1"
    else
        fail "single process and -np 1 differ"
    fi
else
    tail -n 20 "$work/alone.log" "$work/np1.log"
    fail "single-process runs"
fi

echo "== resume on a different world size (2 -> 3 ranks)"
cp -r "$work/checkpoints/resumed" "$work/checkpoints/regrown"
rm -f "$work/checkpoints/regrown/metrics.jsonl" "$work/checkpoints/regrown"/xgboost_*
# Finishing is not enough: every epoch's training loss must be finite and the last below the first.
if job 3 --run regrown --resume 10 --epochs 3 >"$work/regrown.log" 2>&1 && grep -q "^done: " "$work/regrown.log" \
    && python3 - "$work/checkpoints/regrown/metrics.jsonl" <<'PY'
import json, math, sys
losses = [r["train_loss"] for r in map(json.loads, open(sys.argv[1])) if "train_loss" in r]
print(f"train_loss by epoch after the resume: {losses}")
sys.exit(0 if len(losses) >= 2 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] else 1)
PY
then
    pass "resumed a 2-rank checkpoint on 3 ranks; its loss is finite and fell"
else
    tail -n 20 "$work/regrown.log"
    fail "resume on another world size"
fi

# The gradient boosting baseline is fitted from the same sample, in the same order, at any
# world size; only BG/NBD's outputs among its features differ, in the last bits (that fit adds
# over the ranks), which can move a split threshold but must not move a prediction: 1 (alone),
# 2 (straight) and 3 ranks (regrown) give every customer the same scores.
if python3 - "$work/checkpoints" <<'PY'
import csv, sys
def scores(run):
    rows = csv.DictReader(open(f"{sys.argv[1]}/{run}/xgboost_features.csv"))
    return {row["sample_key"]: (float(row["churn_probability"]), float(row["expected_spend"])) for row in rows}
runs = {run: scores(run) for run in ["alone", "straight", "regrown"]}
reference = runs["straight"]
worst = max(abs(a - b) / max(abs(b), 1.0) for run in runs.values() for key in reference
            for a, b in zip(run.get(key, (float("nan"),) * 2), reference[key]))
print(f"{len(reference)} customers; largest relative difference between 1, 2 and 3 ranks {worst:.1e}")
sys.exit(0 if all(set(run) == set(reference) for run in runs.values()) and worst <= 1e-6 else 1)
PY
then
    pass "XGBoost's baseline scores every customer alike at 1, 2 and 3 ranks"
else
    fail "XGBoost's baseline scores differ between world sizes (or were not written)"
fi

echo "== a fresh run refuses to overwrite an existing run"
if job 2 --run straight >"$work/again.log" 2>&1; then
    fail "a fresh run started over existing checkpoints"
elif grep -q "already has checkpoints" "$work/again.log"; then
    pass "fresh run over existing checkpoints refused with a message"
else
    tail -n 10 "$work/again.log"
    fail "refusal without the expected message"
fi

echo "== kill -9 of a worker mid-run"
job 3 --run killed --epochs 200 >"$work/killed.log" 2>&1 &
launcher=$!
# The run's first checkpoint: from then on the job is mid-run.
clm_wait_for_file "$work/checkpoints/killed/latest" 60 || true
victim=$(pgrep -f "$bin/clm-worker" | head -1 || true)
start=$(date +%s)
if [ -n "$victim" ]; then kill -9 "$victim"; fi
status=0
clm_wait_bounded "$launcher" 300 || status=$?
elapsed=$(( $(date +%s) - start ))
if [ -n "$victim" ] && [ "$status" -ne 0 ] && [ "$elapsed" -le 30 ]; then
    pass "job ended ${elapsed}s after kill -9 with status $status"
else
    tail -n 20 "$work/killed.log"
    fail "kill -9: victim '${victim}', status $status after ${elapsed}s"
fi
pkill -9 -f "$bin/clm-(worker|coordinator)" 2>/dev/null || true
if job 2 --run killed --resume latest --epochs 1 >"$work/afterkill.log" 2>&1 && grep -q "resuming" "$work/afterkill.log"; then
    pass "latest checkpoint after the kill verifies and loads"
else
    tail -n 20 "$work/afterkill.log"
    fail "latest checkpoint after the kill"
fi

echo "== supervised run (train.sh --max-restarts): a worker killed mid-run, the job comes back by itself"
CLM_BIN="$bin" scripts/train.sh --np 2 --config "$work/lstm.yaml" --run supervised --epochs 60 --max-restarts 2 \
    >"$work/supervised.log" 2>&1 &
launcher=$!
# The run's first checkpoint: from then on the job is mid-run.
clm_wait_for_file "$work/checkpoints/supervised/latest" 60 || true
victim=$(ranks_of "$launcher" clm-worker | head -1)
if [ -n "$victim" ]; then kill -9 "$victim"; fi
status=0
clm_wait_bounded "$launcher" 300 || status=$?
if [ -n "$victim" ] && [ "$status" -eq 0 ] && grep -q "^== supervisor: attempt 1 failed" "$work/supervised.log" \
    && grep -q "restarting from the newest valid checkpoint" "$work/supervised.log" \
    && grep -q "resuming at epoch" "$work/supervised.log" && grep -q "^== supervisor: attempt 2 finished the job" "$work/supervised.log"; then
    grep "^== supervisor" "$work/supervised.log"
    pass "the supervised job restarted from its newest checkpoint after kill -9 and finished with status 0"
else
    grep "^== supervisor" "$work/supervised.log" || tail -n 20 "$work/supervised.log"
    fail "supervised restart: victim '${victim}', status $status"
fi

echo "== twenty supervised runs, each with a random rank killed at a random moment"
# Each trial kill -9s the coordinator or a worker a random 0-1.5 s after the run's first
# checkpoint (the random moment injects the failure; it synchronises nothing) under
# --max-restarts 3. Every trial must finish on its own with status 0, end bit-identical to an
# uninterrupted run of the same rank count, and leave no process behind. Seeded, so a failing
# trial can be replayed.
RANDOM=20261201
sed -e 's/^epochs: 2/epochs: 6/' "$work/lstm.yaml" >"$work/trials.yaml"
CLM_BIN="$bin" clm_run_bounded 300 scripts/train.sh --np 3 --config "$work/trials.yaml" --run uninterrupted --max-restarts 0 >"$work/uninterrupted.log" 2>&1 \
    || { tail -n 20 "$work/uninterrupted.log"; fail "the uninterrupted reference run"; }
reference=$(latest_model uninterrupted)
trials_ok=0 restarted=0 trial_failures=""
for trial in $(seq 1 20); do
    CLM_BIN="$bin" scripts/train.sh --np 3 --config "$work/trials.yaml" --run "trial$trial" --max-restarts 3 \
        >"$work/trial$trial.log" 2>&1 &
    launcher=$!
    # The run's first checkpoint: from then on the job is mid-run.
    clm_wait_for_file "$work/checkpoints/trial$trial/latest" 60 || true
    sleep "$((RANDOM % 16 / 10)).$((RANDOM % 10))"
    if [ $((RANDOM % 3)) -eq 0 ]; then
        victim=$(ranks_of "$launcher" clm-coordinator | head -1)
    else
        victim=$(ranks_of "$launcher" clm-worker | shuf -n 1 --random-source=<(yes "$trial"))
    fi
    if [ -n "$victim" ]; then kill -9 "$victim" 2>/dev/null || true; fi
    status=0
    clm_wait_bounded "$launcher" 300 || status=$?
    # Killed ranks and Open MPI's daemons take a moment to leave the process table after mpirun
    # returns: poll for that with a deadline; what is still there after 10 s is left behind.
    leftover=""
    for _ in $(seq 1 50); do
        # This build's ranks only: other jobs on the machine may run ranks of their own.
        leftover=$({ pgrep -f "^$bin/clm-(coordinator|worker)( |$)" || true; } | tr '\n' ' ')
        [ -z "$leftover" ] && break
        sleep 0.2
    done
    model=$(latest_model "trial$trial" 2>/dev/null || echo none)
    grep -q "restarting from the newest valid checkpoint" "$work/trial$trial.log" && restarted=$((restarted + 1))
    if [ "$status" -eq 0 ] && [ "$model" = "$reference" ] && [ -z "$leftover" ]; then
        trials_ok=$((trials_ok + 1))
    else
        trial_failures+=" trial $trial (status $status, model ${model:0:12}, leftover '${leftover}')"
        pkill -9 -f "^$bin/clm-(coordinator|worker)( |$)" 2>/dev/null || true
    fi
done
if [ "$trials_ok" -eq 20 ] && [ "$restarted" -ge 10 ]; then
    pass "20 of 20 randomly killed runs finished with status 0, bit-identical to the uninterrupted run (${reference:0:16}), nothing left behind; $restarted needed a restart"
else
    fail "random kills: $trials_ok of 20 trials good, $restarted restarted;$trial_failures"
fi

echo "== supervised run: what a restart cannot fix stops at once"
status=0
CLM_BIN="$bin" clm_run_bounded 120 scripts/train.sh --np 2 --config "$work/lstm.yaml" --run unfixable --max-restarts 3 --set lstm.hiden=3 \
    >"$work/unfixable.log" 2>&1 || status=$?
if [ "$status" -ne 0 ] && grep -q "a restart cannot fix it: the job could not start: --set lstm.hiden=3: unknown key" "$work/unfixable.log" \
    && ! grep -q "attempt 2" "$work/unfixable.log"; then
    pass "a bad configuration ended the supervised job after one attempt, with its reason"
else
    tail -n 10 "$work/unfixable.log"
    fail "supervised job with a bad configuration: status $status"
fi

# The stop scenarios: a signal to the supervisor, or Ctrl-C to its whole group, must stop every
# rank at once and never restart; killing the supervisor outright must leave nothing behind.
job_processes() {  # the processes of a supervised run still in the process table
    { pgrep -f -- "--run $1( |$)" || true; } | tr '\n' ' '
}
stopped_within() {  # stopped_within RUN SECONDS: polls until no process of RUN is left
    local left
    for _ in $(seq 1 $(($2 * 5))); do
        left=$(job_processes "$1")
        [ -z "$left" ] && return 0
        sleep 0.2
    done
    echo "still running after $2 s: $left"
    return 1
}
supervised_long_run() {  # supervised_long_run RUN [prefix...]: a supervised run, mid-run on return
    local run=$1
    shift
    "$@" env CLM_BIN="$bin" scripts/train.sh --np 3 --config "$work/lstm.yaml" --run "$run" --epochs 400 \
        --max-restarts 3 >"$work/$run.log" 2>&1 &
    launcher=$!
    clm_wait_for_file "$work/checkpoints/$run/latest" 60 || true
}

echo "== supervised run: SIGTERM to the supervisor stops every rank within 10 s, no restart"
supervised_long_run terminated
kill -TERM "$launcher" 2>/dev/null || true
start=$(date +%s)
status=0
clm_wait_bounded "$launcher" 30 || status=$?
if [ "$status" -eq 143 ] && stopped_within terminated 10 && [ $(( $(date +%s) - start )) -le 10 ] \
    && grep -q "^== supervisor: stopped by SIGTERM during attempt 1; not restarting" "$work/terminated.log" \
    && ! grep -q "attempt 2" "$work/terminated.log"; then
    pass "SIGTERM ended the supervised job in $(( $(date +%s) - start )) s (status 143) without a restart, no rank left"
else
    tail -n 10 "$work/terminated.log"
    fail "SIGTERM to a supervised job: status $status after $(( $(date +%s) - start )) s"
fi
clm_stop_tree_of_run() { for pid in $(job_processes "$1"); do kill -KILL "$pid" 2>/dev/null || true; done; }
clm_stop_tree_of_run terminated

echo "== supervised run: Ctrl-C to its group stops it even when started with SIGINT ignored"
# With job control on, the supervisor gets a process group of its own, as a terminal's job does;
# env --ignore-signal starts it the way a background job of a script (or nohup's caller) would,
# with SIGINT ignored, which bash alone could not undo. Ctrl-C is SIGINT to the whole group.
set -m
supervised_long_run interrupted env --ignore-signal=INT
set +m
kill -INT -- "-$launcher" 2>/dev/null || true
start=$(date +%s)
status=0
clm_wait_bounded "$launcher" 30 || status=$?
if [ "$status" -eq 130 ] && stopped_within interrupted 10 \
    && grep -q "^== supervisor: stopped by SIGINT during attempt 1; not restarting" "$work/interrupted.log" \
    && ! grep -q "attempt 2" "$work/interrupted.log"; then
    pass "Ctrl-C ended the supervised job started with SIGINT ignored in $(( $(date +%s) - start )) s (status 130), no restart, no rank left"
else
    tail -n 10 "$work/interrupted.log"
    fail "Ctrl-C of a supervised job started with SIGINT ignored: status $status"
fi
clm_stop_tree_of_run interrupted

echo "== supervised run: SIGKILL to the supervisor leaves no rank running"
supervised_long_run killed-supervisor
kill -KILL "$launcher" 2>/dev/null || true
start=$(date +%s)
wait "$launcher" 2>/dev/null || true  # already dead: SIGKILL cannot be caught
if stopped_within killed-supervisor 10 && [ -f "$work/checkpoints/killed-supervisor/latest" ]; then
    pass "SIGKILL of the supervisor mid-run left no rank running ($(( $(date +%s) - start )) s to clear)"
else
    fail "SIGKILL of the supervisor left processes running: $(job_processes killed-supervisor)"
fi
clm_stop_tree_of_run killed-supervisor

echo "== graph model, 2 ranks"
sed -e 's/^model: lstm/model: gnn/' -e 's/^run: straight/run: graph/' "$work/lstm.yaml" >"$work/gnn.yaml"
printf 'gnn:\n  hidden: 8\n  layers: 2\n  fanouts: [5, 3]\n' >>"$work/gnn.yaml"
# The graph model must beat always answering the majority stage on test macro-F1.
if clm_run_bounded 300 clm_mpirun_local 1 "$bin/clm-coordinator" --config "$work/gnn.yaml" : -np 1 "$bin/clm-worker" >"$work/gnn.log" 2>&1 \
    && grep -E "^(done|  validation|  test)" "$work/gnn.log" \
    && python3 - "$work/gnn.log" <<'PY'
import re, sys
test = next(line for line in open(sys.argv[1]) if line.startswith("  test:"))
value = lambda name: float(re.search(r"\b" + name + r" ([0-9.]+)", test).group(1))
model, majority = value("test_macro_f1"), value("test_majority_macro_f1")
print(f"test macro-F1 {model:.4f} against the majority's {majority:.4f}")
sys.exit(0 if model > majority else 1)
PY
then
    pass "graph model trained on 2 ranks, above the majority class"
else
    tail -n 20 "$work/gnn.log"
    fail "graph model"
fi

echo "== graph model over the partitioned graph, 3 ranks, twice"
# Every rank holds only its share of the graph and asks the owners of other nodes for their
# sampled neighbours and feature rows: the same seed and world size must give the same model.
for run in graph-a graph-b; do
    clm_run_bounded 300 clm_mpirun_local 1 "$bin/clm-coordinator" --config "$work/gnn.yaml" \
        --run $run --set gnn.ablation=false : -np 2 "$bin/clm-worker" >"$work/$run.log" 2>&1 \
        || { tail -n 20 "$work/$run.log"; fail "graph model run $run on 3 ranks"; }
done
if [ -s "$work/checkpoints/graph-a/latest" ] && [ "$(latest_model graph-a)" = "$(latest_model graph-b)" ]; then
    pass "two 3-rank graph runs with one seed end bit-identical ($(latest_model graph-a | cut -c1-16))"
else
    fail "two 3-rank graph runs with one seed differ"
fi

echo "training-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
