#!/usr/bin/env python3
"""Plain PyTorch peer of `clm-bench models --model lstm`: one training step of the same model
(nn.LSTM over T=39 steps of 8 features, hidden 50, 2 layers, dropout 0.2 between them; churn,
ZILN spend and 4-stage heads on each customer's last valid step; BCE + ZILN NLL + weighted
cross-entropy; Adam), batch 32 with mixed lengths, on one thread. Prints samples/s.

    python3 scripts/lstm_peer.py [--seconds 3]

Needs torch (a virtualenv outside the project; the project never installs it).
"""
import argparse
import math
import time

import torch

T, F, H, LAYERS, BATCH, STAGES = 39, 8, 50, 2, 32, 4


class Peer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(F, H, num_layers=LAYERS, dropout=0.2, batch_first=True)
        self.heads = torch.nn.Linear(H, 1 + 3 + STAGES)

    def forward(self, x, lengths):
        out, _ = self.lstm(x)
        last = out[torch.arange(x.shape[0]), lengths - 1]
        return self.heads(last)


def loss_fn(outputs, churn, spend, stages):
    churn_loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs[:, 0], churn)
    logit, mu, raw_sigma = outputs[:, 1], outputs[:, 2], outputs[:, 3]
    bought = (spend > 0).float()
    purchase = torch.nn.functional.binary_cross_entropy_with_logits(logit, bought, reduction="none")
    sigma = torch.clamp(torch.nn.functional.softplus(raw_sigma), min=3.1622777e-4)
    log_spend = torch.log(torch.clamp(spend, min=1e-6))
    lognormal = log_spend + torch.log(sigma) + 0.5 * math.log(2 * math.pi) + 0.5 * ((log_spend - mu) / sigma) ** 2
    ziln = (purchase + bought * lognormal).mean()
    stage_loss = torch.nn.functional.cross_entropy(outputs[:, 4:], stages)
    return churn_loss + ziln + 0.5 * stage_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = Peer()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, T, F) * 2 - 1
    lengths = torch.randint(T // 2, T + 1, (BATCH,))
    churn = torch.randint(0, 2, (BATCH,)).float()
    spend = torch.where(churn > 0.5, torch.zeros(BATCH), torch.rand(BATCH) * 99 + 1)
    stages = torch.randint(0, STAGES, (BATCH,))
    model.train()

    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(x, lengths), churn, spend, stages)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds or count < 10:
        step()
        count += 1
    rate = count * BATCH / (time.perf_counter() - start)
    print(f"PyTorch {torch.__version__} LSTM training (T={T}, {F} features, hidden {H}, {LAYERS} layers, batch {BATCH}), 1 thread: {rate:.0f} samples/s")


if __name__ == "__main__":
    main()
