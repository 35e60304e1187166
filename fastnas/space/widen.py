"""Carrying one supernet into the next stage's (DrNAS' progressive learning, xiangning-chen/DrNAS
DARTS-space/train_search.py: ``model.pruning`` then ``model.wider``, net2wider.py): the candidates a
stage keeps keep their weights, and when partial channels widen (K 6 -> 4: each op sees C/4 channels
instead of C/6), every tensor of an op grows by copies of its own channels, one random choice of
source channels per op (net2wider.py ``InChannelWider``/``OutChannelWider``/``BNWider``, applied
consistently along the op so a copied channel carries its source's values). The architecture
parameters keep their values for the kept candidates (utils.py ``prune`` with reset=False), and the
optimizers' per-parameter state goes along the same way (``configure_optimizer``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

_CANDIDATE = re.compile(r"^cells\.(\d+)\.edges\.(\d+)\.candidates\.(\d+)\.(.*)$")


def _widen(t: Tensor, shape: torch.Size, index: Tensor) -> Tensor:
    """`t` grown to `shape` along every dimension that is larger, by the channels `index` names."""
    for dim, (old, new) in enumerate(zip(t.shape, shape, strict=True)):
        if new == old:
            continue
        if new < old or new - old > len(index):
            raise ValueError(f"cannot widen a tensor of shape {tuple(t.shape)} to {tuple(shape)}")
        t = torch.cat([t, t.index_select(dim, index[: new - old].to(t.device))], dim=dim)
    return t


def carry_over(old, new, generator: torch.Generator) -> dict[str, Callable[[Tensor], Tensor]]:
    """Load `old`'s state into `new` (the next stage's supernet: same cells, a subset of each edge's
    candidates, equal or wider partial channels). Returns, per parameter name of `new`, the map that
    takes a tensor shaped like the old parameter (an optimizer's state) to the new one's."""
    if len(old.cells) != len(new.cells):
        raise ValueError(f"carry_over: {len(old.cells)} cells into {len(new.cells)}; the network must stay the same")
    old_state, maps, state = old.state_dict(), {}, {}
    indices: dict[tuple[int, int, int], Tensor] = {}  # one choice of source channels per op
    params = dict(new.named_parameters())
    for name, target in new.state_dict().items():
        m = _CANDIDATE.match(name)
        source, fn = name, None
        if m:
            i, e, k, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
            kind = "reduce" if new.cells[i].reduction else "normal"
            op = new.edge_primitives[kind][e][k]
            k_old = old.edge_primitives[kind][e].index(op)
            source = f"cells.{i}.edges.{e}.candidates.{k_old}.{rest}"
            if old_state[source].shape != target.shape:
                key = (i, e, k)
                if key not in indices:
                    width = _op_width(old_state, f"cells.{i}.edges.{e}.candidates.{k_old}.")
                    grow = max(n - o for n, o in zip(target.shape, old_state[source].shape, strict=True))
                    indices[key] = torch.randint(0, width, (grow,), generator=generator)
                index = indices[key]
                shape = target.shape
                fn = lambda t, shape=shape, index=index: _widen(t, shape, index)  # noqa: E731
        elif name in ("alpha_normal", "alpha_reduce"):
            kind = name.split("_")[1]
            cols = torch.tensor([[old.edge_primitives[kind][e].index(op) for op in ops]
                                 for e, ops in enumerate(new.edge_primitives[kind])])
            fn = lambda t, cols=cols: t.gather(1, cols.to(t.device))  # noqa: E731
        value = old_state[source]
        state[name] = fn(value) if fn is not None else value
        if name in params:
            maps[name] = (source, fn or (lambda t: t))
    new.load_state_dict(state)
    return maps


def _op_width(state: dict, prefix: str) -> int:
    """The channels an op works on (the first dimension of its first tensor)."""
    for name, t in state.items():
        if name.startswith(prefix) and t.dim() >= 1:
            return t.shape[0]
    raise ValueError(f"carry_over: {prefix} has no tensor to read its width from")


def carry_optimizer(old_opt: torch.optim.Optimizer, new_opt: torch.optim.Optimizer, old_net, new_net,
                    maps: dict) -> None:
    """Move each parameter's optimizer state (SGD momentum, Adam moments and step) from `old_opt` to
    `new_opt`, transformed like the parameter (see :func:`carry_over`)."""
    old_params = dict(old_net.named_parameters())
    for name, p in new_net.named_parameters():
        if name not in maps:
            continue
        source, fn = maps[name]
        old_state = old_opt.state.get(old_params[source])
        if not old_state:
            continue
        new_opt.state[p] = {k: (fn(v) if isinstance(v, Tensor) and v.shape == old_params[source].shape else v)
                            for k, v in old_state.items()}


__all__ = ["carry_over", "carry_optimizer"]
