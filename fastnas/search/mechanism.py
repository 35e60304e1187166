"""What a method variant is to the search: an option group (its own dataclass fields, bounds and
``check()``) that also says how it changes the loop, through these hooks:

- ``supernet_kwargs(stage)``: arguments it adds to the stage's :class:`~fastnas.space.supernet.SuperNet`;
- ``arch_terms()``: terms it adds to the architecture loss (``term(loss, net, sampler) -> loss``).

:class:`~fastnas.search.options.SearchConfig` inherits every mechanism, so ``cfg`` is an instance of
each, and the searcher asks all of them (:data:`fastnas.search.options.MECHANISMS`). A new method is
a module with its mechanism, a base of SearchConfig, and a preset entry.
"""

from __future__ import annotations


class Mechanism:
    """Base of the mechanisms: hooks that change nothing."""

    def supernet_kwargs(self, stage: int) -> dict:
        return {}

    def arch_terms(self) -> list:
        return []
