"""Moved to :mod:`fastnas.space.genotype`; this alias keeps earlier imports working for one release."""

from fastnas.space.genotype import *  # noqa: F401,F403
