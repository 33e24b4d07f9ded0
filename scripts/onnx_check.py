#!/usr/bin/env python3
"""Checks a model written by `clm-score export --format onnx` with ONNX's own tools.

    python3 scripts/onnx_check.py --model model.onnx --dataset DIR --scores scores.csv [--split test]

1. onnx.checker (full check, with shape inference) accepts the model;
2. ONNX Runtime runs it on the customers of one split of a dataset and gives the scores
   `clm-score batch` wrote for them: churn and stage probabilities within --tolerance, expected
   spend within --tolerance relative to max(1, spend).

The scores must come from `clm-score batch --as-of <the dataset's cut-off>` on the dataset's own
events: then scoring's features are the dataset's stored ones. Those are stored normalised; the
model takes them as the importer computes them, so they are mapped back with the manifest's
statistics first. Needs onnx, onnxruntime and numpy (a virtualenv outside the project).
Exits 1 when a check fails or no customer was compared.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime

SPLITS = {"train": 0, "validation": 1, "test": 2}


def dataset_rows(directory, split):
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    periods, width = manifest["spec"]["historyPeriods"], len(manifest["featureNames"])
    ids = open(os.path.join(directory, "customer_ids.txt")).read().split("\n")[:-1]
    normalised = np.fromfile(os.path.join(directory, "features.f32"), dtype=np.float32).reshape(len(ids), periods, width)
    lengths = np.fromfile(os.path.join(directory, "lengths.i32"), dtype=np.int32)
    chosen = np.nonzero(np.fromfile(os.path.join(directory, "split.u8"), dtype=np.uint8) == SPLITS[split])[0]
    mean = np.asarray(manifest["normalisation"]["mean"], dtype=np.float64)
    std = np.asarray(manifest["normalisation"]["std"], dtype=np.float64)
    raw = (normalised[chosen].astype(np.float64) * std + mean).astype(np.float32)
    return manifest, [ids[i] for i in chosen], raw, lengths[chosen]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--scores", required=True)
    parser.add_argument("--split", choices=sorted(SPLITS), default="test")
    # The scores file has six decimals, and ONNX Runtime's LSTM sums in float32 in its own order.
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    manifest, ids, features, lengths = dataset_rows(args.dataset, args.split)
    problems = []
    if metadata.get("feature_names", "").split(",") != manifest["featureNames"]:
        problems.append(f"metadata feature_names {metadata.get('feature_names')!r} are not the dataset's {manifest['featureNames']}")
    stages = [s for s in metadata.get("stage_names", "").split(",") if s]
    if stages and stages != manifest["stageNames"]:
        problems.append(f"metadata stage_names {stages} are not the dataset's {manifest['stageNames']}")

    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    wanted = [output.name for output in session.get_outputs()]
    outputs = {name: [] for name in wanted}
    for start in range(0, len(ids), 1024):
        batch = session.run(wanted, {"features": features[start:start + 1024], "length": lengths[start:start + 1024]})
        for name, values in zip(wanted, batch):
            outputs[name].append(values)
    outputs = {name: np.concatenate(parts) for name, parts in outputs.items()}

    with open(args.scores, newline="") as f:
        scored = {row["customer_id"]: row for row in csv.DictReader(f)}
    worst_churn = worst_spend = worst_stage = 0.0
    compared = stage_compared = 0
    for i, customer in enumerate(ids):
        row = scored.get(customer)
        if row is None:
            problems.append(f"customer {customer} of the {args.split} split has no row in {args.scores}")
            continue
        compared += 1
        worst_churn = max(worst_churn, abs(float(outputs["churn_probability"][i]) - float(row["churn_probability"])))
        spend = float(row["expected_spend"])
        worst_spend = max(worst_spend, abs(float(outputs["expected_spend"][i]) - spend) / max(1.0, abs(spend)))
        if "stage_probabilities" in outputs and row["stage_source"] == "lstm":
            batch_stages = np.array([float(row[f"p_{s}"]) for s in stages])
            worst_stage = max(worst_stage, float(np.abs(outputs["stage_probabilities"][i] - batch_stages).max()))
            stage_compared += 1
    if "stage_probabilities" in outputs and stage_compared != compared:
        problems.append(f"only {stage_compared} of {compared} rows carry the LSTM's stage probabilities")
    print(f"onnx.checker: passed (opset {model.opset_import[0].version}, IR {model.ir_version}); onnxruntime "
          f"{onnxruntime.__version__}: {compared} {args.split} customers, worst churn difference {worst_churn:.2e}, "
          f"worst relative spend difference {worst_spend:.2e}, worst stage probability difference {worst_stage:.2e} "
          f"over {stage_compared} customers")
    for label, worst in [("churn", worst_churn), ("spend", worst_spend), ("stage", worst_stage)]:
        if worst > args.tolerance:
            problems.append(f"{label} differs by {worst:.2e}, above {args.tolerance:.0e}")
    if compared == 0:
        problems.append("no customer compared")
    for problem in problems[:10]:
        print("    " + problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
