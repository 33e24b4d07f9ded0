#!/usr/bin/env python3
"""Loads clm checkpoints into PyTorch (and PyTorch Geometric) by name and checks that they give
the scores `clm-score batch` wrote.

    python3 scripts/torch_interop.py --lstm-checkpoint DIR --dataset DIR --scores scores.csv \
        [--gnn-checkpoint DIR --gnn-dataset DIR --gnn-scores scores.csv]

The scores files must come from `clm-score batch --as-of <the dataset's cut-off>` on the
dataset's own events: then the features scoring computed equal the dataset's stored ones, which
this script reads. Needs torch, safetensors and (for --gnn-*) torch_geometric; none of them is
installed by the project's scripts. Exits 1 when a score differs by more than --tolerance.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file


def lstm_from_checkpoint(directory):
    """torch.nn.LSTM plus the two linear heads, loaded from model.safetensors by name."""
    state = load_file(os.path.join(directory, "model.safetensors"))
    hidden = state["lstm.weight_hh_l0"].shape[1]
    layers = sum(1 for name in state if name.startswith("lstm.weight_ih_l"))
    lstm = torch.nn.LSTM(input_size=state["lstm.weight_ih_l0"].shape[1], hidden_size=hidden,
                         num_layers=layers, batch_first=True)
    lstm.load_state_dict({name[len("lstm."):]: v for name, v in state.items() if name.startswith("lstm.")})
    churn_head, clv_head = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, 1)
    churn_head.load_state_dict({"weight": state["churn_head.weight"], "bias": state["churn_head.bias"]})
    clv_head.load_state_dict({"weight": state["clv_head.weight"], "bias": state["clv_head.bias"]})

    def score(features, length):
        """features: [T, F] normalised (as POST /v1/score takes them); steps past `length` are
        padding, which the Swift model carries its state through unchanged: the same as stopping."""
        with torch.no_grad():
            out, _ = lstm(torch.tensor(features[:length], dtype=torch.float32).unsqueeze(0))
            last = out[0, -1]
            return torch.sigmoid(churn_head(last)).item(), max(torch.expm1(clv_head(last)).item(), 0.0)
    return score


def sage_from_checkpoint(directory):
    """PyG SAGEConv layers (mean aggregator; lin_l with bias, lin_r without) loaded by name."""
    from torch_geometric.nn import SAGEConv
    state = load_file(os.path.join(directory, "model.safetensors"))
    layers = sum(1 for name in state if name.endswith(".lin_l.weight"))
    convs = torch.nn.ModuleList(
        SAGEConv(state[f"convs.{k}.lin_l.weight"].shape[1], state[f"convs.{k}.lin_l.weight"].shape[0])
        for k in range(layers))
    convs.load_state_dict({name[len("convs."):]: v for name, v in state.items()})

    def stage_probabilities(x, edge_index):
        with torch.no_grad():
            for k, conv in enumerate(convs):
                x = conv(x, edge_index)
                if k + 1 < len(convs):
                    x = x.relu()
            return torch.softmax(x, dim=1)
    return stage_probabilities


def read_scores(path):
    with open(path, newline="") as f:
        return {row["customer_id"]: row for row in csv.DictReader(f)}


def check_lstm(args):
    manifest = json.load(open(os.path.join(args.dataset, "manifest.json")))
    periods, width = manifest["spec"]["historyPeriods"], len(manifest["featureNames"])
    ids = open(os.path.join(args.dataset, "customer_ids.txt")).read().split("\n")[:-1]
    features = np.fromfile(os.path.join(args.dataset, "features.f32"), dtype=np.float32).reshape(len(ids), periods, width)
    lengths = np.fromfile(os.path.join(args.dataset, "lengths.i32"), dtype=np.int32)
    scores = read_scores(args.scores)
    score = lstm_from_checkpoint(args.lstm_checkpoint)
    sample = np.linspace(0, len(ids) - 1, num=min(args.customers, len(ids))).astype(int)
    worst_churn = worst_spend = 0.0
    for i in sample:
        churn, spend = score(features[i], int(lengths[i]))
        row = scores[ids[i]]
        worst_churn = max(worst_churn, abs(churn - float(row["churn_probability"])))
        worst_spend = max(worst_spend, abs(spend - float(row["expected_spend"])) / max(1.0, spend))
    print(f"torch.nn.LSTM: {len(sample)} customers, worst churn difference {worst_churn:.2e}, "
          f"worst relative spend difference {worst_spend:.2e}")
    return worst_churn <= args.tolerance and worst_spend <= args.tolerance


def check_gnn(args):
    manifest = json.load(open(os.path.join(args.gnn_dataset, "manifest.json")))
    graph = manifest["graph"]
    nodes = graph["customerNodes"] + graph["productNodes"]
    offsets = np.fromfile(os.path.join(args.gnn_dataset, "graph_offsets.i64"), dtype=np.int64)
    neighbours = np.fromfile(os.path.join(args.gnn_dataset, "graph_neighbours.i32"), dtype=np.int32)
    x = np.fromfile(os.path.join(args.gnn_dataset, "node_features.f32"), dtype=np.float32).reshape(nodes, -1)
    # Row 0 sources, row 1 targets: node v averages the features of its CSR neighbours.
    targets = np.repeat(np.arange(nodes), np.diff(offsets))
    edge_index = torch.tensor(np.stack([neighbours.astype(np.int64), targets]))
    probabilities = sage_from_checkpoint(args.gnn_checkpoint)(torch.tensor(x), edge_index).numpy()
    ids = open(os.path.join(args.gnn_dataset, "customer_ids.txt")).read().split("\n")[:-1]
    scores = read_scores(args.gnn_scores)
    stages = manifest["stageNames"]
    worst, same_stage = 0.0, 0
    for i, customer in enumerate(ids):
        row = scores[customer]
        ours = np.array([float(row[f"p_{s}"]) for s in stages])
        worst = max(worst, float(np.abs(ours - probabilities[i]).max()))
        same_stage += row["stage"] == stages[int(probabilities[i].argmax())]
    print(f"PyG SAGEConv: {len(ids)} customers, worst stage probability difference {worst:.2e}, "
          f"same stage for {same_stage}")
    return worst <= args.tolerance and same_stage == len(ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lstm-checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--scores", required=True)
    parser.add_argument("--gnn-checkpoint")
    parser.add_argument("--gnn-dataset")
    parser.add_argument("--gnn-scores")
    parser.add_argument("--customers", type=int, default=500)
    # The scores file has six decimals; float32 sums in another order differ near 1e-6.
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    ok = check_lstm(args)
    if args.gnn_checkpoint:
        ok = check_gnn(args) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
