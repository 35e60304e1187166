"""S1, the search space: candidate ops (:mod:`.primitives`), the cell topology defined once
(:mod:`.topology`), genotypes (:mod:`.genotype`), evaluation networks (:mod:`.network`), samplers
(:mod:`.sampler`), the supernet (:mod:`.supernet`) and derivation and pruning (:mod:`.derive`)."""
