"""What a search reports besides its loop: per-op mean probabilities for the metrics, the derived cell's
accuracy inside the supernet at the end of each stage, and the files of a finished search (genotype,
DARTS text, diagrams, the genotype for every skip count, summary.json)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fastnas import plots
from fastnas.data import normalize
from fastnas.infra import config as cfglib
from fastnas.infra.rundir import RunDir
from fastnas.space.derive import genotypes_by_skip_count
from fastnas.space.genotype import Genotype
from fastnas.space.sampler import Sample
from fastnas.space.supernet import SuperNet

if TYPE_CHECKING:
    from fastnas.search.searcher import Searcher


def mean_op_probabilities(probs: dict[str, torch.Tensor], edge_primitives: dict[str, list[list[str]]]) -> dict:
    """p_<cell>_<op>: each op's probability averaged over the cell's edges that still offer it. Scalar
    columns for metrics.csv and TensorBoard (the per-edge probabilities are in metrics.jsonl)."""
    out = {}
    for cell, p in probs.items():
        sums: dict[str, list[float]] = {}
        for e, names in enumerate(edge_primitives[cell]):
            for k, name in enumerate(names):
                sums.setdefault(name, []).append(float(p[e, k]))
        out.update({f"p_{cell}_{name}": sum(v) / len(v) for name, v in sums.items()})
    return out


@torch.no_grad()
def evaluate_derived(net: SuperNet, genotype: Genotype, train_data, valid_data, images: int, batch_size: int,
                     device, memory_format=torch.contiguous_format, autocast=nullcontext) -> dict:
    """Eval-mode accuracy of the derived cell inside the supernet (its chosen op per kept edge, the rest
    dropped) on the first `images` held-out images. The supernet's BN statistics were gathered over
    sampled paths, so they are first re-estimated for the derived network on as many (un-augmented)
    training images, as one-shot NAS evaluations do; every buffer is restored afterwards."""
    if images <= 0 or len(valid_data) == 0:
        return {"derived_acc": None, "derived_loss": None}
    samples = net.derived_samples(genotype)
    samples = {k: Sample(v.weights.to(device), v.index, True, v.index_list) for k, v in samples.items()}
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    momenta = [m.momentum for m in bns]
    was_training, skip_p = net.training, net.skip_dropout
    try:
        net.set_skip_dropout(0.0)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        net.train()
        n_cal = min(images, len(train_data))
        for i in range(0, n_cal, batch_size):
            x = normalize(train_data.images[i:i + batch_size].to(device), train_data.mean, train_data.std,
                          memory_format=memory_format)
            with autocast():
                net(x, samples, edge_weights=False)
        net.eval()
        n = min(images, len(valid_data))
        loss = correct = 0.0
        for i in range(0, n, batch_size):
            x = normalize(valid_data.images[i:min(n, i + batch_size)].to(device), train_data.mean, train_data.std,
                          memory_format=memory_format)
            y = valid_data.labels[i:min(n, i + batch_size)].to(device)
            with autocast():
                logits = net(x, samples, edge_weights=False).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
        return {"derived_acc": correct / n, "derived_loss": loss / n, "derived_images": n}
    finally:
        net.load_state_dict(saved, strict=False)
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        net.set_skip_dropout(skip_p)
        net.train(was_training)


def write_results(run: RunDir, searcher: Searcher, genotype: Genotype) -> None:
    run.write_text("genotype.json", genotype.to_json() + "\n")
    run.write_text("genotype.txt", str(genotype) + "\n")
    if run.enabled:
        genotype.render(run.path)
        if searcher.budget_report and searcher.cfg.plots:  # the budget may have changed the cells: redraw
            try:
                plots.draw_genotype(genotype, run.path / "cells.png", "final (within the budget)")
            except Exception as exc:  # a picture is a convenience
                run.log(f"warning: cells.png not drawn: {type(exc).__name__}: {exc}")
    # P-DARTS logs the genotype for every skip count 8..0 at the end: the same, as a file to pick from
    by_skips = genotypes_by_skip_count(searcher.net, searcher.sampler, max_param_free=searcher.cfg.max_param_free)
    run.write_json("genotypes_by_skip_count.json", by_skips)
    for entry in by_skips:
        run.log(f"skip cap {entry['max_skip']} ({entry['skips']} skips): {entry['text']}", echo=False)
    run.write_json("summary.json", {
        "genotype": genotype.to_dict(), "genotype_text": str(genotype), "stages": searcher.stage_genotypes,
        "search_time_s": searcher.elapsed, "config": cfglib.to_dict(searcher.cfg),
        "budget": searcher.budget_report,
    })
