"""Differentiable samplers (S1): architecture parameters -> per-edge weights for one forward pass.

=============  ===========================================================================  =========
name           weights per edge                                                              ops run
=============  ===========================================================================  =========
gumbel-hard    one-hot sample of softmax(alpha); straight-through soft gradient (GDAS)      sampled [#]_
gumbel-soft    softmax((alpha + g) / tau), g ~ Gumbel(0, 1) (SNAS)                          all
softmax        softmax(alpha / tau), deterministic (DARTS; tau = 1 unless asked)             all
dirichlet      w ~ Dirichlet(elu(alpha) + 1), reparameterized (DrNAS; no temperature)        all
=============  ===========================================================================  =========

.. [#] In the weight step. In the architecture step, ``straight_through="all"`` (the default) also
   runs every other candidate, forward only, and weights it by its 0 in the one-hot sample: the value
   is still the sampled network's, and each candidate's weight gets the inner product of the upstream
   gradient with that candidate's own output, the straight-through Gumbel-softmax estimator as Jang
   et al. (2017) define it. Nothing flows back through the unsampled candidates (their weight is 0),
   so they cost a forward pass and keep only their outputs. ``straight_through="sampled"`` is GDAS'
   shortcut: only the sampled op runs, and every other weight gets the upstream gradient's sum, which
   says nothing about the op it stands for (it cannot tell a convolution from noise in the
   known-answer space {sep_conv_3x3, noise}; benchmarks/README.md). Under ``--cuda-graphs`` the
   architecture step takes the static form of ``"all"`` (``for_arch_step(static=True)``): the same
   value and gradient, every candidate under autograd, so the ops run do not depend on the sample.

The Gumbel samplers follow a :class:`TemperatureSchedule` (linear 10 -> 0.1 by default, as GDAS);
softmax uses tau = 1 (DARTS, P-DARTS) unless a temperature is asked for, and Dirichlet takes none
(``Sampler.temperature`` says which). Temperatures can also be set per step with
:meth:`Sampler.set_temperature`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fastnas import ops

SAMPLERS = ("gumbel-hard", "gumbel-soft", "softmax", "dirichlet")


@dataclass
class Sample:
    """Per-edge weights (E, K) of one cell type; `index` (E,) the sampled op per edge when hard."""

    weights: Tensor
    index: Tensor | None = None
    hard: bool = False
    # Host copy of index (one device->host transfer per step, made by the supernet).
    index_list: list[int] | None = None
    # Hard samples: also run the unsampled candidates (forward only) so every weight gets a gradient
    # from its own op's output (GumbelHardSampler.for_arch_step).
    score_all: bool = False


class Sampler:
    """Base class: ``sampler(alpha)`` -> :class:`Sample`."""

    name = "base"
    hard = False
    # "annealed": a temperature schedule by default (Gumbel); "optional": tau = 1 unless the user sets
    # one (softmax); "none": no temperature at all (Dirichlet).
    temperature = "optional"
    # Search options (SearchConfig fields) this sampler's constructor takes as keywords.
    options: tuple[str, ...] = ()

    def __init__(self, tau: float = 1.0, generator: torch.Generator | None = None):
        self.generator = generator
        self.set_temperature(tau)

    def set_temperature(self, tau: float) -> None:
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"sampler temperature must be a finite number > 0, got {tau!r}")
        self.tau = float(tau)

    def __call__(self, alpha: Tensor) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def for_arch_step(self, sample: Sample, static: bool = False) -> Sample:
        """The sample as the architecture step differentiates it (the weight step uses it as drawn).
        `static`: the same value and gradient with the ops run not depending on the draw (a CUDA graph
        replays one set of ops); soft samplers are static already."""
        return sample

    def expected_probabilities(self, alpha: Tensor) -> Tensor:
        """The distribution's per-edge op probabilities, differentiable in `alpha` (expected costs)."""
        return F.softmax(alpha, dim=-1)

    def probabilities(self, alpha: Tensor) -> Tensor:
        """The distribution's per-edge op probabilities (for logging and derivation)."""
        return self.expected_probabilities(alpha.detach().float())

    def state_dict(self) -> dict:
        return {"name": self.name, "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.set_temperature(state["tau"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self.tau:g})"


class GumbelHardSampler(Sampler):
    name = "gumbel-hard"
    hard = True
    temperature = "annealed"
    options = ("straight_through",)
    STRAIGHT_THROUGH = ("all", "sampled")

    def __init__(self, tau: float = 1.0, generator: torch.Generator | None = None, straight_through: str = "all"):
        super().__init__(tau, generator)
        if straight_through not in self.STRAIGHT_THROUGH:
            raise ValueError(f"straight_through must be one of {', '.join(self.STRAIGHT_THROUGH)}, "
                             f"got {straight_through!r}")
        self.straight_through = straight_through

    def __call__(self, alpha: Tensor) -> Sample:
        w, index = ops.gumbel_softmax(alpha, self.tau, True, generator=self.generator)
        return Sample(w, index, hard=True)

    def for_arch_step(self, sample: Sample, static: bool = False) -> Sample:
        """``straight_through="all"``: every candidate also runs (``score_all``). With `static` every
        candidate runs under autograd, as a soft sample weighted by the one-hot: the forward value and
        every ``dL/dw_k = <dL/dy, op_k(x)>`` are score_all's, and what flows back through an unsampled
        candidate is its weight 0 times the upstream gradient, exactly zero, so the architecture
        gradient is the same; the ops run no longer depend on the sample (``--cuda-graphs``)."""
        if self.straight_through == "sampled":
            if static:
                raise ValueError("straight_through='sampled' runs only the sampled op: it has no static form")
            return sample
        if static:
            return Sample(sample.weights, sample.index)
        return dataclasses.replace(sample, score_all=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self.tau:g}, straight_through={self.straight_through!r})"


class GumbelSoftSampler(Sampler):
    name = "gumbel-soft"
    temperature = "annealed"

    def __call__(self, alpha: Tensor) -> Sample:
        w, index = ops.gumbel_softmax(alpha, self.tau, False, generator=self.generator)
        return Sample(w, index)


class SoftmaxSampler(Sampler):
    name = "softmax"

    def __call__(self, alpha: Tensor) -> Sample:
        return Sample(F.softmax(alpha / self.tau, dim=-1))

    def expected_probabilities(self, alpha: Tensor) -> Tensor:
        return F.softmax(alpha / self.tau, dim=-1)


class DirichletSampler(Sampler):
    name = "dirichlet"
    temperature = "none"

    def __call__(self, alpha: Tensor) -> Sample:
        return Sample(_dirichlet(F.elu(alpha) + 1, self.generator))

    def expected_probabilities(self, alpha: Tensor) -> Tensor:
        # Mean of the Dirichlet: what DrNAS derives the genotype from.
        c = F.elu(alpha) + 1
        return c / c.sum(-1, keepdim=True)


class _DirichletSample(torch.autograd.Function):
    """A pathwise (reparameterised) Dirichlet sample drawn from `generator`: torch's
    ``Dirichlet.rsample`` takes no generator, and drawing it under a seed read from ours would read a
    number back from the device (a GPU sync) on every draw. The backward is the implicit
    reparameterisation gradient (Figurnov et al. 2018), the rule ``Dirichlet.rsample`` uses:
    ``dx/dc`` from ``torch._dirichlet_grad``, projected onto the simplex."""

    @staticmethod
    def forward(ctx, concentration: Tensor, generator: torch.Generator | None) -> Tensor:
        x = torch._sample_dirichlet(concentration, generator=generator)
        ctx.save_for_backward(x, concentration)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        x, concentration = ctx.saved_tensors
        total = concentration.sum(-1, keepdim=True).expand_as(concentration)
        dx_dc = torch._dirichlet_grad(x, concentration, total)
        return dx_dc * (grad_output - (x * grad_output).sum(-1, keepdim=True)), None


def _dirichlet(concentration: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A pathwise Dirichlet sample. The concentrations are elu + 1 > 0 by construction, so they are not
    validated (that would read a boolean back from the device on every draw)."""
    return _DirichletSample.apply(concentration, generator)


_CLASSES = {cls.name: cls for cls in (GumbelHardSampler, GumbelSoftSampler, SoftmaxSampler, DirichletSampler)}


def sampler_class(name: str) -> type[Sampler]:
    """The sampler class registered under `name`."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def make_sampler(name: str = "gumbel-hard", tau: float = 1.0, generator: torch.Generator | None = None,
                 **options) -> Sampler:
    """Build a sampler by name: 'gumbel-hard' (default), 'gumbel-soft', 'softmax', 'dirichlet'.
    `options` go to the sampler's class (gumbel-hard: ``straight_through``)."""
    return sampler_class(name)(tau=tau, generator=generator, **options)


@dataclass
class TemperatureSchedule:
    """Temperature per epoch within a stage: linear or exponential from `start` to `end`."""

    start: float = 10.0
    end: float = 0.1
    kind: str = "linear"

    def __post_init__(self):
        if self.kind not in ("linear", "exponential", "constant"):
            raise ValueError(f"temperature schedule kind must be linear, exponential or constant, got {self.kind!r}")
        if not (self.start > 0 and self.end > 0):
            raise ValueError("temperatures must be > 0")

    def __call__(self, epoch: int, epochs: int) -> float:
        """Temperature at `epoch` (0-based) of `epochs`: start at the first, end at the last."""
        if self.kind == "constant" or epochs <= 1:
            return self.start
        t = min(max(epoch / (epochs - 1), 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.start * (self.end / self.start) ** t
