"""Evaluation networks (S3) built from a genotype: the DARTS CIFAR network and the ImageNet-mobile
network, with the auxiliary head and drop-path. Stock PyTorch modules only (compiles, exports).

Parity: DARTS_V2 at C=36, 20 cells, 10 classes has 3,349,342 parameters outside ``auxiliary_head``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastnas.space.genotype import Genotype
from fastnas.space.primitives import FactorizedReduce, Identity, ReLUConvBN, build_op
from fastnas.space.topology import is_reduction


def drop_path(x: Tensor, drop_prob: float | Tensor) -> Tensor:
    """Zero whole samples with probability `drop_prob`, scaling the rest by 1 / (1 - drop_prob).
    `drop_prob` may be a 0-dim tensor on x's device: the cells pass theirs so that a compiled network
    takes the rate as an input (a Python float would be a constant, recompiled for every new rate)."""
    if not isinstance(drop_prob, Tensor) and drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x.div(keep).mul(mask)


class DropPathRate(nn.Module):
    """A cell's drop-path state: `drop_on` (a bool, so a compiled network is traced once without
    drop-path and once with it) and `drop_rate` (a 0-dim buffer that moves with the network and is
    filled in place each epoch: no new graph, no host copy). ``drop_prob`` sets both."""

    def __init__(self):
        super().__init__()
        self.register_buffer("drop_rate", torch.zeros(()), persistent=False)
        self.drop_on = False
        self._drop_prob = 0.0

    @property
    def drop_prob(self) -> float:
        return self._drop_prob

    @drop_prob.setter
    def drop_prob(self, p: float) -> None:
        self._drop_prob = float(p)
        self.drop_on = p > 0
        with torch.no_grad():
            self.drop_rate.fill_(p)


class EvalCell(DropPathRate):
    """A cell of the derived network: two ops per node, summed; drop-path on non-identity ops."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.reduction = reduction
        self.steps = len(edges) // 2
        self.multiplier = len(self.concat)
        self.indices = [idx for _, idx in edges]
        self.ops = nn.ModuleList(
            build_op(name, C, 2 if reduction and idx < 2 else 1, True) for name, idx in edges
        )

    def forward(self, s0: Tensor, s1: Tensor) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for e in (2 * i, 2 * i + 1):
                op = self.ops[e]
                h = op(states[self.indices[e]])
                if self.training and self.drop_on and not isinstance(op, Identity):
                    h = drop_path(h, self.drop_rate)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class FixedReductionCell(DropPathRate):
    """GDAS' fixed reduction cell ("FRC", used for its 2.82% CIFAR-10 result; the structure of
    D-X-Y/AutoDL-Projects' ``GDAS_Reduction_Cell``): from each preprocessed input, a factorised
    1x3 / 3x1 stride-2 grouped convolution branch (groups 8) and a 3x3 stride-2 max pool, the four
    concatenated (multiplier 4). `affine=False` is its search-network form."""

    multiplier = 4
    reduction = True

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction_prev: bool, affine: bool = True):
        super().__init__()
        if C % 8:
            raise ValueError(f"gdas_frc: the reduction cell's channels ({C}) must be a multiple of 8 "
                             "(its convolutions have 8 groups)")
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine)

        def conv_branch():
            return nn.Sequential(
                nn.ReLU(inplace=False),
                # AutoDL-Projects cell_operations.py GDAS_Reduction_Cell: bias=not affine (the search
                # network's non-affine BNs leave the convolutions their bias)
                nn.Conv2d(C, C, (1, 3), stride=(1, 2), padding=(0, 1), groups=8, bias=not affine),
                nn.Conv2d(C, C, (3, 1), stride=(2, 1), padding=(1, 0), groups=8, bias=not affine),
                nn.BatchNorm2d(C, affine=affine),
                nn.ReLU(inplace=False),
                nn.Conv2d(C, C, 1, bias=not affine),
                nn.BatchNorm2d(C, affine=affine),
            )

        def pool_branch():
            return nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.BatchNorm2d(C, affine=affine))

        self.convs = nn.ModuleList([conv_branch(), conv_branch()])
        self.pools = nn.ModuleList([pool_branch(), pool_branch()])

    def forward(self, s0: Tensor, s1: Tensor, *_unused) -> Tensor:
        s0, s1 = self.preprocess0(s0), self.preprocess1(s1)
        outs = [self.convs[0](s0), self.convs[1](s1), self.pools[0](s0), self.pools[1](s1)]
        if self.training and self.drop_on:
            outs = [drop_path(o, self.drop_rate) for o in outs]
        return torch.cat(outs, dim=1)


def make_cell(genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
              reduction_prev: bool) -> nn.Module:
    """The evaluation cell at one position: the genotype's cell, or its fixed reduction cell."""
    if reduction and genotype.reduce_cell == "gdas_frc":
        return FixedReductionCell(C_prev_prev, C_prev, C, reduction_prev, affine=True)
    return EvalCell(genotype, C_prev_prev, C_prev, C, reduction, reduction_prev)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS auxiliary classifier at 8x8 input."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """DARTS auxiliary classifier at 14x14 input (no BN after the 2x2 conv, as in the paper)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _Network(nn.Module):
    def _build_cells(self, genotype, layers, C_prev_prev, C_prev, C_curr, reduction_prev, auxiliary,
                     num_classes, head_cls):
        self.cells = nn.ModuleList()
        C_aux = None
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            cell = make_cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        self.aux_index = 2 * layers // 3
        self.auxiliary_head = head_cls(C_aux, num_classes) if auxiliary else None
        return C_prev

    @property
    def drop_path_prob(self) -> float:
        return self._drop_path

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p}")
        self._drop_path = float(p)
        for cell in self.cells:
            cell.drop_prob = float(p)

    def _run(self, s0: Tensor, s1: Tensor):
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if self.training:
            return logits, aux
        return logits

    def num_parameters(self, include_auxiliary: bool = False) -> int:
        """Parameter count, without the auxiliary head unless asked (as the papers report it)."""
        return sum(
            p.numel() for n, p in self.named_parameters()
            if include_auxiliary or not n.startswith("auxiliary_head.")
        )


class EvalNetwork(_Network):
    """The DARTS CIFAR network for a genotype.

    In training mode it returns ``(logits, aux_logits)`` (``aux_logits`` is None without the
    auxiliary head); in eval mode ``logits``. ``drop_path_prob`` (settable per epoch) applies
    drop-path to every non-identity op during training.
    """

    def __init__(self, genotype: Genotype | str, channels: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = True, drop_path: float = 0.0, *, stem_multiplier: int = 3,
                 in_channels: int = 3):
        super().__init__()
        if isinstance(genotype, str):  # a published name (e.g. "PDARTS"), a DARTS string or a file
            genotype = Genotype.load(genotype)
        genotype.validate()
        if auxiliary and layers < 2:
            raise ValueError(f"layers={layers} leaves no cell for the auxiliary head; use layers >= 2 or "
                             "auxiliary=False")
        self.genotype = genotype
        C_curr = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev = self._build_cells(genotype, layers, C_curr, C_curr, channels, False, auxiliary,
                                   num_classes, AuxiliaryHeadCIFAR)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.drop_path_prob = drop_path

    def forward(self, x: Tensor):
        s = self.stem(x)
        return self._run(s, s)


class EvalNetworkImageNet(_Network):
    """The DARTS ImageNet-mobile network (224x224 input, 14 cells, C=48) for transfer."""

    def __init__(self, genotype: Genotype | str, channels: int = 48, layers: int = 14, num_classes: int = 1000,
                 auxiliary: bool = True, drop_path: float = 0.0, *, in_channels: int = 3):
        super().__init__()
        if isinstance(genotype, str):
            genotype = Genotype.load(genotype)
        genotype.validate()
        self.genotype = genotype
        C = channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_prev = self._build_cells(genotype, layers, C, C, C, True, auxiliary, num_classes,
                                   AuxiliaryHeadImageNet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.drop_path_prob = drop_path

    def forward(self, x: Tensor):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run(s0, s1)


def activation_bytes(channels: int, layers: int, side: int, batch: int, *, ops_per_edge: int = 1, edges: int = 8,
                     stem_multiplier: int = 3, bytes_per_value: int = 4) -> int:
    """A lower bound on the activations one training step keeps for backward, for a DARTS network of
    `layers` cells on `side` x `side` images (a search's supernet: `edges` 14 and `ops_per_edge`
    candidates). Counted as two saved tensors per op and six per cell (preprocessing, the concatenation)
    at each cell's channels and resolution, closed-form in `layers`, so a config can be refused before
    a network too large for the machine is built (or a loop over its cells hangs)."""
    r1, r2 = layers // 3, 2 * layers // 3
    per_cell = 2 * edges * ops_per_edge + 6
    # cells before the first reduction; from it up to the second; from the second on
    segments = ((r1, channels, side), (r2 - r1, 2 * channels, -(-side // 2)),
                (layers - r2, 4 * channels, -(-side // 4)))
    values = stem_multiplier * channels * side * side
    values += sum(n * per_cell * c * h * h for n, c, h in segments)
    return values * batch * bytes_per_value
