"""DrNAS' anchor regulariser (xiangning-chen/DrNAS, DARTS-space/model_search.py ``_get_kl_reg``,
``reg_scale`` 1e-3): ``scale * sum_edges KL(Dir(elu(alpha) + 1) || Dir(1))`` over both cell types,
added to the architecture loss. It pulls the concentrations towards the uniform prior so the Dirichlet
does not become confident too early."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.search.mechanism import Mechanism


class DirichletAnchor:
    """DrNAS' KL anchor towards the Dirichlet(1) prior, added to the architecture loss."""

    def __init__(self, scale: float):
        self.scale = float(scale)

    def value(self, net) -> torch.Tensor:
        total = 0.0
        for alpha in net.named_arch_parameters().values():
            a = alpha if alpha.dtype == torch.float64 else alpha.float()
            # elu + 1 > 0 by construction: no argument validation (it reads a boolean back: a GPU sync)
            q = torch.distributions.Dirichlet(F.elu(a) + 1, validate_args=False)
            p = torch.distributions.Dirichlet(torch.ones_like(a), validate_args=False)
            total = total + torch.distributions.kl_divergence(q, p).sum()
        return total

    def __call__(self, loss, net, sampler):
        return loss + self.scale * self.value(net)


def arch_terms(cfg) -> list:
    """The loss terms the search's config asks for beyond the budget penalty."""
    return [DirichletAnchor(cfg.dirichlet_anchor)] if cfg.dirichlet_anchor > 0 else []


@dataclass
class Anchor(Mechanism):
    dirichlet_anchor: float = opt(0.0, "DrNAS: weight of the KL of the Dirichlet to its Dirichlet(1) prior in "
                                       "the architecture loss (dirichlet sampler only; 0: off)", ge=0)

    def check(self) -> None:
        if self.dirichlet_anchor > 0 and self.sampler != "dirichlet":
            raise ConfigError(f"dirichlet_anchor is DrNAS' regulariser of the dirichlet sampler, not {self.sampler}")
        # DrNAS (model_search.py reg_type, architect.py): 'l2' is Adam's weight decay alone, 'kl' the KL
        # term alone with weight decay 0; never both
        if self.dirichlet_anchor > 0 and self.arch_weight_decay > 0:
            raise ConfigError(f"dirichlet_anchor={self.dirichlet_anchor} with arch_weight_decay="
                              f"{self.arch_weight_decay}: DrNAS regularises by one or the other (its reg_type kl "
                              "sets the weight decay to 0); pass --arch-weight-decay 0")

    def arch_terms(self) -> list:
        return [DirichletAnchor(self.dirichlet_anchor)] if self.dirichlet_anchor > 0 else []
