#!/usr/bin/env python3
"""What a polars user would write instead of `clm-data import`: one lazy query over the same
event file that reads it, sums every customer's weekly transactions, units and spend up to the
cut-off, counts customer–product pairs, labels churn and spend over the horizon, and writes the
three tables to parquet. It writes much less than the import (no sequences, no split, no graph
files), so its time is a lower bound on what the same work costs in polars.

Prints one line: `polars <version> threads <n>: <seconds> s, peak RSS <MiB> MiB, <rows> rows`.
polars is not a project dependency; run this from the tools' virtualenv outside the project:
  source scripts/common.sh; py=$(clm_python_tools "polars==2.1.0")
  POLARS_MAX_THREADS=1 $py scripts/import_peer.py FILE OUT --cutoff 2021-09-30 --horizon 91
"""
import argparse
import datetime
import os
import resource
import sys
import time

import polars as pl


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help="customer_id,timestamp,amount,quantity,product_id,order_id CSV")
    parser.add_argument("out", help="directory for weekly.parquet, pairs.parquet and labels.parquet")
    parser.add_argument("--cutoff", required=True, help="last day of history, YYYY-MM-DD")
    parser.add_argument("--horizon", type=int, required=True, help="days after the cut-off that the labels cover")
    arguments = parser.parse_args()
    cutoff = datetime.date.fromisoformat(arguments.cutoff)
    horizon_end = cutoff + datetime.timedelta(days=arguments.horizon)
    os.makedirs(arguments.out, exist_ok=True)

    started = time.perf_counter()
    events = pl.scan_csv(arguments.input, schema_overrides={
        "customer_id": pl.Utf8, "timestamp": pl.Utf8, "amount": pl.Float64, "quantity": pl.Int64,
        "product_id": pl.Utf8, "order_id": pl.Utf8,
    }).with_columns(pl.col("timestamp").str.slice(0, 10).str.to_date("%Y-%m-%d").alias("day"))
    history = events.filter(pl.col("day") <= cutoff)
    weekly = (history
              .with_columns(((pl.lit(cutoff) - pl.col("day")).dt.total_days() // 7).alias("weeks_before_cutoff"))
              .group_by("customer_id", "weeks_before_cutoff")
              .agg(pl.col("order_id").n_unique().alias("transactions"), pl.col("quantity").sum().alias("items"),
                   pl.col("amount").sum().alias("spend")))
    pairs = history.group_by("customer_id", "product_id").agg(pl.len().alias("purchases"))
    future = (events.filter((pl.col("day") > cutoff) & (pl.col("day") <= horizon_end))
              .group_by("customer_id").agg(pl.col("amount").sum().alias("horizon_spend")))
    labels = (history.select("customer_id").unique()
              .join(future, on="customer_id", how="left")
              .with_columns(pl.col("horizon_spend").is_null().alias("churned"),
                            pl.col("horizon_spend").fill_null(0.0)))
    tables = pl.collect_all([weekly, pairs, labels])
    rows = 0
    for name, table in zip(["weekly", "pairs", "labels"], tables):
        table.write_parquet(os.path.join(arguments.out, f"{name}.parquet"))
        rows += table.height
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"polars {pl.__version__} threads {pl.thread_pool_size()}: {elapsed:.2f} s, peak RSS {peak:.0f} MiB, {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
