#!/usr/bin/env python3
"""Independent NumPy reference for clm-score's LSTM churn/CLV scores.

Reads model.safetensors with its own small parser (no safetensors or torch package), runs
PyTorch's LSTM equations (gate order i, f, g, o; both biases) over each customer's first
`length` periods, and prints one JSON object per customer:
{"customer_id": ..., "churn_probability": ..., "expected_spend": ..., "stage_probabilities": [...] or null}.
Every head layout a checkpoint can have is read from its tensors: the churn head, a CLV head of
one output (log MSE) or three (zero-inflated lognormal), a stage head, and the dense path from
the customer-level inputs.

Usage: score_reference.py CHECKPOINT_DIR INPUT.json
INPUT.json: {"customers": [{"customer_id": "..", "features": [[F floats] per period], "length": n}]}
with features already normalised, exactly as POST /v1/score takes them.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    base = 8 + header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=DTYPES[entry["dtype"]])
        tensors[name] = array.reshape(entry["shape"])
    return tensors


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def score(tensors, rows, length, history):
    layers = sum(1 for name in tensors if name.startswith("lstm.weight_ih_l"))
    x = np.asarray(rows, dtype=np.float64)[:length]
    for k in range(layers):
        w_ih = tensors[f"lstm.weight_ih_l{k}"].astype(np.float64)
        w_hh = tensors[f"lstm.weight_hh_l{k}"].astype(np.float64)
        bias = tensors[f"lstm.bias_ih_l{k}"].astype(np.float64) + tensors[f"lstm.bias_hh_l{k}"].astype(np.float64)
        hidden = w_hh.shape[1]
        h = np.zeros(hidden)
        c = np.zeros(hidden)
        outputs = []
        for t in range(length):
            gates = w_ih @ x[t] + w_hh @ h + bias
            i, f, g, o = np.split(gates, 4)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            outputs.append(h)
        x = np.stack(outputs)
    joined = x[length - 1]
    if "customer_dense.weight" in tensors:
        # The dense path reads the customer-level inputs: last step, per-feature means, length / T.
        valid = np.asarray(rows, dtype=np.float64)[:length]
        summary = np.concatenate([valid[-1], valid.mean(axis=0), [length / history]])
        dense = tensors["customer_dense.weight"].astype(np.float64) @ summary + tensors["customer_dense.bias"].astype(np.float64)
        joined = np.concatenate([joined, np.maximum(dense, 0.0)])

    def head(name):
        return tensors[f"{name}.weight"].astype(np.float64) @ joined + tensors[f"{name}.bias"].astype(np.float64)

    churn = float(sigmoid(head("churn_head")[0]))
    clv = head("clv_head")
    if clv.shape[0] == 3:
        # Zero-inflated lognormal: P(purchase) times the lognormal mean, sigma floored at sqrt(eps).
        sigma = max(np.logaddexp(0.0, clv[2]), 3.1622777e-4)
        spend = float(sigmoid(clv[0]) * np.exp(min(clv[1] + sigma * sigma / 2, 30.0)))
    else:
        spend = float(max(np.expm1(clv[0]), 0.0))
    stages = None
    if "stage_head.weight" in tensors:
        logits = head("stage_head")
        stages = np.exp(logits - logits.max())
        stages = (stages / stages.sum()).tolist()
    return churn, spend, stages


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    directory = sys.argv[1].rstrip("/")
    tensors = read_safetensors(directory + "/model.safetensors")
    with open(directory + "/manifest.json") as f:
        history = json.load(f)["configuration"]["architecture"]["historyLength"]
    with open(sys.argv[2]) as f:
        request = json.load(f)
    for customer in request["customers"]:
        rows = customer["features"]
        length = customer.get("length", len(rows))
        churn, spend, stages = score(tensors, rows, length, history)
        print(json.dumps({"customer_id": customer["customer_id"], "churn_probability": churn, "expected_spend": spend,
                          "stage_probabilities": stages}))


if __name__ == "__main__":
    main()
