"""Moved to :mod:`fastnas.space.supernet`; this alias keeps earlier imports working for one release."""

from fastnas.space.derive import cell_stats, derive_genotype, genotypes_by_skip_count, prune_primitives  # noqa: F401,E402
from fastnas.space.supernet import *  # noqa: F401,F403
