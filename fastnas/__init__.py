"""fastnas: progressive, sampler-based differentiable architecture search with fused kernels."""

__version__ = "0.1.0"

from fastnas import ops  # noqa: E402,F401  (loads the extension and registers the ops)
