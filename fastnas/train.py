"""S3 retraining: ``python -m fastnas.train --genotype X``.

X is a published name (DARTS_V2, PDARTS, ...), a genotype.json, a search run directory, or a pasted
DARTS ``Genotype(...)`` string. Defaults are the DARTS/P-DARTS CIFAR recipe (preset ``darts``):
EvalNetwork C=36, 20 cells, auxiliary weight 0.4, cutout 16, drop-path 0.3 ramped linearly, SGD
0.025 cosine, momentum 0.9, wd 3e-4, grad clip 5, 600 epochs. The headline is the final-epoch test
error; the best epoch is reported too, labelled as such.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastnas import config as cfglib
from fastnas import distributed
from fastnas.config import ConfigError, RunOptions, SGDOptions, opt
from fastnas.data import BatchStream, augment, cutout, load_dataset, normalize
from fastnas.genotype import Genotype, GenotypeError
from fastnas.network import EvalNetwork
from fastnas.runs import (
    AMP_DTYPES,
    RunDir,
    RunError,
    amp_context,
    cli_main,
    default_run_dir,
    load_checkpoint,
    progress_bar,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig(SGDOptions, RunOptions):
    """All options of a retraining run (see ``python -m fastnas.train --help``)."""

    genotype: str | None = opt(None, "published name, genotype.json, search run dir or DARTS Genotype(...) string")
    preset: str = opt("darts", "darts (the published recipe), quick (the study's CPU budget) or smoke (seconds)",
                      choices=["darts", "quick", "smoke"])
    channels: int = opt(36, "initial channels C", ge=1)
    layers: int = opt(20, "cells", ge=1)
    auxiliary: bool = opt(True, "auxiliary head after 2/3 of the depth")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary loss", ge=0)
    drop_path: float = opt(0.3, "final drop-path rate (ramped linearly from 0 over training)", ge=0, lt=1)
    cutout: int = opt(16, "cutout square side (0: off)", ge=0)
    epochs: int = opt(600, "training epochs", ge=1)
    # batch_size, lr, lr_min, momentum, weight_decay, grad_clip: config.SGDOptions
    compile: bool = opt(False, "torch.compile the network")
    pin_memory: bool = opt(True, "pinned host memory for batches copied to a GPU")
    export: bool = opt(True, "export the final model (safetensors or state dict, and torch.export)")
    sync_bn: bool = opt(False, "SyncBatchNorm across processes (GPU runs under torchrun)")
    plots: bool = opt(True, "write curves.png (loss, accuracy, learning rate per epoch)")
    report_cost: bool = opt(False, "print the genotype's cost report (parameters, FLOPs; latency with "
                                   "--latency-device) for this network and exit without training")
    latency_device: str | None = opt(None, "with --report-cost: also measure latency on cpu or cuda[:N]")
    latency_batch: int = opt(1, "with --report-cost: batch size of the latency measurement", ge=1)

    def validate(self) -> None:
        if not self.genotype:
            raise ConfigError("--genotype is required (a published name, genotype.json, run dir or DARTS string)")
        if self.auxiliary and self.layers < 2:
            raise ConfigError(f"layers={self.layers} leaves no cell for the auxiliary head (after 2/3 of the "
                              "depth): use --layers >= 2 or --no-auxiliary")
        side = self.image_size if self.dataset == "folder" else 32
        if self.cutout > side:
            raise ConfigError(f"cutout={self.cutout} is larger than the {side}x{side} images")
        if self.latency_device is not None and not (self.latency_device == "cpu"
                                                    or self.latency_device.startswith("cuda")):
            raise ConfigError(f"latency_device must be cpu or cuda[:N], got {self.latency_device!r}")
        self.validate_run_options()


PRESETS: dict[str, dict] = {
    "darts": {},
    # The CPU retraining budget of `fastnas.study` on the embedded data: ~100 steps of a small network,
    # the same for every cell compared; 500 test images.
    "quick": {"channels": 8, "layers": 5, "epochs": 3, "batch_size": 64, "embedded_size": 2000, "lr": 0.05,
              "drop_path": 0.1, "cutout": 0},
    "smoke": {"channels": 8, "layers": 5, "epochs": 5, "batch_size": 64, "embedded_size": 1500, "lr": 0.05,
              "drop_path": 0.1, "cutout": 0},
}


def resolve_genotype(spec: str) -> Genotype:
    """A published name, a genotype.json, a search run directory, or a DARTS Genotype(...) string."""
    path = Path(str(spec))
    try:
        if path.is_dir():
            if not (path / "genotype.json").is_file():
                raise GenotypeError(f"{path} holds no genotype.json (has its search finished?)")
            return Genotype.from_json(path / "genotype.json")
    except OSError:
        pass
    return Genotype.load(spec)


class Trainer:
    """One retraining run; :meth:`run` trains the remaining epochs."""

    def __init__(self, cfg: TrainConfig, run: RunDir, device: torch.device, genotype: Genotype, *,
                 rank: int = 0, world_size: int = 1):
        self.cfg, self.run_dir, self.device, self.genotype = cfg, run, device, genotype
        self.rank, self.world_size = rank, world_size
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        kw = dict(download=cfg.download, embedded_size=cfg.embedded_size, image_size=cfg.image_size, seed=cfg.seed)
        self.train_data = load_dataset(cfg.dataset, cfg.data_dir, train=True, **kw)
        self.test_data = load_dataset(cfg.dataset, cfg.data_dir, train=False, **kw)
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
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, cfg.epochs, eta_min=cfg.lr_min)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.epoch = 0
        self.best = {"test_acc": -1.0, "epoch": 0}
        self.elapsed = 0.0

    def autocast(self):
        return amp_context(self.device, self.amp_dtype)

    def to_device(self, images, labels):
        if self.device.type == "cuda" and self.cfg.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.net.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        self.net.train()
        steps = self.stream.batches_per_pass()
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps)
        sums = torch.zeros(3, device=self.device)  # loss * n, correct, n
        bar = progress_bar(steps, f"epoch {self.epoch + 1}/{cfg.epochs}", enabled=self.rank == 0)
        t0 = time.perf_counter()
        for _ in range(steps):
            images, labels = self.to_device(*self.stream.next())
            x = normalize(augment(images), self.train_data.mean, self.train_data.std,
                          memory_format=self.memory_format)
            x = cutout(x, cfg.cutout)
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
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            n = labels.shape[0]
            sums += torch.stack([loss.detach() * n, (logits.argmax(1) == labels).sum().float(),
                                 torch.tensor(float(n), device=self.device)])
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


@torch.no_grad()
def evaluate_model(net, data, mean, std, device, batch_size: int = 256, amp_dtype=None,
                   memory_format=torch.contiguous_format, to_device=None, rank: int = 0, world_size: int = 1) -> dict:
    """Test loss, accuracy and error of `net` on in-memory `data` (normalized with mean/std); under
    torchrun each process takes a contiguous slice and the sums are all-reduced."""
    try:
        net.eval()
    except NotImplementedError:  # a torch.export program: exported in eval mode already
        pass
    total_loss, correct = 0.0, 0
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
        total_loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
    sums = distributed.all_reduce_(torch.tensor([total_loss, float(correct)], dtype=torch.float64, device=device))
    total_loss, correct = float(sums[0]), int(round(float(sums[1])))
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


def parse_args(argv=None):
    parser = cfglib.make_parser("python -m fastnas.train", "Retrain a genotype from scratch and report its test "
                                "error.", TrainConfig)
    return vars(parser.parse_args(argv))


def main(argv=None) -> int:
    return cli_main(parse_args, _main, argv)


def prepare(args: dict) -> tuple[TrainConfig, Path, dict | None]:
    """Config, run directory and (when resuming) the checkpoint, from parsed arguments."""
    resume = args.pop("resume", None)
    if resume:
        run_path = Path(resume)
        state = load_checkpoint(run_path / "last.pt")
        if state.get("kind") != "train":
            raise RunError(f"{run_path}: checkpoint is not from a training run")
        cfg = cfglib.config_for_resume(TrainConfig, state["config"], args, ("device", "workers", "dist_timeout"))
        return cfg, run_path, state
    cfg = cfglib.build_config(TrainConfig, PRESETS, args, "darts")
    return cfg, Path(cfg.out) if cfg.out else default_run_dir("train"), None


def train(cfg: TrainConfig, run_path: Path, state: dict | None = None, overwrite: bool = False) -> dict:
    """Run (or resume) a retraining and write its report; returns the report. Under torchrun every
    process runs this; only rank 0 writes. `overwrite`: `run_path` may hold another run, which is moved
    aside (see :class:`fastnas.runs.RunDir`)."""
    genotype = resolve_genotype(cfg.genotype) if state is None else Genotype.from_dict(state["genotype"])
    if cfg.workers:
        torch.set_num_threads(cfg.workers)
    ctx, device_name = distributed.init(cfg.device, cfg.dist_timeout)
    run_path = Path(distributed.broadcast_object(str(run_path)))  # one run directory for all ranks
    try:
        result = _train(cfg, run_path, state, genotype, ctx, resolve_device(device_name), overwrite)
        # Leave together: a process tearing its group down while rank 0 still writes can abort gloo.
        distributed.barrier()
        return result
    finally:
        distributed.shutdown(ctx)


def _train(cfg: TrainConfig, run_path: Path, state: dict | None, genotype: Genotype, ctx, device,
           overwrite: bool = False) -> dict:
    seed_everything(cfg.seed, cfg.deterministic)
    run = RunDir(run_path, enabled=ctx.is_main, resume=state is not None, overwrite=overwrite)
    if run.moved_aside:
        run.log(f"--overwrite: the run that was in {run_path} is now in {run.moved_aside}")
    cfg.out = str(run_path)
    if run.enabled:
        cfglib.save_yaml(cfg, run.path / "config.yaml")
    trainer = Trainer(cfg, run, device, genotype, rank=ctx.rank, world_size=ctx.world_size)
    report = model_report(trainer.net, cfg.image_size if cfg.dataset == "folder" else 32, device)
    if state is not None:
        trainer.load_state_dict(state)
        run.truncate_metrics(lambda r: r["epoch"] <= trainer.epoch)
        run.log(f"resumed {run_path} at epoch {trainer.epoch}"
                + (f"; changed: {', '.join(cfg._resume_changes)}" if getattr(cfg, "_resume_changes", None) else ""))
    else:
        run.write_text("genotype.json", genotype.to_json() + "\n")
        run.log(f"train: {genotype}")
        run.log(f"{cfg.dataset}, {cfg.layers} cells, C={cfg.channels}: {report['params']:,} parameters "
                f"({report['params_with_auxiliary']:,} with the auxiliary head), {report['macs'] / 1e6:.1f}M MACs; "
                f"device {device}, run dir {run_path}")
    last = trainer.run()
    if not last:  # resumed a finished run
        last = {**trainer.evaluate(), "epoch": trainer.epoch}
    exported = export_model(run, trainer.net, 32 if cfg.dataset != "folder" else cfg.image_size, device) \
        if cfg.export and run.enabled else []
    result = {
        "genotype": genotype.to_dict(), "genotype_text": str(genotype), **report,
        "epochs": trainer.epoch, "final_test_error": last["test_error"], "final_test_acc": last["test_acc"],
        "best_epoch_test_acc": trainer.best["test_acc"], "best_epoch": trainer.best["epoch"],
        "train_time_s": trainer.elapsed, "seed": cfg.seed, "dataset": cfg.dataset, "exported": exported,
    }
    run.write_json("report.json", result)
    if cfg.plots and run.enabled:
        try:
            from fastnas import plots

            plots.train_curves(run.path)
        except Exception as exc:  # a picture is a convenience: report, don't fail the run
            run.log(f"warning: curves.png not drawn: {type(exc).__name__}: {exc}")
    run.log(f"final test error {result['final_test_error'] * 100:.2f}% after {trainer.epoch} epochs (seed {cfg.seed}; "
            f"best epoch {trainer.best['epoch']}: {(1 - trainer.best['test_acc']) * 100:.2f}%, shown for reference)")
    run.log(f"results in {run_path}")
    run.close()
    return result


def report_cost(cfg: TrainConfig) -> dict:
    """The cost report of the network this config would train (see :mod:`fastnas.cost`), printed."""
    from fastnas import cost

    if cfg.dataset == "cifar100":
        num_classes = 100
    elif cfg.dataset == "folder":
        train_dir = Path(cfg.data_dir).expanduser() / "train"
        if not train_dir.is_dir():
            raise ConfigError(f"folder dataset: {train_dir} is not a directory")
        num_classes = sum(p.is_dir() for p in train_dir.iterdir())
    else:
        num_classes = 10
    shape = cost.EvalShape(cfg.channels, cfg.layers, cfg.image_size if cfg.dataset == "folder" else 32, num_classes)
    latency = None
    if cfg.latency_device:
        if cfg.latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"latency_device {cfg.latency_device}: no CUDA device here")
        latency = cost.LatencyTable(cost.LatencySetting(cfg.latency_device, cfg.latency_batch, "float32",
                                                        cfg.channels_last), cost.default_latency_cache())
    genotype = resolve_genotype(cfg.genotype)
    rep = cost.cost_report(genotype, shape, latency)
    print(f"{genotype}\n{cost.format_report(rep)}")
    return rep


def _main(args: dict) -> int:
    overwrite = False if "resume" in args else bool(args.pop("overwrite", False))
    cfg, run_path, state = prepare(args)
    if cfg.report_cost:
        report_cost(cfg)
        return 0
    train(cfg, run_path, state, overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
