"""Does the supernet learn within a CPU budget? Weight steps only (the warm-up), on the embedded data, for
one fixed path (a plain network: the ceiling), a fresh gumbel-hard path every step (GDAS), and the
softmax mixture (DARTS / P-DARTS); accuracy of the trained batches per window and seconds per step.

    python benchmarks/supernet_learning.py --steps 90 --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
import time

import harness  # first: this checkout on sys.path
import torch
import torch.nn.functional as F

from fastnas.data import BatchStream, augment, load_dataset, normalize, split_train
from fastnas.space.sampler import Sample, make_sampler
from fastnas.space.supernet import SuperNet


def run(mode: str, steps: int, channels: int, cells: int, batch: int, lr: float, window: int) -> dict:
    torch.manual_seed(0)
    full = load_dataset("embedded", embedded_size=2000, seed=0)
    train, _ = split_train(full, 0.5, 0)
    stream = BatchStream(train, batch, 1)
    net = SuperNet(channels, cells, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    sampler = make_sampler("softmax" if mode == "softmax" else "gumbel-hard")
    fixed = net.sample(sampler)
    accs, curve = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = stream.next()
        x = normalize(augment(x), train.mean, train.std, memory_format=torch.channels_last)
        s = fixed if mode == "fixed path" else net.sample(sampler)
        s = {k: Sample(v.weights.detach(), v.index, v.hard, v.index_list) for k, v in s.items()}
        logits = net(x, s)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
        opt.step()
        accs.append(float((logits.argmax(1) == y).float().mean()))
        if (step + 1) % window == 0:
            curve.append({"step": step + 1, "train_acc": sum(accs[-window:]) / window})
    return {"mode": mode, "steps": steps, "seconds_per_step": (time.perf_counter() - t0) / steps, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--window", type=int, default=15)
    p.add_argument("--modes", nargs="+", default=["fixed path", "gumbel-hard", "softmax"])
    p.add_argument("--out", default="benchmarks/results/cpu")
    a = p.parse_args()
    rows = []
    for mode in a.modes:
        rows.append(run(mode, a.steps, a.channels, a.cells, a.batch, a.lr, a.window))
        print(json.dumps(rows[-1]), flush=True)
    steps = [c["step"] for c in rows[0]["curve"]]
    lines = [f"Supernet C={a.channels}, {a.cells} cells, batch {a.batch}, lr {a.lr}, {torch.get_num_threads()} "
             "threads; train accuracy (chance 0.10) over the last window of steps", "",
             "| mode | s/step | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['seconds_per_step']:.2f} | "
                     + " | ".join(f"{c['train_acc']:.2f}" for c in r["curve"]) + " |")
    harness.write_results(a.out, "supernet_learning", {"args": vars(a), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
