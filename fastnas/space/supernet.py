"""The search supernet (S1): DARTS search cells over per-edge candidate sets, architecture
parameters, skip-connection dropout, and genotype derivation and pruning.

With 8 primitives, C=16 and 8 layers it is the DARTS search network weight for weight. Differences
that matter for the search: every edge has its own candidate list (a stage prunes edges
independently), the per-edge weights come from a :mod:`fastnas.space.sampler` sample, and a hard sample
(``gumbel-hard``) runs only the sampled op of each edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastnas import ops
from fastnas.space.derive import DERIVATIONS
from fastnas.space.genotype import Genotype
from fastnas.space.network import FixedReductionCell
from fastnas.space.primitives import PRIMITIVES, FactorizedReduce, ReLUConvBN, build_op, is_primitive
from fastnas.space.sampler import Sample, Sampler
from fastnas.space.topology import CELL_TYPES, edges, genotype_edges, is_reduction, node_edges, num_edges


def _combine(weights: Tensor, outs: list[Tensor]) -> Tensor:
    # Under autocast the candidates can disagree in dtype (identity vs conv output): one dtype for all.
    dtypes = {o.dtype for o in outs}
    if len(dtypes) > 1:
        device_type = outs[0].device.type
        if torch.is_autocast_enabled(device_type):
            target = torch.get_autocast_dtype(device_type)
        else:
            target = outs[0].dtype
            for o in outs[1:]:
                target = torch.promote_types(target, o.dtype)
        outs = [o.to(target) for o in outs]
    dtype = outs[0].dtype
    if weights.dtype != dtype and not (weights.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16)):
        weights = weights.to(dtype)
    return ops.weighted_sum(weights, outs)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave `groups` equal channel groups (ShuffleNet; PC-DARTS after its partial-channel concat)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """One edge: its candidate ops, combined by the sample's weights.

    With ``partial_channels=K > 1`` (PC-DARTS) only the first C/K channels go through the candidates;
    the rest bypass them (max-pooled 2x2 on reduction edges), are concatenated back, and the channels
    are shuffled in K groups so the next edge sees other channels.

    Soft samples: ``sum_k w_k * op_k(x)`` through the fused :func:`fastnas.ops.weighted_sum`.
    Hard samples (GDAS): only op ``i`` runs and the output is ``w_i * op_i(x)`` (GDAS' DARTS-space
    MixedOp.forward_gdas, AutoDL-Projects search_cells.py); the one-hot w makes that op_i(x) in value,
    and the straight-through gradient reaches the architecture through ``w_i`` alone (the softmax then
    spreads it over every candidate's alpha). With ``score_all`` the other candidates run too, without
    autograd, and enter as ``w_k * op_k(x)``: the same value, and ``dL/dw_k = <dL/dy, op_k(x)>`` for
    every k (nothing flows back through them: their w_k is 0).
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], partial_channels: int = 1,
                 pool_bn: bool = True):
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ValueError(f"MixedOp: partial_channels={partial_channels} must be >= 1 and divide C={C}")
        self.primitives = list(primitives)
        self.stride = stride
        self.skip_dropout = 0.0
        self.k = partial_channels
        Ck = C // partial_channels
        self.candidates = nn.ModuleList()
        for name in self.primitives:
            op = build_op(name, Ck, stride, affine=False)
            if "pool" in name and pool_bn:  # DARTS search space: pooling is followed by a non-affine BN
                # (GDAS' DARTS-space cells do not: AutoDL-Projects cell_operations.py POOLING)
                op = nn.Sequential(op, nn.BatchNorm2d(Ck, affine=False))
            self.candidates.append(op)
        # P-DARTS: dropout on the (stride-1) identity, its rate raised stage by stage.
        self._skip = [k for k, n in enumerate(self.primitives) if n == "skip_connect" and stride == 1]
        self.runner = None  # see SuperNet.set_op_runner

    def run(self, k: int, x: Tensor) -> Tensor:
        op = self.candidates[k]
        y = op(x) if self.runner is None else self.runner(op, x)
        if self.skip_dropout > 0 and k in self._skip:
            y = F.dropout(y, self.skip_dropout, self.training)
        return y

    def forward(self, x: Tensor, weights: Tensor, index: int | None = None, score_all: bool = False) -> Tensor:
        if self.k > 1:
            cut = x.shape[1] // self.k
            x, bypass = x[:, :cut], x[:, cut:]
        if index is not None and score_all:
            outs = []
            for k in range(len(self.candidates)):
                if k == index:
                    outs.append(self.run(k, x))
                else:
                    with torch.no_grad():
                        outs.append(self.run(k, x))
            y = _combine(weights, outs)
        elif index is not None:  # GDAS' DARTS-space MixedOp.forward_gdas: op_i(x) * w_i, nothing else
            y = self.run(index, x) * weights[index]
        else:
            y = _combine(weights, [self.run(k, x) for k in range(len(self.candidates))])
        if self.k == 1:
            return y
        if self.stride > 1:
            bypass = F.max_pool2d(bypass, 2, 2)
        return channel_shuffle(torch.cat([y, bypass], dim=1), self.k)


class SearchCell(nn.Module):
    """DARTS search cell: 2 preprocessed inputs, `steps` nodes each summing all earlier states."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, edge_primitives,
                 partial_channels: int = 1, pool_bn: bool = True):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.full_channels = partial_channels == 1  # every edge's op sees all channels (see _fuses)
        self.edges = nn.ModuleList()
        for e, _, j in edges(steps):
            stride = 2 if reduction and j < 2 else 1
            self.edges.append(MixedOp(C, stride, edge_primitives[e], partial_channels, pool_bn))

    def forward(self, s0: Tensor, s1: Tensor, sample: Sample, edge_weights: Tensor | None = None) -> Tensor:
        """`edge_weights` (E,): PC-DARTS' edge normalization, each edge's output scaled by its weight."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        hard = sample.index_list if sample.hard else None
        if hard is not None and self._fuses(sample):
            return self._forward_hard_fused(states, sample, edge_weights)
        offset = 0
        for _ in range(self.steps):
            s = None
            for j, h in enumerate(states):
                e = offset + j
                if hard is not None and hard[e] < 0:  # an edge the derived cell drops
                    continue
                y = self.edges[e](h, sample.weights[e], None if hard is None else hard[e], sample.score_all)
                if edge_weights is not None:
                    y = y * edge_weights[e].to(y.dtype)
                s = y if s is None else s + y
            if s is None:
                raise ValueError("SearchCell: a node has no incoming edge in this sample")
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)

    def _fuses(self, sample: Sample) -> bool:
        """A hard sample that runs one op on every edge, each weighted as it is (GDAS' form, no
        score_all), on full channels: its nodes can be summed by one fused weighted sum each."""
        return (self.full_channels and not sample.score_all and sample.index is not None
                and sample.index.device == sample.weights.device and min(sample.index_list) >= 0)

    def _forward_hard_fused(self, states: list[Tensor], sample: Sample, edge_weights: Tensor | None) -> Tensor:
        """GDAS' node, ``sum_e w_e[i_e] * op_{i_e}(h_e)`` over its incoming edges (AutoDL-Projects
        search_cells.py forward_gdas, summed per node), as one :func:`fastnas.ops.weighted_sum` per node:
        the sampled weights are gathered once per cell instead of two selects, a multiply and an add per
        edge (about 11 operator calls an edge, forward and backward, each a launch on a GPU). The value
        is the per-edge form's (the hard weights are exactly 1), the gradients the same sums."""
        w = sample.weights.gather(-1, sample.index.view(-1, 1)).view(-1)
        if edge_weights is not None:
            w = w * edge_weights.to(w.dtype)
        offset = 0
        for _ in range(self.steps):
            n = len(states)
            ys = [self.edges[offset + j].run(sample.index_list[offset + j], h) for j, h in enumerate(states)]
            states.append(_combine(w.narrow(0, offset, n), ys))
            offset += n
        return torch.cat(states[-self.multiplier :], dim=1)


def _indices(samples: dict[str, Sample]) -> Tensor:
    """A hard sample's indices, normal cell then reduction cell, in one tensor (one copy to the host)."""
    return torch.cat([samples["normal"].index, samples["reduce"].index])


class SuperNet(nn.Module):
    """The search network.

    Args:
        channels: initial channels C (the stem has ``stem_multiplier * C``).
        layers: cells; reduction cells at layers//3 and 2*layers//3.
        primitives: candidate ops of every edge (default: the 8 DARTS ones), unless
            ``edge_primitives`` gives each edge its own list: ``{"normal": [[...] x 14], "reduce": ...}``
            with the same number of candidates on every edge of a cell type.
        skip_dropout: dropout rate on skip connections (P-DARTS), see :meth:`set_skip_dropout`.
        partial_channels: K of PC-DARTS' partial channel connections (1: off), see :class:`MixedOp`.
        edge_norm: PC-DARTS' edge normalization: a parameter beta per edge, softmax-normalised over
            each node's incoming edges, scales each edge's output and multiplies into the derivation's
            edge scores.

    ``arch_parameters()`` are ``alpha_normal`` and ``alpha_reduce`` (one row per edge, one column per
    candidate, init 1e-3 * N(0, 1)); ``weight_parameters()`` is everything else, so the architecture
    never ends up in the weight optimizer.
    """

    def __init__(
        self,
        channels: int = 16,
        layers: int = 8,
        num_classes: int = 10,
        primitives: Sequence[str] = PRIMITIVES,
        *,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        edge_primitives: dict[str, list[list[str]]] | None = None,
        skip_dropout: float = 0.0,
        in_channels: int = 3,
        partial_channels: int = 1,
        edge_norm: bool = False,
        fixed_reduction: str | None = None,
        pool_bn: bool = True,
        final_bn_relu: bool = False,
        derivation: str = "darts",
        derive_softmax: bool = False,
    ):
        super().__init__()
        if channels < 1 or layers < 1 or num_classes < 1 or steps < 1:
            raise ValueError(
                f"SuperNet: channels, layers, num_classes and steps must be >= 1, got "
                f"{channels}, {layers}, {num_classes}, {steps}"
            )
        if not 1 <= multiplier <= steps:
            raise ValueError(f"SuperNet: multiplier must be in 1..steps={steps}, got {multiplier}")
        if partial_channels < 1 or channels % partial_channels:
            raise ValueError(f"SuperNet: partial_channels={partial_channels} must be >= 1 and divide "
                             f"channels={channels}")
        E = num_edges(steps)
        if edge_primitives is None:
            edge_primitives = {cell: [list(primitives)] * E for cell in CELL_TYPES}
        self.edge_primitives = _check_edge_primitives(edge_primitives, E)
        self.channels, self.layers, self.num_classes = channels, layers, num_classes
        self.steps, self.multiplier, self.stem_multiplier = steps, multiplier, stem_multiplier

        C_curr = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            cell_type = "reduce" if reduction else "normal"
            if reduction and fixed_reduction:  # GDAS-FRC: the reduction cell is not searched
                cell = FixedReductionCell(C_prev_prev, C_prev, C_curr, reduction_prev, affine=False)
            else:
                cell = SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                  self.edge_primitives[cell_type], partial_channels, pool_bn)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        # GDAS' network (AutoDL-Projects search_model_gdas_nasnet.py ``lastact``): BN + ReLU before pooling
        self.final_act = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU()) if final_bn_relu else nn.Identity()
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        if derivation not in DERIVATIONS:
            raise ValueError(f"SuperNet: derivation must be one of {', '.join(DERIVATIONS)}, got {derivation!r}")
        self.derivation, self.derive_softmax = derivation, derive_softmax
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(E, len(self.edge_primitives["normal"][0])))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(E, len(self.edge_primitives["reduce"][0])))
        self.partial_channels, self.edge_norm, self.fixed_reduction = partial_channels, edge_norm, fixed_reduction
        if edge_norm:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(E))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(E))
        self.set_skip_dropout(skip_dropout)

    # ----------------------------------------------------------------- parameters
    ARCH_NAMES = ("alpha_normal", "alpha_reduce", "beta_normal", "beta_reduce")

    def arch_parameters(self) -> list[nn.Parameter]:
        """The alphas, and the edge-normalization betas when `edge_norm`."""
        extra = [self.beta_normal, self.beta_reduce] if self.edge_norm else []
        return [self.alpha_normal, self.alpha_reduce, *extra]

    def named_arch_parameters(self) -> dict[str, nn.Parameter]:
        """The op alphas per cell type (what samplers draw from)."""
        return {"normal": self.alpha_normal, "reduce": self.alpha_reduce}

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in self.ARCH_NAMES]

    def edge_weights(self) -> dict[str, Tensor] | None:
        """PC-DARTS edge normalization: per cell type (E,), softmax of beta over each node's incoming
        edges (None without `edge_norm`)."""
        if not self.edge_norm:
            return None
        out = {}
        for cell, beta in (("normal", self.beta_normal), ("reduce", self.beta_reduce)):
            out[cell] = torch.cat([F.softmax(beta[rng.start:rng.stop], dim=-1) for rng in node_edges(self.steps)])
        return out

    def set_op_runner(self, runner) -> None:
        """Run every candidate op as ``runner(op, x)`` instead of ``op(x)`` (None: directly); the search's
        per-op CUDA graphs (:class:`fastnas.infra.graphs.OpGraphs`) come in here."""
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.runner = runner

    def set_skip_dropout(self, p: float) -> None:
        """Dropout rate on every stride-1 skip connection (0 disables it)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"skip dropout must be in [0, 1), got {p}")
        self.skip_dropout = float(p)
        for m in self.modules():
            if isinstance(m, MixedOp):
                m.skip_dropout = float(p)

    # ----------------------------------------------------------------- forward
    def sample(self, sampler: Sampler, host_index: bool = True) -> dict[str, Sample]:
        """Draw per-edge weights for both cell types. A hard sample's indices are copied to the host
        (one transfer, a sync on a GPU: the forward picks its ops from them) unless `host_index` is off
        (a static architecture step runs every candidate)."""
        samples = self._draw(sampler)
        if sampler.hard and host_index:
            self._set_index_lists(samples, _indices(samples).tolist())
        return samples

    def _draw(self, sampler: Sampler) -> dict[str, Sample]:
        return {cell: sampler(alpha) for cell, alpha in self.named_arch_parameters().items()}

    def _set_index_lists(self, samples: dict[str, Sample], both: list[int]) -> None:
        E = self.alpha_normal.shape[0]
        samples["normal"].index_list, samples["reduce"].index_list = both[:E], both[E:]

    def sample_ahead(self, sampler: Sampler) -> Callable[[], dict[str, Sample]]:
        """Draw a hard sample now and start copying its indices to the host; the returned function waits
        for that copy only (not for work queued after it) and gives what :meth:`sample` would have given.
        On a GPU the copy goes to pinned memory behind an event, so a draw made before a step's kernels
        are queued is on the host by the time the step after it needs it. On a CPU it is :meth:`sample`
        split in two."""
        samples = self._draw(sampler)
        index = _indices(samples)
        done = None
        if index.is_cuda:
            host = torch.empty(index.shape, dtype=index.dtype, pin_memory=True)
            host.copy_(index, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(index.device))
        else:
            host = index

        def result() -> dict[str, Sample]:
            if done is not None:
                done.synchronize()
            self._set_index_lists(samples, host.tolist())
            return samples

        return result

    def forward(self, x: Tensor, samples: dict[str, Sample] | None = None, edge_weights: bool = True) -> Tensor:
        """Logits for `x` under `samples` (default: softmax of the architecture parameters);
        `edge_weights=False` leaves out edge normalization (a derived cell has none)."""
        if samples is None:
            samples = {cell: Sample(F.softmax(a, dim=-1)) for cell, a in self.named_arch_parameters().items()}
        ew = self.edge_weights() if edge_weights else None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, samples[kind], None if ew is None else ew[kind])
        out = self.global_pooling(self.final_act(s1))
        return self.classifier(out.flatten(1))

    def derived_samples(self, genotype: Genotype) -> dict[str, Sample]:
        """Hard samples that run `genotype` inside this supernet: per kept edge its chosen op (weight 1),
        every other edge dropped. The supernet's own weights then score the derived cell."""
        samples = {}
        for cell in CELL_TYPES:
            names = self.edge_primitives[cell]
            alpha = self.named_arch_parameters()[cell]
            weights = torch.zeros_like(alpha, dtype=torch.float32)
            index = [-1] * len(names)
            pairs = getattr(genotype, cell)
            if cell == "reduce" and self.fixed_reduction:  # the fixed cell ignores its sample
                samples[cell] = Sample(weights, torch.tensor(index), hard=True, index_list=index)
                continue
            if len(pairs) != 2 * self.steps:
                raise ValueError(f"derived_samples: {cell} cell of the genotype has {len(pairs)} edges, "
                                 f"{2 * self.steps} expected")
            chosen = genotype_edges(pairs, self.steps)
            for e, op in chosen:
                if op not in names[e]:
                    raise ValueError(f"derived_samples: {op!r} is not a candidate of {cell} edge {e}")
                index[e] = names[e].index(op)
                weights[e, index[e]] = 1.0
            if len({e for e, _ in chosen}) < len(chosen):
                # GDAS' rule can take two ops on one edge: a soft sample sums both (the others weigh 0)
                samples[cell] = Sample(weights, torch.tensor(index), hard=False)
            else:
                samples[cell] = Sample(weights, torch.tensor(index), hard=True, index_list=index)
        return samples

    # ----------------------------------------------------------------- derivation
    def probabilities(self, sampler: Sampler | None = None) -> dict[str, Tensor]:
        """Per-edge op probabilities (softmax of alpha, or the sampler's notion of them)."""
        fn = sampler.probabilities if sampler is not None else (lambda a: F.softmax(a.detach().float(), -1))
        return {cell: fn(a).cpu() for cell, a in self.named_arch_parameters().items()}

    def genotype(self, max_skip_normal: int | None = 2, sampler: Sampler | None = None) -> Genotype:
        """The derived genotype (see :func:`fastnas.space.derive.derive_genotype`)."""
        from fastnas.space.derive import derive_genotype  # derivation reads the supernet: same layer

        return derive_genotype(self, max_skip_normal=max_skip_normal, sampler=sampler)


def _check_edge_primitives(edge_primitives, E: int) -> dict[str, list[list[str]]]:
    out = {}
    for cell in CELL_TYPES:
        if cell not in edge_primitives:
            raise ValueError(f"edge_primitives: missing cell type {cell!r}")
        lists = [list(p) for p in edge_primitives[cell]]
        if len(lists) != E:
            raise ValueError(f"edge_primitives[{cell!r}]: {E} edges expected, got {len(lists)}")
        sizes = {len(p) for p in lists}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"edge_primitives[{cell!r}]: every edge needs the same, non-zero number of ops")
        for e, names in enumerate(lists):
            for name in names:
                if not is_primitive(name):
                    raise ValueError(f"edge_primitives[{cell!r}][{e}]: unknown primitive {name!r}")
            if len(set(names)) != len(names):
                raise ValueError(f"edge_primitives[{cell!r}][{e}]: duplicate ops {names}")
        out[cell] = lists
    return out
