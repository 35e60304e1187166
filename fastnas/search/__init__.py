"""S2, the progressive sampled search: its options (:mod:`.options`, one group per concern, one module
per method mechanism), the presets (:mod:`.presets`), the architecture gradient (:mod:`.arch_grad`),
the loss terms (:mod:`.budget`, :mod:`.anchor`), the :class:`Searcher` loop (:mod:`.searcher`) and what a
search reports (:mod:`.results`).
``fastnas search`` (``python -m fastnas.search``) is its command line."""

from fastnas.search.options import MECHANISMS, SearchConfig, upgrade_saved
from fastnas.search.presets import PRESETS
from fastnas.search.results import evaluate_derived, mean_op_probabilities, write_results
from fastnas.search.searcher import Searcher, skip_dropout_rate, temperature_schedule

__all__ = ["SearchConfig", "PRESETS", "MECHANISMS", "Searcher", "evaluate_derived", "mean_op_probabilities",
           "skip_dropout_rate", "temperature_schedule", "write_results", "upgrade_saved"]
