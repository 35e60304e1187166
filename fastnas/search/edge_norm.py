"""PC-DARTS' edge normalization (yuhuixu1993/PC-DARTS, model_search.py ``betas_normal``): a weight beta
per edge, softmax-normalised over each node's incoming edges, scales each edge's output and multiplies
into the derivation's edge scores (see :meth:`fastnas.space.supernet.SuperNet.edge_weights`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.search.mechanism import Mechanism


@dataclass
class EdgeNorm(Mechanism):
    edge_norm: bool = opt(False, "PC-DARTS edge normalization: a softmax weight per incoming edge, also "
                                 "multiplied into the derivation's edge scores")

    def supernet_kwargs(self, stage: int) -> dict:
        return {"edge_norm": self.edge_norm}
