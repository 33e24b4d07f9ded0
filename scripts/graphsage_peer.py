#!/usr/bin/env python3
"""A plain PyTorch GraphSAGE-mean trainer of the same shape as `clm-bench models`' GraphSAGE, to
measure the project against: seed nodes per second on one thread, with the time split between
sampling, gathering features and compute.

    python3 scripts/graphsage_peer.py [--seconds 3]

Run it from a virtualenv outside the project (it needs torch; nothing of the project's installs
it), in the same session as `clm-bench models`, and compare the two rates side by side.

The graph has the benchmark's shape and skew: 200,000 customers, 20,000 products, 12 purchases
per customer with product popularity u² (u uniform), edges both ways. The model is two SAGEConv
layers as PyG defines them (lin_l with bias on the neighbour mean, lin_r without bias on the node
itself), 16 inputs, hidden 64, 4 classes, ReLU and dropout 0.2 between, cross-entropy, Adam 1e-3.

The sampler is fully vectorised, as a careful PyTorch user would write it without pyg-lib: it
draws the fan-out per node with replacement in one call for the whole frontier. That favours the
peer: drawing with replacement reaches fewer distinct nodes (about 18,400 input nodes per batch
against the project's 24,400 without replacement, as PyG's NeighborLoader samples), so it
gathers and transforms less. A vectorised draw without replacement (random keys ranked per node)
ran at about 1,000 seed nodes/s here, because popular products have thousands of neighbours.
The new frontier keeps the destinations first, as SAGEConv's bipartite blocks need.
"""
import argparse
import time

import torch


def build_graph(customers, products, per_customer, generator):
    u = torch.rand(customers * per_customer, generator=generator)
    product = customers + (u * u * (products - 1)).long()
    customer = torch.arange(customers).repeat_interleave(per_customer)
    source = torch.cat([customer, product])
    target = torch.cat([product, customer])
    order = torch.argsort(source, stable=True)
    neighbours = target[order]
    counts = torch.bincount(source, minlength=customers + products)
    offsets = torch.zeros(customers + products + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, neighbours


class Sampler:
    def __init__(self, offsets, neighbours, fanouts):
        self.offsets = offsets
        self.neighbours = neighbours
        self.fanouts = fanouts
        self.local = torch.full((offsets.numel() - 1,), -1, dtype=torch.long)

    def hop(self, frontier, fanout, generator):
        start = self.offsets[frontier]
        degree = self.offsets[frontier + 1] - start
        slots = (torch.rand(frontier.numel(), fanout, generator=generator) * degree.unsqueeze(1)).long()
        valid = (degree > 0).unsqueeze(1).expand(-1, fanout)
        destination = torch.arange(frontier.numel()).unsqueeze(1).expand_as(slots)[valid]
        picked = self.neighbours[(start.unsqueeze(1) + slots)[valid]]
        # Sources are the destinations followed by the newly reached nodes, in first-seen order.
        self.local[frontier] = torch.arange(frontier.numel())
        fresh = picked[self.local[picked] < 0]
        fresh_unique = torch.unique(fresh)
        self.local[fresh_unique] = frontier.numel() + torch.arange(fresh_unique.numel())
        sources = torch.cat([frontier, fresh_unique])
        edge_source = self.local[picked]
        self.local[sources] = -1
        return sources, edge_source, destination

    def sample(self, seeds, generator):
        blocks = []
        frontier = seeds
        for fanout in self.fanouts:
            sources, edge_source, destination = self.hop(frontier, fanout, generator)
            blocks.append((edge_source, destination, frontier.numel()))
            frontier = sources
        return list(reversed(blocks)), frontier


class SAGEConvMean(torch.nn.Module):
    def __init__(self, inputs, outputs):
        super().__init__()
        self.lin_l = torch.nn.Linear(inputs, outputs)
        self.lin_r = torch.nn.Linear(inputs, outputs, bias=False)

    def forward(self, x, edge_source, destination, destinations):
        total = torch.zeros(destinations, x.shape[1]).index_add_(0, destination, x[edge_source])
        count = torch.bincount(destination, minlength=destinations).clamp(min=1).unsqueeze(1)
        return self.lin_l(total / count) + self.lin_r(x[:destinations])


class GraphSAGE(torch.nn.Module):
    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.convs = torch.nn.ModuleList([SAGEConvMean(inputs, hidden), SAGEConvMean(hidden, classes)])

    def forward(self, x, blocks):
        for layer, (edge_source, destination, destinations) in enumerate(blocks):
            x = self.convs[layer](x, edge_source, destination, destinations)
            if layer + 1 < len(self.convs):
                x = torch.nn.functional.dropout(x.relu(), p=0.2, training=self.training)
        return x


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(4)
    features_size, hidden, classes, batch = 16, 64, 4, 512
    offsets, neighbours = build_graph(args.customers, args.products, 12, generator)
    nodes = args.customers + args.products
    features = torch.rand(nodes, features_size, generator=generator) * 2 - 1
    sampler = Sampler(offsets, neighbours, [10, 5])
    model = GraphSAGE(features_size, hidden, classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampling = gathering = compute = 0.0
    seeds_done = input_nodes = step = 0
    begin = time.perf_counter()
    while time.perf_counter() - begin < args.seconds or step < 5:
        t0 = time.perf_counter()
        seeds = torch.randint(0, args.customers, (batch,), generator=generator)
        blocks, inputs = sampler.sample(seeds, generator)
        t1 = time.perf_counter()
        x = features[inputs]
        labels = seeds % classes
        t2 = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x, blocks), labels)
        loss.backward()
        optimiser.step()
        t3 = time.perf_counter()
        if step >= 2:
            sampling += t1 - t0
            gathering += t2 - t1
            compute += t3 - t2
            seeds_done += batch
            input_nodes += inputs.numel()
        step += 1
    total = sampling + gathering + compute
    print(f"PyTorch {torch.__version__} GraphSAGE peer (fan-out 10,5, hidden {hidden}, "
          f"batch {batch}, {args.customers}+{args.products} nodes, 1 thread): "
          f"{seeds_done / total:.0f} seed nodes/s, {input_nodes / max(step - 2, 1):.0f} input nodes per batch")
    print(f"  time: sampling {100 * sampling / total:.0f}%, gathering features {100 * gathering / total:.0f}%, "
          f"compute (forward, backward, Adam) {100 * compute / total:.0f}%")


if __name__ == "__main__":
    main()
