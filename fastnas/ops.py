"""Public fused ops of fastnas: ``weighted_sum`` and ``gumbel_softmax``.

Each op is a torch custom op (``torch.ops.fastnas.*``, schemas in csrc/fastnas.cpp) with C++ CPU and
CUDA kernels, a C++ autograd kernel and a fake (meta) kernel registered here, so it works under autograd,
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``. When the extension or a device's
kernel is missing, the pure-PyTorch twin in :mod:`fastnas.reference` runs instead (one warning).

``FASTNAS_BACKEND`` selects: ``auto`` (default: kernel when present, else reference), ``reference``
(always the reference), ``kernel`` (error when a kernel is missing). :func:`set_backend` does the same
at run time.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from fastnas import reference

__all__ = [
    "backend_error",
    "weighted_sum",
    "gumbel_softmax",
    "set_backend",
    "get_backend",
    "kernel_available",
    "extension_loaded",
    "extension_error",
    "OPS",
]

OPS = ("weighted_sum", "gumbel_softmax")
_BACKENDS = ("auto", "reference", "kernel")

try:  # Loading the library registers torch.ops.fastnas.* with the dispatcher.
    from fastnas import _C  # noqa: F401

    _EXT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised when the build is missing
    _C = None
    _EXT_ERROR = f"{type(exc).__name__}: {exc}"

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _probe_kernels() -> dict[tuple[str, str], bool]:
    found = {}
    for op in OPS:
        for device, key in _DISPATCH_KEYS.items():
            found[(op, device)] = _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"fastnas::{op}", key
            )
    return found


# Probed once at import: the lookups below must be plain dict reads so torch.compile can trace them.
_KERNELS = _probe_kernels()
_backend = os.environ.get("FASTNAS_BACKEND", "auto").strip().lower() or "auto"
_BACKEND_ERROR: str | None = None
if _backend not in _BACKENDS:
    # Not raised here: an import error would be a traceback. Every command refuses to run with it
    # (backend_error); a library user gets the automatic choice.
    _BACKEND_ERROR = f"FASTNAS_BACKEND must be one of {', '.join(_BACKENDS)}, got {_backend!r}"
    _backend = "auto"
_warned: set[tuple[str, str]] = set()


def backend_error() -> str | None:
    """Why the FASTNAS_BACKEND environment variable was not understood (None: it was, or is unset)."""
    return _BACKEND_ERROR


def extension_loaded() -> bool:
    """Whether the compiled extension ``fastnas._C`` is loaded."""
    return _C is not None


def extension_error() -> str | None:
    """Why ``fastnas._C`` failed to load, or None."""
    return _EXT_ERROR


def kernel_available(op: str, device: str | torch.device) -> bool:
    """Whether ``op`` has a compiled kernel for ``device`` ('cpu', 'cuda', ...)."""
    return _KERNELS.get((op, torch.device(device).type), False)


def set_backend(name: str) -> None:
    """Select 'auto', 'reference' or 'kernel' for all fastnas ops in this process."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The current backend selection ('auto', 'reference' or 'kernel')."""
    return _backend


def _use_kernel(op: str, device: torch.device) -> bool:
    if _backend == "reference":
        return False
    if _KERNELS.get((op, device.type), False):
        return True
    if _backend == "kernel":
        raise RuntimeError(
            f"fastnas.{op}: no compiled kernel for device {device.type!r} and FASTNAS_BACKEND=kernel"
            + (f" (extension failed to load: {_EXT_ERROR})" if _EXT_ERROR else "")
        )
    if (op, device.type) not in _warned:
        _warned.add((op, device.type))
        why = f"extension not loaded: {_EXT_ERROR}" if _EXT_ERROR else "no kernel for this device"
        warnings.warn(
            f"fastnas.{op}: using the pure-PyTorch reference on {device.type} ({why})",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_weighted_sum(weights: Tensor, inputs: Sequence[Tensor]) -> None:
    if not isinstance(inputs, (list, tuple)) or len(inputs) == 0:
        raise ValueError("weighted_sum: `inputs` must be a non-empty list or tuple of tensors")
    K = len(inputs)
    x0 = inputs[0]
    if not isinstance(weights, Tensor) or weights.dim() != 1 or weights.shape[0] != K:
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"weighted_sum: `weights` must be 1-D of length K={K} (one per input), got {shape}"
        )
    if x0.dtype not in _FLOATS:
        raise ValueError(
            f"weighted_sum: `inputs` must be float32/float64/float16/bfloat16, got {x0.dtype}"
        )
    mixed = weights.dtype == torch.float32 and x0.dtype in (torch.float16, torch.bfloat16)
    if weights.dtype != x0.dtype and not mixed:
        raise ValueError(
            f"weighted_sum: `weights` dtype {weights.dtype} must equal the inputs' dtype "
            f"{x0.dtype} (or be float32 with float16/bfloat16 inputs)"
        )
    if weights.device != x0.device:
        raise ValueError(
            f"weighted_sum: `weights` is on {weights.device} but inputs[0] is on {x0.device}"
        )
    for k in range(1, K):
        x = inputs[k]
        if x.shape != x0.shape:
            raise ValueError(
                f"weighted_sum: inputs[{k}] has shape {tuple(x.shape)}, expected "
                f"{tuple(x0.shape)} like inputs[0]"
            )
        if x.dtype != x0.dtype:
            raise ValueError(
                f"weighted_sum: inputs[{k}] has dtype {x.dtype}, expected {x0.dtype} like inputs[0]"
            )
        if x.device != x0.device:
            raise ValueError(
                f"weighted_sum: inputs[{k}] is on {x.device}, expected {x0.device} like inputs[0]"
            )


def weighted_sum(weights: Tensor, inputs: Sequence[Tensor]) -> Tensor:
    """Return ``sum_k weights[k] * inputs[k]`` (the DARTS mixed-op combination), fused.

    Args:
        weights: 1-D tensor of length K >= 1; the inputs' dtype, or float32 with fp16/bf16 inputs.
        inputs: K tensors of one shape, dtype and device (float32/64, float16, bfloat16); any
            strides. The output has the inputs' dtype and keeps their memory format.

    Accumulates in fp32 (fp64 for fp64). Differentiable in both arguments; the backward is one pass
    producing all K input gradients and the K weight gradients.
    """
    _check_weighted_sum(weights, inputs)
    if _use_kernel("weighted_sum", inputs[0].device):
        return torch.ops.fastnas.weighted_sum.default(weights, list(inputs))
    return reference.weighted_sum(weights, inputs)


def _check_gumbel(logits: Tensor, tau: float, noise: Tensor | None) -> None:
    if not isinstance(logits, Tensor) or logits.dtype not in _FLOATS:
        dtype = logits.dtype if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"gumbel_softmax: `logits` must be a float32/float64/float16/bfloat16 tensor, got {dtype}"
        )
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            "gumbel_softmax: `logits` needs a last dimension of size >= 1 (the candidates), got "
            f"shape {tuple(logits.shape)}"
        )
    if isinstance(tau, Tensor) or not isinstance(tau, (int, float)):
        raise ValueError(f"gumbel_softmax: `tau` must be a Python number, got {type(tau).__name__}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"gumbel_softmax: `tau` must be a finite number > 0, got {tau}")
    if noise is not None:
        if noise.shape != logits.shape:
            raise ValueError(
                f"gumbel_softmax: `noise` has shape {tuple(noise.shape)}, expected the logits' shape "
                f"{tuple(logits.shape)}"
            )
        if noise.dtype not in _FLOATS:
            raise ValueError(f"gumbel_softmax: `noise` must be floating point, got {noise.dtype}")
        if noise.device != logits.device:
            raise ValueError(
                f"gumbel_softmax: `noise` is on {noise.device} but `logits` is on {logits.device}"
            )


def gumbel_softmax(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample Gumbel-softmax weights over the last dim of ``logits``; returns ``(weights, index)``.

    Same distribution and gradients as :func:`torch.nn.functional.gumbel_softmax`: ``soft =
    softmax((logits + g) / tau)`` with g ~ Gumbel(0, 1); ``hard`` gives ``one_hot(index)`` in the
    forward pass and soft's gradient (straight-through). ``index`` (int64) is the argmax, the sampled
    candidate. ``noise`` (caller-drawn Gumbel noise of logits' shape) makes the result deterministic;
    otherwise the noise comes from ``generator`` (or torch's default one): the same seed gives the
    same samples. On CUDA: one kernel launch each way, no host synchronization, graph-capturable.
    """
    _check_gumbel(logits, tau, noise)
    if _use_kernel("gumbel_softmax", logits.device):
        weights, index, _soft = torch.ops.fastnas.gumbel_softmax.default(
            logits, float(tau), bool(hard), noise, generator
        )
        return weights, index
    # The kernels reject non-finite logits themselves; the reference needs an explicit check.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(logits).all()):
        raise ValueError("gumbel_softmax: `logits` must be finite (found inf or nan)")
    return reference.gumbel_softmax(logits, tau, hard, noise=noise, generator=generator)


# ---------------------------------------------------------------------------------------------
# Fake kernels of the compiled ops. Their autograd is registered in C++ (csrc/autograd.cpp): a
# Python autograd node would cost more than the gumbel_softmax kernel itself.
# ---------------------------------------------------------------------------------------------
if _C is not None:

    @torch.library.register_fake("fastnas::weighted_sum")
    def _weighted_sum_fake(weights, inputs):
        # Same rule as the kernel: empty_like keeps dense strides (e.g. channels_last).
        return torch.empty_like(inputs[0])

    @torch.library.register_fake("fastnas::weighted_sum_backward")
    def _weighted_sum_backward_fake(grad_out, weights, inputs, output_mask):
        grads = [torch.empty_like(inputs[0]) for _ in inputs] if output_mask[0] else []
        return grads, torch.empty(weights.shape, dtype=weights.dtype, device=weights.device)

    @torch.library.register_fake("fastnas::gumbel_softmax")
    def _gumbel_softmax_fake(logits, tau, hard, noise=None, generator=None):
        weights = torch.empty_like(logits, memory_format=torch.contiguous_format)
        index = logits.new_empty(logits.shape[:-1], dtype=torch.int64)
        return weights, index, torch.empty_like(weights)

    @torch.library.register_fake("fastnas::gumbel_softmax_backward")
    def _gumbel_softmax_backward_fake(grad, soft, tau):
        return torch.empty_like(soft, memory_format=torch.contiguous_format)
