"""Moved to :mod:`fastnas.space.sampler`; this alias keeps earlier imports working for one release."""

from fastnas.space.sampler import *  # noqa: F401,F403
