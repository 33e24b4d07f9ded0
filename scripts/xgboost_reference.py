#!/usr/bin/env python3
"""Refits a training run's gradient boosting baseline with Python's XGBoost and compares.

The run stores every customer's boosting features, labels and the project's XGBoost predictions
(xgboost_features.csv) and how it fitted them (xgboost_baseline.json: parameters, rounds,
early stopping). This script fits the same two boosters on the same rows (the training rows the
fit saw, in sample-key order, with early stopping on the validation rows it saw) with the
xgboost package and requires:
  - the same number of rounds kept by early stopping, for the churn and the spend booster;
  - every customer's churn probability within --tolerance, and every expected spend within
    --tolerance relative to the largest spend label (the two builds may add up histogram
    bins in another order, so the last bits can differ).
It prints both test AUCs and spend RMSEs. Exit status 0 when everything agrees, 1 otherwise.

xgboost is not a project dependency; run this from a virtualenv outside the project:
  source scripts/common.sh; py=$(clm_python_tools "xgboost==1.7.6")
  $py scripts/xgboost_reference.py runs/checkpoints/cdnow-lstm
"""
import argparse
import csv
import json
import math
import sys

import numpy as np
import xgboost as xgb


def read_rows(path, feature_names):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in ["sample_key", "split", "in_fit", "churn", "spend", "churn_probability",
                                     "expected_spend"] + feature_names if name not in reader.fieldnames]
        if missing:
            sys.exit(f"{path}: no column {', '.join(missing)}")
        rows = list(reader)
    columns = {name: np.array([float(row[name]) for row in rows]) for name in reader.fieldnames}
    features = np.array([[float(row[name]) for name in feature_names] for row in rows], dtype=np.float32)
    return columns, features


def auc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    positives = labels.sum()
    negatives = len(labels) - positives
    return (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the run directory (holds xgboost_features.csv and xgboost_baseline.json)")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--main-cutoff-only", action="store_true",
                        help="fit on the main cut-off's training rows only and print the test metrics "
                             "(measures what the earlier cut-offs' examples add; no comparison)")
    arguments = parser.parse_args()

    record = json.load(open(f"{arguments.run}/xgboost_baseline.json"))
    columns, features = read_rows(f"{arguments.run}/xgboost_features.csv", record["features"])
    split, in_fit, rows = columns["split"], columns["in_fit"], columns["sample_key"]

    def fit_rows(which):
        selected = np.flatnonzero((split == which) & (in_fit == 1))
        return selected[np.argsort(rows[selected], kind="mergesort")]

    train, validation = fit_rows(0), fit_rows(1)
    if arguments.main_cutoff_only:
        train = train[columns["cutoff"][train] == 0]
        print(f"fitting on the {len(train)} training rows of the main cut-off only")
    elif len(train) != record["train_rows"] or len(validation) != record["validation_rows"]:
        print(f"the file marks {len(train)} training and {len(validation)} validation rows as fitted; "
              f"the run fitted {record['train_rows']} and {record['validation_rows']}")
        return 1
    test = split == 2
    everything = xgb.DMatrix(features, missing=np.nan)
    agreed = True
    for head, label, predicted_column in [("churn", "churn", "churn_probability"), ("spend", "spend", "expected_spend")]:
        settings = record[head]
        dtrain = xgb.DMatrix(features[train], label=columns[label][train], missing=np.nan)
        dvalidation = xgb.DMatrix(features[validation], label=columns[label][validation], missing=np.nan)
        booster = xgb.train(dict(settings["parameters"]), dtrain, num_boost_round=settings["max_rounds"],
                            evals=[(dvalidation, "validation")], early_stopping_rounds=settings["early_stopping_rounds"],
                            verbose_eval=False)
        rounds = booster.best_iteration + 1
        predictions = booster.predict(everything, iteration_range=(0, rounds)).astype(np.float64)
        if head == "spend":
            predictions = np.maximum(predictions, 0)
        project = columns[predicted_column]
        scale = 1.0 if head == "churn" else max(float(np.abs(columns[label]).max()), 1.0)
        difference = float(np.abs(predictions - project).max()) / scale
        same_rounds = rounds == settings["rounds_kept"]
        if head == "churn":
            labels = columns["churn"][test]
            if arguments.main_cutoff_only:
                clipped = np.clip(predictions[test], 1e-15, 1 - 1e-15)
                log_loss = -float(np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
                print(f"churn: rounds kept {rounds}; test AUC {auc(predictions[test], labels):.4f}, log loss {log_loss:.4f}")
                continue
            print(f"churn: rounds kept {rounds} (project {settings['rounds_kept']}); test AUC {auc(predictions[test], labels):.6f} "
                  f"(project {auc(project[test], labels):.6f}); largest probability difference {difference:.2e}")
        else:
            truth = columns["spend"][test]
            if arguments.main_cutoff_only:
                print(f"spend: rounds kept {rounds}; test RMSE {math.sqrt(float(np.mean((predictions[test] - truth) ** 2))):.2f}")
                continue
            rmse = math.sqrt(float(np.mean((predictions[test] - truth) ** 2)))
            project_rmse = math.sqrt(float(np.mean((project[test] - truth) ** 2)))
            print(f"spend: rounds kept {rounds} (project {settings['rounds_kept']}); test RMSE {rmse:.4f} "
                  f"(project {project_rmse:.4f}); largest difference {difference:.2e} of the largest spend")
        if not same_rounds or not difference <= arguments.tolerance:
            print(f"{head}: DISAGREES (tolerance {arguments.tolerance})")
            agreed = False
    if arguments.main_cutoff_only:
        return 0
    print(f"xgboost {xgb.__version__}: " + ("agrees with the project's fit" if agreed else "DISAGREES with the project's fit"))
    return 0 if agreed else 1


if __name__ == "__main__":
    sys.exit(main())
