#!/usr/bin/env python3
"""The scoring forward of `clm-bench scoring` in plain PyTorch, to measure the project against:
customers per second on one thread for the CDNOW model's shape (T=39, 8 features, hidden 50,
2 layers) with every customer at the full T steps, the heads included.

    python3 scripts/scoring_peer.py [--seconds 3] [--batch-sizes 256,1024]

Run it from a virtualenv outside the project (it needs torch; nothing of the project's installs
it), in the same session as `clm-bench scoring`, and compare the rates side by side. The model is
`torch.nn.LSTM` (batch_first) with the last step's hidden state into one `nn.Linear` per head
(churn 1, ZILN CLV 3, stages 4), under `torch.inference_mode()`: the fastest plain-PyTorch path for
equal-length sequences. Variable lengths would need `pack_padded_sequence`, which is slower.
"""
import argparse
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="256,1024")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    steps, features, hidden, layers = 39, 8, 50, 2
    lstm = torch.nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, width) for width in (1, 3, 4)])
    print(f"PyTorch {torch.__version__} scoring forward, 1 thread (T={steps}, {features} features, hidden {hidden}, {layers} layers), all T")
    print("batch  customers/s")
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.randn(batch, steps, features)
        with torch.inference_mode():
            for _ in range(3):
                out, _ = lstm(x)
            done = 0
            begin = time.perf_counter()
            while time.perf_counter() - begin < args.seconds:
                out, _ = lstm(x)
                last = out[:, -1, :]
                churn = torch.sigmoid(heads[0](last))
                clv = heads[1](last)
                stages = torch.softmax(heads[2](last), dim=1)
                done += batch
            elapsed = time.perf_counter() - begin
        print(f"{batch:<6} {done / elapsed:.0f}")


if __name__ == "__main__":
    main()
