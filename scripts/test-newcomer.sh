#!/usr/bin/env bash
# A newcomer's first hour, played end to end through the real tools (issue #28). From a
# temporary folder outside the repository, with only relative paths inside it, it takes a
# generated export rewritten into a shop's own layout (other column names, tab-separated, unix
# times) and:
#   - inspects it with the column-mapping flags and takes the suggested window;
#   - makes each mistake a newcomer made and checks the error that now explains it: a cut-off
#     past the data's end refused with nothing written (and imported with
#     --allow-partial-horizon), a wrong time format failing with its top reasons, a misspelt
#     run refused by batch and serve with the runs that exist, a missing relative dataset
#     looked for in the caller's folder;
#   - imports, trains the LSTM and the GraphSAGE with scripts/train.sh --np 2 and a relative
#     configuration in the caller's folder, batch-scores, serves (graph stages from the same
#     export by column mapping) and asks by curl for customers batch scored: the same action,
#     stage and scores;
#   - writes the report and compares the two runs.
# CLM_BIN names the directory of built binaries (then nothing is built); otherwise the
# CLM_BUILD configuration (default debug) is built. Prints "newcomer-e2e: N passed, M failed"
# and exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
root=$(clm_root)

clm_stop_children_on_signal
if [ -n "${CLM_BIN:-}" ]; then
    bin=$(cd "$CLM_BIN" && pwd)
else
    build=${CLM_BUILD:-debug}
    for product in clm-data clm-coordinator clm-worker clm-score clm-report; do
        clm_run_bounded 3600 swift build --package-path "$root" -c "$build" --product "$product" >/dev/null
    done
    bin=$(swift build --package-path "$root" -c "$build" --show-bin-path)
fi
# train.sh takes its binaries from here instead of building the release configuration.
export CLM_BIN=$bin
export CLM_PROGRESS=plain

work=$(mktemp -d)
case "$work/" in
    "$root/"*) echo "the temporary folder $work is inside the repository; set TMPDIR elsewhere" >&2; exit 1 ;;
esac
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then clm_stop_tree "$server_pid"; fi
    [ -n "${CLM_KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
passed=0
failed=0

# Runs a tool with a deadline, its output (both streams) into LOG; returns the tool's status.
run() {  # run SECONDS LOG COMMAND...
    local limit=$1 log=$2
    shift 2
    clm_run_bounded "$limit" "$@" >"$log" 2>&1
}
# The last lines of a log, for a failure's context.
show() { tail -n "${2:-8}" "$1" | sed 's/^/    /'; }

echo "== the export: generated, then rewritten into a shop's own layout"
clm_run_bounded 60 "$bin/clm-data" synth --customers 2000 --products 200 --seed 7 --out synth.csv >/dev/null
# user, item, basket, units, paid, ts: tab-separated, the time as unix seconds at some moment of
# the event's day (UTC), so that only the day survives the import. Prints the first and last day.
read -r first_date last_date < <(python3 - <<'PY'
import csv, datetime
epoch = datetime.date(1970, 1, 1)
days = set()
with open("synth.csv") as source, open("export.tsv", "w") as out:
    out.write("user\titem\tbasket\tunits\tpaid\tts\n")
    for i, row in enumerate(csv.DictReader(source)):
        day = (datetime.date.fromisoformat(row["timestamp"]) - epoch).days
        days.add(day)
        ts = day * 86400 + (i * 7919) % 86400
        out.write(f"u{row['customer_id']}\t{row['product_id']}\t{row['order_id']}\t{row['quantity']}\t{row['amount']}\t{ts}\n")
print(epoch + datetime.timedelta(days=min(days)), epoch + datetime.timedelta(days=max(days)))
PY
)
[ -n "$last_date" ] || { echo "newcomer-e2e: could not write export.tsv from synth.csv" >&2; exit 1; }
rm synth.csv
rows=$(( $(wc -l <export.tsv) - 1 ))
echo "export.tsv: $rows rows, $first_date to $last_date; $(head -1 export.tsv | tr '\t' ' ')"
layout=(--delimiter tab --customer-col user --time-col ts --amount-col paid --quantity-col units --product-col item --order-col basket)

echo "== clm-data inspect first"
cutoff="" horizon=""
if run 120 inspect.log "$bin/clm-data" inspect export.tsv "${layout[@]}"; then
    window=$(grep -oE -- "suggested window --cutoff [0-9-]+ --horizon [0-9]+" inspect.log || true)
    cutoff=$(awk '{ print $4 }' <<<"$window")
    horizon=$(awk '{ print $6 }' <<<"$window")
fi
sed 's/^/    /' inspect.log
if grep -q "^export.tsv: $(python3 -c "print(f'{$rows:,}')") rows .*nothing was written" inspect.log \
    && grep -q " 0 rejected" inspect.log \
    && grep -q "first event $first_date, last event $last_date .*time format unix (detected" inspect.log \
    && [ -n "$cutoff" ] && [ ! -e data ]; then
    pass "inspect reads the TSV by column mapping: $rows rows, unix times detected, $first_date to $last_date, suggests --cutoff $cutoff --horizon $horizon, writes nothing"
else
    fail "inspect of the TSV"
fi
[ -n "$cutoff" ] || { cutoff=$last_date; horizon=91; }

echo "== mistake: a cut-off whose horizon runs past the data"
status=0
run 120 late.log "$bin/clm-data" import --input export.tsv --out data/late "${layout[@]}" --cutoff "$last_date" --horizon 91 || status=$?
show late.log 3
if [ "$status" -ne 0 ] && grep -q "clm-data: error: the cut-off $last_date plus the horizon of 91 days ends on .*, after the last event ($last_date).*nothing was written.*--allow-partial-horizon" late.log \
    && [ ! -e data ]; then
    pass "a cut-off past the data's end is refused naming both dates, with nothing written (not even data/)"
else
    fail "a cut-off past the data's end (status $status; data/ $( [ -e data ] && echo exists || echo absent))"
fi
status=0
run 120 partial.log "$bin/clm-data" import --input export.tsv --out data/late "${layout[@]}" --cutoff "$last_date" --horizon 91 \
    --allow-partial-horizon || status=$?
grep -E "^(imported|WARNING)" partial.log | sed 's/^/    /'
if [ "$status" -eq 0 ] && [ -f data/late/manifest.json ] && grep -q "^WARNING: every one of the .* customers churned" partial.log; then
    pass "--allow-partial-horizon imports it anyway, with a WARNING that every customer looks churned"
else
    fail "--allow-partial-horizon (status $status)"
    show partial.log
fi
rm -rf data

echo "== mistake: the wrong time format"
status=0
run 120 wrong-format.log "$bin/clm-data" import --input export.tsv --out data/shop "${layout[@]}" --time-format iso \
    --cutoff "$cutoff" --horizon "$horizon" || status=$?
show wrong-format.log 4
# Every row is rejected for the one reason, shown with the first data line (line 2) as read.
reason_shown() {  # reason_shown LOG
    grep -qE "^ +$rows rows: " "$1" && grep -qF "line 2: $(sed -n 2p export.tsv)" "$1"
}
if [ "$status" -ne 0 ] && grep -q "rejected $rows of $rows rows (100.0%), more than --max-reject-fraction .*no dataset was written; the most frequent reasons:" wrong-format.log \
    && reason_shown wrong-format.log && [ ! -e data/shop ]; then
    pass "a wrong --time-format fails the import with its top reason, count and first line printed, no dataset written"
else
    fail "a wrong --time-format with --cutoff (status $status)"
fi
status=0
run 120 wrong-format-nocutoff.log "$bin/clm-data" import --input export.tsv --out data/shop "${layout[@]}" --time-format iso || status=$?
show wrong-format-nocutoff.log 3
if [ "$status" -ne 0 ] && grep -q "no row could be imported, so no cut-off can be derived from the last event; nothing was written; the most frequent reasons:" wrong-format-nocutoff.log \
    && reason_shown wrong-format-nocutoff.log && [ ! -e data/shop ]; then
    pass "without --cutoff, the wrong time format says why no cut-off can be derived, with the same reasons"
else
    fail "a wrong --time-format without --cutoff (status $status)"
fi

echo "== import with the suggested window"
status=0
run 120 import.log "$bin/clm-data" import --input export.tsv --out data/shop "${layout[@]}" --cutoff "$cutoff" --horizon "$horizon" || status=$?
grep -E "^(imported|  (imported|rejected|window|customers|churn rate|stages|split)|WARNING)" import.log | sed 's/^/    /' || true
if [ "$status" -eq 0 ] && grep -q "^imported data/shop from export.tsv" import.log && grep -q "window  *cut-off $cutoff " import.log \
    && [ -f data/shop/manifest.json ]; then
    pass "import by column mapping with the suggested window writes data/shop"
else
    fail "import with the suggested window (status $status)"
    show import.log
fi

echo "== training both models with scripts/train.sh --np 2, relative paths from this folder"
cat >lstm.yaml <<'YAML'
model: lstm
data: data/shop
checkpoints: runs
run: shop-lstm
epochs: 3
min_steps: 0
batch_size: 32
learning_rate: 0.01
warmup_steps: 3
watchdog_seconds: 60
lstm:
  hidden: 8
  layers: 1
YAML
cat >gnn.yaml <<'YAML'
model: gnn
data: data/elsewhere
checkpoints: runs
run: shop-gnn
epochs: 3
min_steps: 0
batch_size: 32
learning_rate: 0.01
warmup_steps: 3
watchdog_seconds: 60
gnn:
  hidden: 8
  layers: 2
  fanouts: [5, 3]
YAML
trained() {  # trained LOG RUN: the job finished and wrote its checkpoints here, none in the repository
    grep -q "^done: " "$1" && [ -f "runs/$2/best" ] && [ ! -e "$root/runs/$2" ]
}
status=0
run 300 train-lstm.log "$root/scripts/train.sh" --np 2 --config lstm.yaml || status=$?
grep -E "^(training|done|  test)" train-lstm.log | sed 's/^/    /' || true
if [ "$status" -eq 0 ] && trained train-lstm.log shop-lstm && grep -q "^training lstm on 2 ranks" train-lstm.log; then
    pass "train.sh --np 2 --config lstm.yaml (the caller's file) trains the LSTM on 2 ranks into runs/shop-lstm here"
else
    fail "train.sh with a relative configuration (status $status)"
    show train-lstm.log
fi
# The configuration names data/elsewhere; the flag's relative path wins and is the caller's too.
status=0
run 300 train-gnn.log "$root/scripts/train.sh" --np 2 --config gnn.yaml --data data/shop || status=$?
grep -E "^(training|done|  test|  WARNING)" train-gnn.log | sed 's/^/    /' || true
if [ "$status" -eq 0 ] && trained train-gnn.log shop-gnn && grep -q "^training gnn on 2 ranks" train-gnn.log; then
    pass "train.sh --np 2 --config gnn.yaml --data data/shop trains the GraphSAGE on 2 ranks into runs/shop-gnn here"
else
    fail "train.sh with a relative --data (status $status)"
    show train-gnn.log
fi
status=0
run 120 train-missing.log "$root/scripts/train.sh" --np 2 --config gnn.yaml || status=$?
show train-missing.log 2
# The coordinator's reason, which must point into this folder (mpirun's command line above it
# names the binaries, which may live in the repository).
reason=$(grep -m1 "^clm-coordinator: error: " train-missing.log || true)
if [ "$status" -ne 0 ] && grep -qE "no dataset at ($work/)?data/elsewhere: the directory does not exist; import one with \`clm-data import --input EVENTS --out ($work/)?data/elsewhere\`" <<<"$reason" \
    && ! grep -qF "$root" <<<"$reason"; then
    pass "a dataset missing from the caller's folder is named there, never in the repository"
else
    fail "train.sh with a missing relative dataset (status $status)"
fi

echo "== mistake: a misspelt run"
status=0
run 60 batch-misspelt.log "$bin/clm-score" batch --checkpoints runs --run shop-lstn --events export.tsv "${layout[@]}" --out misspelt.csv || status=$?
show batch-misspelt.log 2
listing="run 'shop-lstn' has no checkpoint to score with (runs/shop-lstn does not exist); runs with checkpoints under runs: shop-gnn, shop-lstm"
if [ "$status" -ne 0 ] && grep -qF "$listing" batch-misspelt.log && [ ! -e misspelt.csv ]; then
    pass "batch refuses a misspelt run, listing the runs that exist"
else
    fail "batch with a misspelt run (status $status)"
fi
# Refused at start: the service must exit on its own, not listen and answer 503.
status=0
run 60 serve-misspelt.log "$bin/clm-score" serve --checkpoints runs --run shop-lstn --port 0 || status=$?
show serve-misspelt.log 2
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && grep -qF "$listing" serve-misspelt.log && ! grep -q "^listening on" serve-misspelt.log; then
    pass "serve refuses a misspelt run at start (status $status), listing the runs that exist"
else
    fail "serve with a misspelt run (status $status; 124: it kept running)"
fi

echo "== batch scoring every customer of the export"
status=0
run 300 batch.log "$bin/clm-score" batch --checkpoints runs --run shop-lstm --gnn-run shop-gnn --events export.tsv "${layout[@]}" --out scores.csv || status=$?
sed 's/^/    /' batch.log
as_of=$(grep -oE "^as of +[0-9]{4}-[0-9]{2}-[0-9]{2}" batch.log | awk '{ print $3 }' || true)
line=$(grep -oE "^high value expected spend >= [0-9.]+" batch.log | awk '{ print $6 }' || true)
scored=$(( $(wc -l <scores.csv 2>/dev/null || echo 1) - 1 ))
if [ "$status" -eq 0 ] && [ "$as_of" = "$last_date" ] && [ -n "$line" ] && [ "$scored" -gt 100 ] && grep -q "^stages *gnn run shop-gnn" batch.log; then
    pass "batch scores $scored customers of the TSV as of $as_of, stages from shop-gnn, high-value line $line"
else
    fail "batch scoring (status $status, as of '$as_of', $scored rows)"
fi

echo "== the service: graph stages from the export by column mapping, one request by curl"
"$bin/clm-score" serve --checkpoints runs --run shop-lstm --gnn-run shop-gnn --graph-events export.tsv "${layout[@]}" \
    --port 0 >serve.log 2>&1 &
server_pid=$!
# At most 60 s: the reference graph is built before it listens.
port=$(clm_service_port "$server_pid" serve.log 60) || true
if [ -n "$port" ]; then
    pass "serve --gnn-run shop-gnn --graph-events export.tsv with the mapping flags listens on port $port"
    # 40 scored customers, with every row of theirs in the export, as of batch's day: the 30
    # whose expected spend lies nearest the high-value line (where another line would change
    # the action) and the first 10 by id.
    python3 - "$as_of" "$line" <<'PY' >request.json
import csv, json, sys
rows = list(csv.DictReader(open("scores.csv")))
nearest = sorted(rows, key=lambda row: abs(float(row["expected_spend"]) - float(sys.argv[2])))[:30]
wanted = [row["customer_id"] for row in nearest]
wanted += [row["customer_id"] for row in rows if row["customer_id"] not in wanted][:10]
events = {c: [] for c in wanted}
for row in csv.DictReader(open("export.tsv"), delimiter="\t"):
    if row["user"] in events:
        events[row["user"]].append({"day": int(row["ts"]) // 86400, "amount": float(row["paid"]), "quantity": float(row["units"]),
                                    "product_id": row["item"], "order_id": row["basket"]})
json.dump({"as_of": sys.argv[1], "customers": [{"customer_id": c, "events": events[c]} for c in wanted]}, open(sys.stdout.fileno(), "w"))
PY
    status=0
    curl -sS --max-time 60 -X POST -H 'Content-Type: application/json' --data-binary @request.json \
        "http://127.0.0.1:$port/v1/score" >response.json 2>curl.log || status=$?
    curl -sS --max-time 10 "http://127.0.0.1:$port/v1/model" >model.json 2>>curl.log || status=$?
    if [ "$status" -eq 0 ] && python3 - "$line" <<'PY'
import csv, json, sys
batch = {row["customer_id"]: row for row in csv.DictReader(open("scores.csv"))}
served = json.load(open("response.json"))["scores"]
model = json.load(open("model.json"))
different = [s["customer_id"] for s in served
             if s["action"] != batch[s["customer_id"]]["action"] or s["stage"] != batch[s["customer_id"]]["stage"]
             or abs(s["churn_probability"] - float(batch[s["customer_id"]]["churn_probability"])) > 1e-4
             or abs(s["expected_spend"] - float(batch[s["customer_id"]]["expected_spend"])) > 1e-3 * max(1, s["expected_spend"])]
sources = {s["stage_source"] for s in served}
# Customers on both sides of the line, or the comparison could not tell two lines apart.
above = sum(float(batch[s["customer_id"]]["expected_spend"]) >= float(sys.argv[1]) for s in served)
actions = sorted({s["action"] for s in served})
line = model.get("high_value_line")
print(f"    {len(served)} customers served, {above} at or above batch's high-value line {sys.argv[1]} (the service's: {line});"
      f" actions {actions}; stage sources {sorted(sources)}")
ok = (len(served) == 40 and not different and sources == {"gnn"} and 0 < above < len(served)
      and line is not None and abs(line - float(sys.argv[1])) < 0.006)
if different:
    print(f"    differ from batch: {different[:5]}")
sys.exit(0 if ok else 1)
PY
    then
        pass "the service gives batch's action, stage (from the graph model) and scores for 40 customers, with batch's high-value line"
    else
        fail "the service against batch (curl status $status)"
        head -c 400 response.json; show curl.log 3
    fi
    kill -TERM "$server_pid"
    status=0
    clm_wait_bounded "$server_pid" 20 || status=$?
    server_pid=""
    if [ "$status" -ne 124 ]; then
        pass "the service stops on SIGTERM"
    else
        fail "the service did not stop within 20 s of SIGTERM"
    fi
else
    fail "serve with --graph-events and the mapping flags never listened"
    show serve.log
fi

echo "== the report, and the two runs compared"
status=0
run 120 report.log "$bin/clm-report" --checkpoints runs --run shop-lstm --gnn-run shop-gnn --scores scores.csv --out report.html || status=$?
show report.log 2
if [ "$status" -eq 0 ] && grep -qx "wrote report.html" report.log && grep -q "<svg" report.html; then
    pass "clm-report --run shop-lstm --gnn-run shop-gnn writes report.html, and says so by the path given"
else
    fail "clm-report (status $status)"
fi
status=0
run 120 compare.log "$bin/clm-report" --compare runs/shop-lstm runs/shop-gnn || status=$?
sed 's/^/    /' compare.log
if [ "$status" -eq 0 ] && grep -qx "wrote compare.html" compare.log && grep -q "shop-lstm" compare.log && grep -q "shop-gnn" compare.log \
    && grep -q "shop-gnn" compare.html; then
    pass "clm-report --compare sets the two runs side by side (stdout table and compare.html)"
else
    fail "clm-report --compare (status $status)"
fi

echo "newcomer-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
