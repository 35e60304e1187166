"""S3 retraining: the :class:`Trainer` (``fastnas train`` runs it), evaluation of a network on held
data, its size report and export.

Defaults are the DARTS/P-DARTS CIFAR recipe (preset ``darts``): EvalNetwork C=36, 20 cells, auxiliary
weight 0.4, cutout 16, drop-path 0.3 ramped linearly, SGD 0.025 cosine, momentum 0.9, wd 3e-4, grad
clip 5, 600 epochs. The headline is the final-epoch test error; the best epoch is reported too,
labelled as such.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fastnas.data import BatchStream, augment, cutout, load_dataset, normalize, place
from fastnas.infra import config as cfglib
from fastnas.infra import distributed
from fastnas.infra.console import progress_bar
from fastnas.infra.errors import RunError
from fastnas.infra.graphs import StepGraph, runtime_blocker
from fastnas.infra.rundir import CHECKPOINT_VERSION, RunDir
from fastnas.infra.runtime import AMP_DTYPES, amp_context, rng_state, set_rng_state
from fastnas.space.genotype import Genotype
from fastnas.space.network import EvalNetwork
from fastnas.train.options import TrainConfig


class Trainer:
    """One retraining run; :meth:`run` trains the remaining epochs."""

    def __init__(self, cfg: TrainConfig, run: RunDir, device: torch.device, genotype: Genotype, *,
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.run_dir, self.device, self.genotype = cfg, run, device, genotype
        self.rank, self.world_size = rank, world_size
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        kw = dict(download=cfg.download, embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
        self.train_data = place(load_dataset(cfg.dataset, cfg.data_dir, train=True, **kw), device, cfg.data_on_device)
        self.test_data = place(load_dataset(cfg.dataset, cfg.data_dir, train=False, **kw), device, cfg.data_on_device)
        self.stream = BatchStream(self.train_data, cfg.batch_size, cfg.seed * 2 + 1, drop_last=False, rank=rank,
                                  world_size=world_size)
        self.net = EvalNetwork(genotype, cfg.channels, cfg.layers, self.train_data.num_classes, cfg.auxiliary,
                               0.0).to(device, memory_format=self.memory_format)
        self.model = self.net
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if cfg.sync_bn and device.type == "cuda":
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            ids = [device.index] if device.type == "cuda" else None
            self.model = DDP(self.net, device_ids=ids)
        mode = None if cfg.compile_mode == "default" else cfg.compile_mode
        self.forward = torch.compile(self.model, mode=mode) if cfg.compile else self.model
        # foreach: one call per update for all parameters, as a GPU does by default (a CPU would loop in
        # Python, three calls per parameter); the same arithmetic
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, foreach=True)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, cfg.epochs, eta_min=cfg.lr_min)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.epoch = 0
        self.best = {"test_acc": -1.0, "epoch": 0}
        self.elapsed = 0.0
        # --cuda-graphs: the step (forward, both losses, backward, clip, SGD, sums) replayed as one CUDA
        # graph, captured once per epoch (the learning rate is the graph's constant; drop-path's rate a
        # buffer it reads); the batch is drawn eagerly and copied into the graph's inputs
        self.graphed = None
        if cfg.cuda_graphs:
            blocker = graph_blocker(cfg, device, world_size)
            if blocker is None:
                self.use_graphs()
            run.log("CUDA graphs: on for the training step (one capture per epoch)" if blocker is None
                    else f"CUDA graphs: off: {blocker}")

    def use_graphs(self, backend=None) -> None:
        """Replay the training step as a CUDA graph (`backend`: a stand-in for torch.cuda's, in tests)."""
        self.graphed = StepGraph(self.iterate, log=self.run_dir.log, backend=backend)

    def autocast(self):
        # autocast's cast cache must be off where a CUDA graph captures the step (PyTorch's graph notes)
        return amp_context(self.device, self.amp_dtype, cache_enabled=self.graphed is None)

    def to_device(self, images, labels):
        if self.device.type == "cuda" and self.cfg.pin_memory and images.device.type == "cpu":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def step(self, sums: torch.Tensor) -> None:
        """One training step on the next batch; adds loss * n, correct and n to `sums` on the device. The
        batch is drawn first (augmentation and cutout on the batch's device), then :meth:`iterate`
        runs, replayed as a CUDA graph with ``--cuda-graphs``."""
        cfg = self.cfg
        images, labels = self.to_device(*self.stream.next())
        x = normalize(augment(images), self.train_data.mean, self.train_data.std,
                      memory_format=self.memory_format)
        x = cutout(x, cfg.cutout)
        (self.graphed or self.iterate)([(x, labels)], None, sums, True)

    def iterate(self, batches, _valid, sums: torch.Tensor, _arch: bool = True) -> None:
        """The step on a batch already drawn (:class:`fastnas.infra.graphs.StepGraph`'s signature):
        nothing in it reads a value back to the host (tests/test_host_work.py)."""
        cfg = self.cfg
        ((x, labels),) = batches
        with self.autocast():
            logits, aux = self.forward(x)
            loss = F.cross_entropy(logits.float(), labels)
            total = loss
            if aux is not None and cfg.auxiliary_weight > 0:
                total = total + cfg.auxiliary_weight * F.cross_entropy(aux.float(), labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip > 0:
            # the optimizer's list of net.parameters(): no walk of the module tree per step
            torch.nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], cfg.grad_clip, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        n = labels.shape[0]
        # torch.full fills on the device; torch.tensor(n) would copy a host number every step
        sums += torch.stack([loss.detach() * n, (logits.argmax(1) == labels).sum().float(),
                             torch.full((), float(n), device=self.device)])

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.net.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        self.net.train()
        steps = self.stream.batches_per_pass()
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps)
        sums = torch.zeros(3, device=self.device)  # loss * n, correct, n
        if self.graphed is not None:  # this epoch's learning rate and sums: a new graph
            self.graphed.reset()
        bar = progress_bar(steps, f"epoch {self.epoch + 1}/{cfg.epochs}", enabled=self.rank == 0)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(sums)
            bar.update(1)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        s = distributed.all_reduce_(sums).tolist()
        return {"train_loss": s[0] / s[2], "train_acc": s[1] / s[2], "lr": lr,
                "drop_path": self.net.drop_path_prob, "train_images_per_s": s[2] / seconds, "train_time_s": seconds}

    def evaluate(self, data=None) -> dict:
        return evaluate_model(self.net, data or self.test_data, self.train_data.mean, self.train_data.std,
                              self.device, max(self.cfg.batch_size, 256), self.amp_dtype, self.memory_format,
                              self.to_device, rank=self.rank, world_size=self.world_size)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION, "kind": "train", "config": cfglib.to_dict(self.cfg),
            "genotype": self.genotype.to_dict(), "epoch": self.epoch, "model": self.net.state_dict(),
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "stream": self.stream.state_dict(), "rng": rng_state(), "best": self.best, "elapsed": self.elapsed,
            "num_classes": self.train_data.num_classes,
            "normalization": [list(self.train_data.mean), list(self.train_data.std)],
        }

    def load_state_dict(self, state: dict) -> None:
        if Genotype.from_dict(state["genotype"]) != self.genotype:
            raise RunError("checkpoint was trained with another genotype")
        try:
            self.net.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.scaler.load_state_dict(state["scaler"])
            self.stream.load_state_dict(state["stream"])
            self.epoch, self.best, self.elapsed = state["epoch"], state["best"], state["elapsed"]
            set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise RunError(f"checkpoint does not fit this network: {type(exc).__name__}: {str(exc)[:200]}") from None

    def run(self) -> dict:
        """Train the remaining epochs; the last epoch's metrics (empty when none was left)."""
        # The whole run's bar (epochs, ETA) above each epoch's bar (steps); plain log lines off a terminal.
        run_bar = progress_bar(self.cfg.epochs, "train", enabled=self.rank == 0, whole_run=True,
                               initial=self.epoch)
        try:
            return self._epochs(run_bar)
        finally:
            run_bar.close()

    def _epochs(self, run_bar) -> dict:
        cfg, log = self.cfg, self.run_dir.log
        last = {}
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            row = self.train_epoch()
            row.update(self.evaluate())
            self.epoch += 1
            self.elapsed += time.perf_counter() - t0
            row.update(epoch=self.epoch, elapsed_s=self.elapsed)
            if row["test_acc"] > self.best["test_acc"]:
                self.best = {"test_acc": row["test_acc"], "epoch": self.epoch}
                self.run_dir.save_checkpoint({"version": CHECKPOINT_VERSION, "kind": "weights",
                                              "genotype": self.genotype.to_dict(), "config": cfglib.to_dict(cfg),
                                              "model": self.net.state_dict(), "epoch": self.epoch,
                                              "num_classes": self.train_data.num_classes,
                                              "normalization": [list(self.train_data.mean),
                                                                list(self.train_data.std)]}, "best.pt")
            self.run_dir.save_checkpoint(self.state_dict(), "last.pt")
            self.run_dir.log_metrics(row, step=self.epoch)
            log(f"epoch {self.epoch}/{cfg.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f}, "
                f"test acc {row['test_acc']:.4f} (error {row['test_error'] * 100:.2f}%), lr {row['lr']:.4f}, "
                f"drop-path {row['drop_path']:.3f}, {row['train_images_per_s']:.0f} images/s")
            run_bar.update(1)
            last = row
        return last


def graph_blocker(cfg: TrainConfig, device: torch.device, world_size: int) -> str | None:
    """Why a retraining with `cfg` cannot replay its steps as CUDA graphs here (None: it can): the
    step itself is always static."""
    return runtime_blocker(device, cfg.amp, world_size, "training")


@torch.no_grad()
def evaluate_model(net, data, mean, std, device, batch_size: int = 256, amp_dtype=None,
                   memory_format=torch.contiguous_format, to_device=None, rank: int = 0, world_size: int = 1) -> dict:
    """Test loss, accuracy and error of `net` on in-memory `data` (normalized with mean/std); under
    torchrun each process takes a contiguous slice and the sums are all-reduced."""
    try:
        net.eval()
    except NotImplementedError:  # a torch.export program: exported in eval mode already
        pass
    if world_size > 1 and isinstance(net, torch.nn.Module):
        distributed.broadcast_buffers_(net)  # every rank evaluates the network rank 0 checkpoints
    # Sums stay on the device and are read once at the end: a read per batch would sync a GPU per batch.
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    per = -(-len(data) // world_size)
    lo, hi = rank * per, min(len(data), (rank + 1) * per)
    for i in range(lo, hi, batch_size):
        i_end = min(hi, i + batch_size)
        images, labels = data.images[i:i_end], data.labels[i:i_end]
        if to_device is not None:
            images, labels = to_device(images, labels)
        else:
            images, labels = images.to(device), labels.to(device)
        x = normalize(images, mean, std, memory_format=memory_format)
        with amp_context(device, amp_dtype):
            logits = net(x)
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        sums[1] += (logits.argmax(1) == labels).sum()
    total_loss, correct = distributed.all_reduce_(sums).tolist()
    correct = int(round(correct))
    n = max(1, len(data))
    return {"test_loss": total_loss / n, "test_acc": correct / n, "test_error": 1 - correct / n}


def model_report(net: EvalNetwork, image_size: int, device) -> dict:
    """Parameters with and without the auxiliary head, and FLOPs of one image (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    net.train(was_training)
    return {"params": net.num_parameters(), "params_with_auxiliary": net.num_parameters(include_auxiliary=True),
            "flops": counter.get_total_flops(), "macs": counter.get_total_flops() // 2}


def export_model(run: RunDir, net: EvalNetwork, image_size: int, device) -> list[str]:
    """Final weights as safetensors (when installed) or a state dict, and a torch.export program."""
    written = []
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    try:
        from safetensors.torch import save_file

        save_file(state, str(run.path / "model.safetensors"))
        written.append("model.safetensors")
    except ImportError:
        torch.save(state, run.path / "model_state_dict.pt")
        written.append("model_state_dict.pt")
    net.eval()
    try:
        example = torch.zeros(2, 3, image_size, image_size, device=device)
        # Any batch size: the batch dimension is dynamic (the example's 2 is only a trace size).
        batch = torch.export.Dim("batch", min=1, max=2**16)
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(run.path / "model.pt2"))
        written.append("model.pt2")
    except Exception as exc:  # export is a convenience: report, don't fail the run
        run.log(f"warning: torch.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return written
