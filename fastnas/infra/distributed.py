"""torch.distributed plumbing for ``torchrun``: process-group set-up (NCCL on GPUs, gloo on CPU,
chosen automatically, with a collective timeout), rank/world helpers and reductions.

    torchrun --nproc_per_node=N -m fastnas.search ...            # one machine
    torchrun --nnodes=2 --node_rank=R --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
             --nproc_per_node=N -m fastnas.train ...              # several machines
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # created by this init (and so destroyed by its shutdown)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str, timeout_s: float = 300.0) -> tuple[DistContext, str]:
    """Join the process group when started by torchrun; returns the context and the device to use
    (``cuda:<local rank>`` for GPU runs). A group that already exists (the pipeline runs the search and
    the retraining in one group) is reused and left for its creator to destroy."""
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device == "auto":
        device = "cpu"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, backend, owns), device


def all_reduce_(t: torch.Tensor, average: bool = False) -> torch.Tensor:
    """In-place sum (or mean) over all processes; a no-op outside a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        if average:
            t.div_(dist.get_world_size())
    return t


def broadcast_buffers_(module: torch.nn.Module, src: int = 0) -> None:
    """Every process takes rank `src`'s buffers (BatchNorm's running statistics); a no-op outside a
    process group. DDP does this before each training forward only, so after the last step each rank
    holds its own statistics; an evaluation after it must use rank 0's, which its checkpoint holds, or a
    resumed run evaluates another network than the one that was reported."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in module.buffers():
            dist.broadcast(buf, src)


def fault_step(rank: int) -> int | None:
    """Test hook: FASTNAS_FAULT=<rank>:<step> makes that rank die at that step (to check that the
    others stop with an error instead of hanging)."""
    spec = os.environ.get("FASTNAS_FAULT")
    if not spec:
        return None
    r, step = spec.split(":")
    return int(step) if int(r) == rank else None


def broadcast_object(obj):
    """Rank 0's `obj` on every process (e.g. a run directory named after the time)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def barrier() -> None:
    """Wait for every process (a no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if `ctx` created it."""
    if ctx.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_in_group(device: str, body, *args):
    """Run ``body(*args, ctx)`` inside one process group (created here under torchrun, reused by every
    run the body starts), then leave together and tear the group down."""
    ctx, _ = init(device)
    try:
        result = body(*args, ctx)
        # Leave together: a process tearing its group down while rank 0 still writes can abort gloo.
        barrier()
        return result
    finally:
        shutdown(ctx)


# gloo reports a dead peer or a timeout as a plain RuntimeError (torch 2.14: "Connection closed by peer",
# "Timed out"), NCCL and the store as torch.distributed.DistError: the type covers the latter, and within
# a process group the text of gloo's messages the former.
_PEER_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken pipe")


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another process went away (not a bug of ours)."""
    if isinstance(exc, getattr(dist, "DistError", ())):  # absent from builds without distributed support
        return True
    if not isinstance(exc, RuntimeError) or not launched_by_torchrun():
        return False
    msg = str(exc).lower()
    return any(m in msg for m in _PEER_MARKERS)


def describe_failure(exc: BaseException) -> str:
    """The one line a process prints when its distributed run failed."""
    rank = os.environ.get("RANK", "?")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return f"distributed run failed on rank {rank} (a peer process died or timed out): {first}"
