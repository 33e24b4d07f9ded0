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


class CustomerLifecycleLSTM(torch.nn.Module):
    """The clm LSTM in PyTorch: nn.LSTM, an optional ReLU dense path from the customer-level
    inputs (the last step's features, their means over the valid steps, length / T), and one
    nn.Linear per head on [h_last, dense]: churn (1), CLV (1 for log_mse; purchase logit, mu and
    raw sigma for ziln) and, when present, the lifecycle stages."""

    # sigma never falls below sqrt(float32 epsilon), as in the Swift model and google/lifetime_value.
    MIN_SIGMA = 3.1622777e-4

    def __init__(self, state, steps):
        super().__init__()
        hidden = state["lstm.weight_hh_l0"].shape[1]
        layers = sum(1 for name in state if name.startswith("lstm.weight_ih_l"))
        self.steps = steps
        self.lstm = torch.nn.LSTM(input_size=state["lstm.weight_ih_l0"].shape[1], hidden_size=hidden,
                                  num_layers=layers, batch_first=True)
        self.customer_dense = None
        if "customer_dense.weight" in state:
            units, inputs = state["customer_dense.weight"].shape
            self.customer_dense = torch.nn.Linear(inputs, units)
        head_input = state["churn_head.weight"].shape[1]
        self.churn_head = torch.nn.Linear(head_input, 1)
        self.clv_head = torch.nn.Linear(head_input, state["clv_head.weight"].shape[0])
        self.stage_head = None
        if "stage_head.weight" in state:
            self.stage_head = torch.nn.Linear(head_input, state["stage_head.weight"].shape[0])
        # Names match model.safetensors one to one: strict loading proves nothing is left over.
        self.load_state_dict(state, strict=True)

    def forward(self, features, length):
        """features: [T, F] normalised (as POST /v1/score takes them); steps past `length` are
        padding, which the Swift model carries its state through unchanged: the same as stopping."""
        valid = torch.as_tensor(features[:length], dtype=torch.float32)
        out, _ = self.lstm(valid.unsqueeze(0))
        joined = out[0, -1]
        if self.customer_dense is not None:
            summary = torch.cat([valid[-1], valid.mean(dim=0), torch.tensor([length / self.steps])])
            joined = torch.cat([joined, torch.relu(self.customer_dense(summary))])
        churn = torch.sigmoid(self.churn_head(joined)).item()
        clv = self.clv_head(joined)
        if clv.shape[0] == 3:
            sigma = torch.clamp(torch.nn.functional.softplus(clv[2]), min=self.MIN_SIGMA)
            spend = (torch.sigmoid(clv[0]) * torch.exp(torch.clamp(clv[1] + sigma * sigma / 2, max=30.0))).item()
        else:
            spend = max(torch.expm1(clv[0]).item(), 0.0)
        stages = torch.softmax(self.stage_head(joined), dim=0).numpy() if self.stage_head is not None else None
        return churn, spend, stages


def lstm_from_checkpoint(directory, steps):
    model = CustomerLifecycleLSTM(load_file(os.path.join(directory, "model.safetensors")), steps)
    model.eval()

    def score(features, length):
        with torch.no_grad():
            return model(features, length)
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
    score = lstm_from_checkpoint(args.lstm_checkpoint, periods)
    stages = manifest["stageNames"]
    sample = np.linspace(0, len(ids) - 1, num=min(args.customers, len(ids))).astype(int)
    worst_churn = worst_spend = worst_stage = 0.0
    compared_stages = 0
    for i in sample:
        churn, spend, stage_probabilities = score(features[i], int(lengths[i]))
        row = scores[ids[i]]
        worst_churn = max(worst_churn, abs(churn - float(row["churn_probability"])))
        worst_spend = max(worst_spend, abs(spend - float(row["expected_spend"])) / max(1.0, spend))
        if stage_probabilities is not None and row["stage_source"] == "lstm":
            ours = np.array([float(row[f"p_{s}"]) for s in stages])
            worst_stage = max(worst_stage, float(np.abs(ours - stage_probabilities).max()))
            compared_stages += 1
    print(f"torch.nn.LSTM: {len(sample)} customers, worst churn difference {worst_churn:.2e}, "
          f"worst relative spend difference {worst_spend:.2e}, "
          f"worst stage probability difference {worst_stage:.2e} over {compared_stages} stage-head customers")
    return worst_churn <= args.tolerance and worst_spend <= args.tolerance and worst_stage <= args.tolerance


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
