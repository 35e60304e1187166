"""The supernet's form where the methods' code differs from DARTS': GDAS' DARTS-space network
(AutoDL-Projects search_model_gdas_nasnet.py, cell_operations.py) puts BN + ReLU before the global
pooling, has no BN after its pooling candidates, and derives per node the two strongest (op, input)
pairs rather than DARTS' two strongest edges. DrNAS' (DARTS-space model_search.py) has no BN after
pooling either (commented out) and derives from softmax(alpha), not from its Dirichlet's mean."""

from __future__ import annotations

from dataclasses import dataclass

from fastnas.infra.config import opt
from fastnas.search.mechanism import Mechanism
from fastnas.space.derive import DERIVATIONS


@dataclass
class NetworkForm(Mechanism):
    pool_bn: bool = opt(True, "a non-affine BN after each pooling candidate (DARTS' search space; GDAS: off)")
    final_bn_relu: bool = opt(False, "BN + ReLU between the last cell and the global pooling (GDAS)")
    derivation: str = opt("darts", "genotype rule: darts (per node the 2 strongest edges, each its best op) or "
                                   "gdas (per node the 2 strongest (op, input) pairs: an input may be taken "
                                   "twice)", choices=list(DERIVATIONS))

    derive_from: str = opt("sampler", "what derivation ranks: sampler (its probabilities: the Dirichlet mean for "
                                      "dirichlet) or softmax (softmax of alpha, as DrNAS' genotype())",
                           choices=["sampler", "softmax"])

    def supernet_kwargs(self, stage: int) -> dict:
        return {"pool_bn": self.pool_bn, "final_bn_relu": self.final_bn_relu, "derivation": self.derivation,
                "derive_softmax": self.derive_from == "softmax"}
