"""The architecture gradient, first or second order (the ``arch_order`` mechanism).

- :class:`FirstOrder` / :class:`SecondOrder` (``make_arch_gradient(order)``): one shard's gradient of
  the architecture loss w.r.t. ``net.arch_parameters()``, at the current weights or DARTS' unrolled ones.
- :func:`unrolled_arch_grads`: DARTS' second-order architecture gradient (quark0/darts,
  cnn/architect.py): the validation loss at the one-step unrolled weights
  ``w' = w - xi * (momentum * buf + grad_w L_train + weight_decay * w)``, minus ``xi`` times the
  Hessian-vector product ``grad_alpha grad_w L_train . grad_w' L_val``, estimated by central
  differences at ``w +- eps v`` with ``eps = 0.01 / ||v||``. ``xi`` is the current weight lr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.search.mechanism import Mechanism


@dataclass
class ArchStep:
    """What one shard's architecture gradient needs: the supernet and the architecture to score, the
    held-out batch, the weight step's batch (DARTS' second order unrolls on it), and from the searcher
    its autocast, loss scaling, architecture loss and weight optimizer."""

    net: torch.nn.Module
    samples: dict
    batch: tuple
    train_batch: tuple | None
    shards: int
    autocast: Callable
    scale: Callable  # loss -> the loss the backward pass sees (fp16 loss scaling)
    arch_loss: Callable  # cross-entropy -> the architecture loss (budget, anchor terms added)
    w_opt: torch.optim.Optimizer


def _loss(net, params, buffers, x, y, samples, autocast):
    with autocast():
        logits = functional_call(net, (params, buffers), (x, samples))
    return F.cross_entropy(logits.float(), y)


def unrolled_arch_grads(net, samples, train_batch, valid_batch, w_opt, lr: float, add_terms, autocast,
                        eps: float = 0.01) -> tuple[list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
    """DARTS' second-order gradient of the validation loss w.r.t. ``net.arch_parameters()``, for the
    architecture `samples` (built from the alphas, so differentiable in them). Returns the gradients,
    the validation cross-entropy and the validation logits. `add_terms(loss) -> loss` adds the
    architecture-only terms (budget, anchor) to the validation loss."""
    arch = net.arch_parameters()
    params = dict(net.named_parameters())
    weights = {n: p for n, p in params.items() if n not in net.ARCH_NAMES}  # as net.weight_parameters()
    buffers = dict(net.named_buffers())
    group = w_opt.param_groups[0]
    mu, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
    x, y = train_batch
    xv, yv = valid_batch

    # one SGD step of the weights on the training batch, as the weight optimizer would take it
    train_loss = _loss(net, weights, buffers, x, y, samples, autocast)
    grads = torch.autograd.grad(train_loss, list(weights.values()), allow_unused=True, retain_graph=True)
    unrolled = {}
    for (n, w), g in zip(weights.items(), grads, strict=True):
        g = torch.zeros_like(w) if g is None else g
        buf = w_opt.state.get(w, {}).get("momentum_buffer")
        step = g + wd * w.detach()
        if buf is not None:
            step = step + mu * buf
        unrolled[n] = (w.detach() - lr * step).requires_grad_()

    # the validation loss at the unrolled weights: direct alpha gradient and v = grad_w' L_val
    with autocast():
        logits = functional_call(net, ({**params, **unrolled}, buffers), (xv, samples))
    ce = F.cross_entropy(logits.float(), yv)
    loss = add_terms(ce)
    out = torch.autograd.grad(loss, [*arch, *unrolled.values()], allow_unused=True, retain_graph=True)
    d_alpha, v = out[: len(arch)], out[len(arch):]
    v = [torch.zeros_like(w) if g is None else g for w, g in zip(unrolled.values(), v, strict=True)]
    norm = torch.sqrt(sum((g.float() ** 2).sum() for g in v))
    R = eps / norm.clamp_min(1e-12)

    # Hessian-vector product by central differences of grad_alpha L_train at w +- R v
    def alpha_grad(sign):
        moved = {n: w.detach() + sign * R * g for (n, w), g in zip(weights.items(), v, strict=True)}
        lt = _loss(net, {**params, **moved}, buffers, x, y, samples, autocast)
        return torch.autograd.grad(lt, arch, allow_unused=True, retain_graph=True)

    gp, gn = alpha_grad(1.0), alpha_grad(-1.0)
    result = []
    for d, p_, n_ in zip(d_alpha, gp, gn, strict=True):
        if d is None and p_ is None:
            result.append(None)
            continue
        d = torch.zeros_like(p_) if d is None else d
        hvp = (p_ - n_) / (2 * R) if p_ is not None else torch.zeros_like(d)
        result.append(d - lr * hvp)
    return result, ce.detach(), logits.detach()


class FirstOrder:
    """The architecture loss's gradient at the current weights (DARTS 1st order, GDAS, PC-DARTS, DrNAS):
    ``grads(step)`` -> (gradients / shards, cross-entropy, logits)."""

    def grads(self, step: ArchStep):
        net, (x, y) = step.net, step.batch
        with step.autocast():
            logits = net(x, step.samples)  # not through DDP: the search reduces these gradients itself
            ce = F.cross_entropy(logits.float(), y)
        loss = step.arch_loss(ce)
        # allow_unused: with fewer than 3 cells there is no normal cell (both alphas exist regardless);
        # retain_graph: the samples' graph from the alphas serves every shard
        grads = torch.autograd.grad(step.scale(loss / step.shards), net.arch_parameters(),
                                    allow_unused=True, retain_graph=step.shards > 1)
        return grads, ce, logits


class SecondOrder:
    """DARTS' second order (:func:`unrolled_arch_grads`) on the shard's training batch, at the weight
    optimizer's current lr (no loss scaling: the config refuses fp16 with it)."""

    def grads(self, step: ArchStep):
        lr = step.w_opt.param_groups[0]["lr"]
        grads, ce, logits = unrolled_arch_grads(step.net, step.samples, step.train_batch, step.batch, step.w_opt, lr,
                                                step.arch_loss, step.autocast)
        return [None if g is None else g / step.shards for g in grads], ce, logits


@dataclass
class ArchOrder(Mechanism):
    """DARTS' second order (quark0/darts cnn/architect.py ``_backward_step_unrolled``) as an option."""

    arch_order: int = opt(1, "architecture gradient: 1 first order, 2 DARTS' second order (one-step unrolled "
                             "weights, finite-difference Hessian-vector product)", choices=[1, 2])
    # DARTS (cnn/train_search.py train(): architect.step before optimizer.zero_grad), P-DARTS, PC-DARTS and
    # DrNAS (train_search.py train(): the architecture update before the weight update) step the
    # architecture first, so the second order unrolls from w_t; GDAS (AutoDL-Projects search_func:
    # "update the weights" before "update the architecture-weight") steps the weights first.
    arch_first: bool = opt(False, "each iteration steps the architecture (on a held-out batch) before the "
                                  "weights (DARTS, P-DARTS, PC-DARTS, DrNAS); off: the weights first (GDAS)")

    def check(self) -> None:
        if self.arch_order == 2 and self.nesterov:
            raise ConfigError("arch_order 2 unrolls DARTS' heavy-ball momentum step; it does not model --nesterov")
        if self.arch_order == 2 and self.amp == "fp16":
            raise ConfigError("arch_order 2 does not run under --amp fp16 (no loss scaling through the "
                              "unrolled step); use bf16 or off")

    def arch_gradient(self):
        """The architecture gradient of this order."""
        return make_arch_gradient(self.arch_order)


def make_arch_gradient(order: int):
    """The architecture gradient of `order` 1 or 2."""
    classes = {1: FirstOrder, 2: SecondOrder}
    if order not in classes:
        raise ValueError(f"arch_order must be 1 or 2, got {order!r}")
    return classes[order]()
