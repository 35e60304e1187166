"""Moved to :mod:`fastnas.space.network`; this alias keeps earlier imports working for one release."""

from fastnas.space.network import *  # noqa: F401,F403
