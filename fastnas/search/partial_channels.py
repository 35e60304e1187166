"""PC-DARTS' partial channel connections (yuhuixu1993/PC-DARTS, model_search.py ``MixedOp``): 1/K of
an edge's channels go through its candidate ops, the rest bypass them, then the channels are shuffled
(see :class:`fastnas.space.supernet.MixedOp`). DrNAS uses it with K per stage (6 -> 4)."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.infra.errors import ConfigError
from fastnas.search.mechanism import Mechanism


@dataclass
class PartialChannels(Mechanism):
    partial_channels: list[int] = opt([1], "PC-DARTS: 1/K of the channels go through the candidate ops, the rest "
                                           "bypass them; one K for every stage or one per stage (1: off)", ge=1)

    def stage_partial_channels(self, stage: int) -> int:
        """K of the partial channel connections in `stage` (one value serves every stage)."""
        ks = self.partial_channels
        return ks[0] if len(ks) == 1 else ks[stage]

    def check(self) -> None:
        n = len(self.cells)
        if len(self.partial_channels) not in (1, n):
            raise ConfigError(f"partial_channels has {len(self.partial_channels)} entries: give one K for every "
                              f"stage or one per stage ({n})")
        for s in range(n):
            k = self.stage_partial_channels(s)
            if self.channels[s] % k:
                raise ConfigError(f"partial_channels: stage {s + 1} K={k} must divide its "
                                  f"{self.channels[s]} channels")

    def supernet_kwargs(self, stage: int) -> dict:
        return {"partial_channels": self.stage_partial_channels(stage)}
