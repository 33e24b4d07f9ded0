#!/usr/bin/env bash
# The service end to end on CDNOW (scripts/fetch-data.sh cdnow): trains the smallest LSTM run
# on it (one process, one epoch), scores the file with `clm-score batch`, serves it with
# `clm-score serve --events` on loopback with a token, and checks
#   1. GET /v1/customers/{id} answers every customer of the file with batch's row, field for field;
#   2. schemathesis (pinned, in the tools' virtualenv outside the repository) reads the document
#      from GET /openapi.json and sends what it derives from it, valid and invalid, to every
#      operation: any 5xx, any status the document does not list for its operation, any response
#      whose body, headers or content type break the document fails the run;
#   3. `clm-score export --format onnx` of the same checkpoint passes onnx.checker, and ONNX
#      Runtime (pinned, same virtualenv) gives `clm-score batch`'s scores on the test customers
#      within 1e-5 (scripts/onnx_check.py).
# Bounded in time; the server is stopped on exit and on SIGINT/SIGTERM.
set -euo pipefail
source "$(dirname "$0")/common.sh"
root=$(clm_root)
cd "$root"

clm_stop_children_on_signal
if [ -n "${CLM_BIN:-}" ]; then
    bin=$(cd "$CLM_BIN" && pwd)
else
    build=${CLM_BUILD:-debug}
    for product in clm-data clm-coordinator clm-score; do
        clm_run_bounded 3600 swift build -c "$build" --product "$product" >/dev/null
    done
    bin=$(swift build -c "$build" --show-bin-path)
fi
scripts/fetch-data.sh cdnow >/dev/null
cdnow="$root/data/CDNOW_master.txt"
schemathesis_version=4.32.5
onnx_version=1.23.2
onnxruntime_version=1.32.0
python=$(clm_python_tools "schemathesis==$schemathesis_version" "onnx==$onnx_version" "onnxruntime==$onnxruntime_version" "numpy==2.4.6")
schemathesis="$(dirname "$python")/schemathesis"

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then clm_stop_tree "$server_pid"; fi
    [ -n "${CLM_KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export CLM_PROGRESS=plain

clm_run_bounded 300 "$bin/clm-data" import --input "$cdnow" --preset cdnow --out data >import.log 2>&1 || { tail -n 20 import.log; exit 1; }
cat >lstm.yaml <<YAML
model: lstm
data: data
checkpoints: checkpoints
run: api
epochs: 1
min_steps: 0
batch_size: 256
learning_rate: 0.01
warmup_steps: 1
checkpoint_every_steps: 100
watchdog_seconds: 60
# Two layers and the dense path: every part of the graph the ONNX export writes.
lstm:
  hidden: 8
  layers: 2
  customer_units: 4
YAML
clm_run_bounded 600 "$bin/clm-coordinator" --config lstm.yaml >train.log 2>&1 || { tail -n 20 train.log; exit 1; }
clm_run_bounded 300 "$bin/clm-score" batch --checkpoints checkpoints --run api --events "$cdnow" --preset cdnow --out batch.csv >batch.log 2>&1 \
    || { tail -n 20 batch.log; exit 1; }
passed=0
failed=0

token=openapi-fuzz
"$bin/clm-score" serve --checkpoints checkpoints --run api --events "$cdnow" --preset cdnow --port 0 --token "$token" >serve.log 2>&1 &
server_pid=$!
port=$(clm_service_port "$server_pid" serve.log 60) || true
if [ -z "$port" ]; then
    echo "FAILED: clm-score serve never listened"
    tail -n 20 serve.log
    exit 1
fi

echo "== GET /v1/customers/{id} for every customer of CDNOW against clm-score batch"
status=0
# A file, not a here-document: clm_run_bounded runs the command in the background, whose
# standard input is /dev/null, so python would read an empty program and pass.
clm_run_bounded 300 "$python" "$root/scripts/served_vs_batch.py" "$port" "$token" batch.csv || status=$?
if [ "$status" -eq 0 ]; then
    pass "GET /v1/customers/{id} equals clm-score batch for every customer of CDNOW; an unknown id is 404 with a JSON error"
else
    fail "GET /v1/customers/{id} against clm-score batch (status $status)"
fi

echo "== schemathesis $schemathesis_version against the live service"
status=0
clm_run_bounded 900 "$schemathesis" run "http://127.0.0.1:$port/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --header "Authorization: Bearer $token" --workers 1 --seed 1 --max-examples "${CLM_SCHEMATHESIS_EXAMPLES:-60}" \
    --max-time "${CLM_SCHEMATHESIS_SECONDS:-120}" --request-timeout 30 --generation-database none \
    --report-dir "$work/report" --no-color >schemathesis.log 2>&1 || status=$?
cat schemathesis.log
if ! kill -0 "$server_pid" 2>/dev/null; then
    fail "clm-score serve exited during the schemathesis run"
    tail -n 20 serve.log
fi
if [ "$status" -eq 0 ]; then
    pass "schemathesis $schemathesis_version found no 5xx and no response outside the document"
else
    fail "schemathesis $schemathesis_version against the live service (status $status; 124: it exceeded 15 minutes)"
fi
echo "== ONNX export: onnx.checker $onnx_version and onnxruntime $onnxruntime_version against clm-score batch"
# Batch as of the dataset's cut-off scores each customer from the dataset's stored features.
cutoff=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["spec"]["cutoffDay"])' data/manifest.json)
status=0
clm_run_bounded 300 "$bin/clm-score" batch --checkpoints checkpoints --run api --events "$cdnow" --preset cdnow --as-of "$cutoff" \
    --out cutoff.csv >cutoff.log 2>&1 || status=$?
[ "$status" -eq 0 ] && { clm_run_bounded 120 "$bin/clm-score" export --format onnx --checkpoints checkpoints --run api --out api.onnx >export.log 2>&1 || status=$?; }
[ "$status" -eq 0 ] && { clm_run_bounded 300 "$python" "$root/scripts/onnx_check.py" --model api.onnx --dataset data --scores cutoff.csv || status=$?; }
if [ "$status" -eq 0 ]; then
    pass "the ONNX export passes onnx.checker and onnxruntime gives clm-score batch's scores on CDNOW's test customers within 1e-5"
else
    fail "ONNX export against clm-score batch (status $status)"
    tail -n 5 cutoff.log export.log
fi
echo "serving: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
