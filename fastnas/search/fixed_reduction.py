"""GDAS' fixed reduction cell (D-X-Y/AutoDL-Projects, the FRC setting of its best CIFAR-10 result): a
hand-designed reduction cell instead of a searched one, in the supernet, the genotype
(``reduce_cell``), the retraining, the costs and the study's random cells."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.search.mechanism import Mechanism
from fastnas.space.genotype import FIXED_REDUCTION_CELLS


@dataclass
class FixedReduction(Mechanism):
    fixed_reduction: str | None = opt(None, "a hand-designed reduction cell instead of a searched one: gdas_frc "
                                            "(GDAS' FRC, the setting of its best CIFAR-10 result)")

    def check(self) -> None:
        if self.fixed_reduction is None:
            return
        if self.fixed_reduction not in FIXED_REDUCTION_CELLS:
            raise ConfigError(f"fixed_reduction must be one of {', '.join(FIXED_REDUCTION_CELLS)}, "
                              f"got {self.fixed_reduction!r}")
        bad = [c for c in self.channels if (2 * c) % 8]
        if bad:
            raise ConfigError(f"fixed_reduction {self.fixed_reduction}: channels {bad} give reduction cells "
                              "whose width is not a multiple of 8 (its grouped convolutions need it)")

    def supernet_kwargs(self, stage: int) -> dict:
        return {"fixed_reduction": self.fixed_reduction}
