#!/usr/bin/env python3
"""Reference BG/NBD and Gamma-Gamma numbers from the `lifetimes` package, for Sources/Baselines.

The Swift baselines re-implement lifetimes 0.11.3's BetaGeoFitter and GammaGammaFitter
(penalizer 0). This script produces the numbers they are checked against, with lifetimes itself:

  --make-fixture
      Simulates a seeded population from the BG/NBD + Gamma-Gamma generative process in whole
      periods, fits both lifetimes models, and writes
      Tests/BaselinesTests/Fixtures/lifetimes_reference.json: the customer summaries, the
      fitted parameters, each model's negative log-likelihood at those parameters, and
      per-customer predictions for a horizon of HORIZON periods. Deterministic (fixed seed).

  --summary CSV [--predictions-out OUT.csv] [--horizon 39]
      Fits both models on a CSV with columns frequency,recency,T,monetary_value (any other
      columns, such as customer_id, are carried into the predictions) and prints the
      parameters as JSON. With --predictions-out, writes per-customer predictions there.

lifetimes is not a project dependency; run this from a virtualenv outside the project:

  python3 -m venv /tmp/clm-venv
  /tmp/clm-venv/bin/pip install lifetimes==0.11.3 numpy==2.4.6 pandas==3.1.1 scipy==1.17.1 \
      autograd==1.9.1 dill==0.4.1
  /tmp/clm-venv/bin/python scripts/lifetimes_reference.py --make-fixture

Tested on Python 3.11.7 with exactly those versions (the newest at the time): lifetimes 0.11.3
still runs on numpy 2 / pandas 3 / scipy 1.17, so no older pins were needed. On the bundled
CDNOW summary it reproduces the published BG/NBD fit (r 0.243, alpha 4.414, a 0.793, b 2.426).

Note: lifetimes' summary dataframe has a column named T, which pandas also uses for
transpose; this script always indexes it as df["T"].
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd
from scipy.optimize import minimize

import lifetimes
from lifetimes import BetaGeoFitter, GammaGammaFitter

SEED = 20261123
CUSTOMERS = 600
HORIZON = 39
# CDNOW-like weekly parameters (Fader, Hardie & Lee 2005 report r 0.243, alpha 4.414, a 0.793,
# b 2.426; Fader & Hardie 2013 p 6.25, q 3.74, gamma 15.44), with a somewhat higher purchase
# rate so that enough customers repeat for the three Gamma-Gamma parameters to be identified.
TRUE_BGNBD = {"r": 0.6, "alpha": 5.0, "a": 0.8, "b": 2.5}
TRUE_GAMMA_GAMMA = {"p": 6.0, "q": 4.0, "v": 15.0}
# Ages in whole weeks: customers acquired over the first AGE_SPREAD weeks of a MAX_AGE-week window.
MAX_AGE = 78
AGE_SPREAD = 52
# Customers outside the simulated population, evaluated with the fitted parameters only, to
# exercise the edges of the prediction formulas: (frequency, recency, T).
PROBES = [
    (0, 0, 0), (0, 0, 1), (0, 0, 200), (1, 1, 1), (1, 1, 200), (1, 199, 200), (3, 10, 78),
    (30, 5, 78), (30, 78, 78), (60, 77, 78), (150, 150, 150), (300, 310, 312),
]
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "Tests", "BaselinesTests", "Fixtures", "lifetimes_reference.json")


def simulate(rng, n):
    """Summaries (frequency, recency, T, monetary_value) from the generative process.

    Each customer makes a first purchase at time 0 of a period grid and is observed for T
    whole periods. Repeat purchases follow a Poisson process with rate lambda ~ Gamma(r, alpha)
    and, after each repeat purchase, the customer drops out with probability
    p ~ Beta(a, b) (BG/NBD). Like a transaction log summarised by period, frequency counts the
    distinct periods after period 0 with a purchase, and recency is the last of them. Each
    repeat period's spend is z ~ Gamma(p, nu) with nu ~ Gamma(q, gamma) per customer
    (Gamma-Gamma); monetary_value is the mean over repeat periods, 0 without any.
    """
    r, alpha, a, b = (TRUE_BGNBD[k] for k in ("r", "alpha", "a", "b"))
    p, q, v = (TRUE_GAMMA_GAMMA[k] for k in ("p", "q", "v"))
    ages = rng.integers(MAX_AGE - AGE_SPREAD, MAX_AGE + 1, size=n)
    rates = rng.gamma(r, 1.0 / alpha, size=n)
    dropouts = rng.beta(a, b, size=n)
    spend_rates = rng.gamma(q, 1.0 / v, size=n)
    rows = []
    for age, rate, dropout, nu in zip(ages, rates, dropouts, spend_rates):
        time, times = 0.0, []
        while True:
            time += rng.exponential(1.0 / rate)
            if time >= age:
                break
            times.append(time)
            if rng.random() < dropout:
                break
        periods = sorted({int(np.floor(t)) for t in times} - {0})
        spends = rng.gamma(p, 1.0 / nu, size=len(periods))
        rows.append((len(periods), periods[-1] if periods else 0, int(age),
                     float(spends.mean()) if periods else 0.0))
    return pd.DataFrame(rows, columns=["frequency", "recency", "T", "monetary_value"])


def fit(summary):
    """lifetimes' fits, exactly as a user calls them (penalizer 0, default optimiser settings)."""
    bgf = BetaGeoFitter(penalizer_coef=0.0)
    bgf.fit(summary["frequency"], summary["recency"], summary["T"])
    # Gamma-Gamma needs positive spend; repeat customers whose repeat purchases were all free
    # (CDNOW has some) are left out, as the project's training run leaves them out.
    repeaters = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    ggf = GammaGammaFitter(penalizer_coef=0.0)
    ggf.fit(repeaters["frequency"], repeaters["monetary_value"])
    return bgf, ggf


def bgnbd_nll(params, summary):
    """lifetimes' own objective (mean negative log-likelihood) in the summary's time units.

    The fitter reports its objective in rescaled time, which differs by a constant; this is the
    value the Swift fit is compared with.
    """
    f = summary["frequency"].to_numpy().astype(int)
    return float(BetaGeoFitter._negative_log_likelihood(
        np.log(params), f, summary["recency"].to_numpy(float), summary["T"].to_numpy(float),
        np.ones_like(f), 0.0))


def gamma_gamma_nll(params, summary):
    repeaters = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    f = repeaters["frequency"].to_numpy(float)
    return float(GammaGammaFitter._negative_log_likelihood(
        np.log(params), f, repeaters["monetary_value"].to_numpy(float), np.ones_like(f), 0.0))


def predictions(bgf, ggf, summary, horizon):
    """Per-customer predictions with lifetimes' own functions.

    P(no purchase in the next `horizon` periods) has no lifetimes function; it is the BG/NBD
    expression 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + t))^(r + x), evaluated
    with lifetimes' P(alive) and parameters.
    """
    f = summary["frequency"].to_numpy(float)
    rec = summary["recency"].to_numpy(float)
    age = summary["T"].to_numpy(float)
    r, alpha = bgf.params_["r"], bgf.params_["alpha"]
    expected = np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(horizon, f, rec, age), float)
    alive = np.asarray(bgf.conditional_probability_alive(f, rec, age), float)
    no_purchase = 1.0 - alive + alive * ((alpha + age) / (alpha + age + horizon)) ** (r + f)
    profit = np.asarray(ggf.conditional_expected_average_profit(
        summary["frequency"], summary["monetary_value"]), float)
    return {
        "expected_purchases": expected,
        "p_alive": alive,
        "p_no_purchase": no_purchase,
        "expected_average_profit": profit,
    }


def polished(nll, start):
    """The MLE from lifetimes' solution, optimised much further: a check that lifetimes stopped
    close enough to the true maximum for a 1% comparison to be meaningful."""
    result = minimize(lambda x: nll(np.exp(x)), np.log(start), method="Nelder-Mead",
                      options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 200000, "maxfev": 200000})
    return np.exp(result.x), result.fun


def short(values):
    # 12 significant digits keep the fixture small and are far inside the tests' 1e-4 tolerance.
    return [float(f"{v:.12g}") for v in np.asarray(values, float)]


def make_fixture(output):
    rng = np.random.default_rng(SEED)
    summary = simulate(rng, CUSTOMERS)
    bgf, ggf = fit(summary)
    bg_params = [float(bgf.params_[k]) for k in ("r", "alpha", "a", "b")]
    gg_params = [float(ggf.params_[k]) for k in ("p", "q", "v")]

    # How far lifetimes' optimiser stopped from the maximum: printed, not stored.
    for name, nll, params, keys in (("BG/NBD", lambda x: bgnbd_nll(x, summary), bg_params, "r alpha a b"),
                                    ("Gamma-Gamma", lambda x: gamma_gamma_nll(x, summary), gg_params, "p q v")):
        best, best_nll = polished(nll, params)
        gaps = ", ".join(f"{k} {abs(b / p - 1):.2e}" for k, p, b in zip(keys.split(), params, best))
        print(f"{name}: lifetimes NLL {nll(np.array(params)):.12f}, polished {best_nll:.12f}; "
              f"relative parameter gaps: {gaps}", file=sys.stderr)

    probes = pd.DataFrame(PROBES, columns=["frequency", "recency", "T"])
    # Probes have no spend history; the Gamma-Gamma prediction uses 10 per repeat period.
    probes["monetary_value"] = np.where(probes["frequency"] > 0, 10.0, 0.0)

    def section(frame):
        values = predictions(bgf, ggf, frame, HORIZON)
        return {
            "frequency": frame["frequency"].astype(int).tolist(),
            "recency": frame["recency"].astype(int).tolist(),
            "T": frame["T"].astype(int).tolist(),
            "monetary_value": short(frame["monetary_value"]),
            **{name: short(column) for name, column in values.items()},
        }

    fixture = {
        "generator": {
            "seed": SEED,
            "true_bgnbd": TRUE_BGNBD,
            "true_gamma_gamma": TRUE_GAMMA_GAMMA,
            "lifetimes": lifetimes.__version__,
        },
        "horizon": HORIZON,
        "bgnbd": dict(zip(["r", "alpha", "a", "b"], bg_params)),
        "bgnbd_negative_log_likelihood": bgnbd_nll(bg_params, summary),
        "gamma_gamma": dict(zip(["p", "q", "v"], gg_params)),
        "gamma_gamma_negative_log_likelihood": gamma_gamma_nll(gg_params, summary),
        "customers": section(summary),
        "probes": section(probes),
    }
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    repeaters = int((summary["frequency"] > 0).sum())
    print(f"wrote {os.path.relpath(output)} ({os.path.getsize(output)} bytes): {CUSTOMERS} customers, "
          f"{repeaters} repeaters; BG/NBD {fixture['bgnbd']}; Gamma-Gamma {fixture['gamma_gamma']}",
          file=sys.stderr)


def fit_summary(path, predictions_out, horizon):
    summary = pd.read_csv(path)
    missing = {"frequency", "recency", "T", "monetary_value"} - set(summary.columns)
    if missing:
        sys.exit(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    bgf, ggf = fit(summary)
    bg_params = {k: float(bgf.params_[k]) for k in ("r", "alpha", "a", "b")}
    gg_params = {k: float(ggf.params_[k]) for k in ("p", "q", "v")}
    print(json.dumps({
        "customers": len(summary),
        "repeaters": int(((summary["frequency"] > 0) & (summary["monetary_value"] > 0)).sum()),
        "bgnbd": bg_params,
        "bgnbd_negative_log_likelihood": bgnbd_nll(list(bg_params.values()), summary),
        "gamma_gamma": gg_params,
        "gamma_gamma_negative_log_likelihood": gamma_gamma_nll(list(gg_params.values()), summary),
    }, indent=2))
    if predictions_out:
        values = predictions(bgf, ggf, summary, horizon)
        out = summary.copy()
        for name, column in values.items():
            out[name] = column
        out["expected_spend"] = out["expected_purchases"] * out["expected_average_profit"]
        out["horizon"] = horizon
        out.to_csv(predictions_out, index=False, float_format="%.12g")
        print(f"wrote {predictions_out} ({len(out)} rows)", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--make-fixture", action="store_true", help="write the test fixture")
    mode.add_argument("--summary", metavar="CSV", help="fit lifetimes on this summary CSV")
    parser.add_argument("--output", default=FIXTURE, help="fixture path (with --make-fixture)")
    parser.add_argument("--predictions-out", metavar="CSV", help="per-customer predictions (with --summary)")
    parser.add_argument("--horizon", type=float, default=HORIZON, help="prediction horizon in periods")
    args = parser.parse_args()
    if args.make_fixture:
        make_fixture(args.output)
    else:
        fit_summary(args.summary, args.predictions_out, args.horizon)


if __name__ == "__main__":
    main()
