#!/usr/bin/env python3
"""GET /v1/customers/{id} for every row of a `clm-score batch` CSV, compared field for field.

Usage: served_vs_batch.py PORT TOKEN BATCH.csv. Exits 1 when any customer differs, when the CSV
has no rows, or when an unknown id is not a 404 with a JSON error. Standard library only.
"""
import csv, http.client, json, sys, urllib.parse
port, token, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = list(csv.DictReader(open(batch)))
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
different = []
for row in rows:
    connection.request("GET", "/v1/customers/" + urllib.parse.quote(row["customer_id"], safe=""),
                       headers={"Authorization": "Bearer " + token})
    reply = connection.getresponse()
    body = reply.read()
    if reply.status != 200:
        different.append((row["customer_id"], reply.status, body[:200]))
        continue
    # parse_float=str keeps the numbers as the service wrote them: both writers print six decimals.
    score = json.loads(body, parse_float=str, parse_int=str)["score"]
    served = {k: str(v) for k, v in score.items() if k != "stage_probabilities"}
    served.update({"p_" + k: v for k, v in score["stage_probabilities"].items()})
    if served != row:
        different.append((row["customer_id"], {k: (row.get(k), served.get(k)) for k in set(row) | set(served) if row.get(k) != served.get(k)}))
connection.request("GET", "/v1/customers/no-such-customer", headers={"Authorization": "Bearer " + token})
unknown = connection.getresponse()
unknown_body = json.loads(unknown.read())
print(f"    {len(rows)} customers: {len(rows) - len(different)} equal to batch's rows; unknown id: {unknown.status} {unknown_body}")
for entry in different[:5]:
    print("    differs:", entry)
sys.exit(0 if rows and not different and unknown.status == 404 and "error" in unknown_body else 1)
