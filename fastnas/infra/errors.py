"""The errors fastnas reports as one line (``error: ...``, exit code 2) instead of a traceback.

Every error a user can cause (an option, a file, the data, a run directory) derives from
:class:`FastnasError`; the command-line guard catches that one base class.
"""

from __future__ import annotations


class FastnasError(ValueError):
    """Bad input or an unusable run: said in one line, never a traceback."""


class ConfigError(FastnasError):
    """A configuration that cannot run, with the offending option named."""


class RunError(FastnasError):
    """A run directory or checkpoint that cannot be used."""


class DataError(FastnasError):
    """A dataset that is missing, malformed or unreadable (the message names the folder or file)."""


class GenotypeError(FastnasError):
    """A genotype that cannot be parsed or is not a valid DARTS cell pair."""
