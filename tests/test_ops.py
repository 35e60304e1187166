"""fastnas.ops against fastnas.reference: values, gradients, layouts, dtypes, bad input."""

import math

import pytest
import torch
from conftest import requires_cuda
from torch.testing import assert_close

from fastnas import ops, reference

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="fastnas._C is not built")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (rtol, atol) per dtype for results accumulated in fp32 (fp64) by both sides.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}
SHAPES = [(), (7,), (3, 5), (2, 3, 4, 5), (4, 16, 8, 8), (0,), (2, 0, 4, 4)]


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    assert_close(actual, expected, rtol=rtol, atol=atol * scale)


def _make(K, shape, dtype, device, weight_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(K, generator=g, dtype=torch.float64).to(weight_dtype or dtype).to(device)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(K)]
    return w, xs


def _fwd_bwd(fn, w, xs, grad):
    w = w.detach().clone().requires_grad_(True)
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = fn(w, xs)
    out.backward(grad)
    return out.detach(), w.grad, [x.grad for x in xs]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", range(1, 9))
def test_weighted_sum_matches_reference(device, dtype, K):
    for shape in SHAPES:
        w, xs = _make(K, shape, dtype, device, seed=K)
        grad = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
        out, gw, gxs = _fwd_bwd(ops.weighted_sum, w, xs, grad)
        ref, rgw, rgxs = _fwd_bwd(reference.weighted_sum, w, xs, grad)
        assert out.dtype == dtype and out.shape == torch.Size(shape)
        _close(out, ref, dtype)
        # The weight gradient is a sum over all elements: tolerance grows with its magnitude.
        n = max(1, math.prod(shape))
        _close(gw, rgw, dtype, scale=math.sqrt(n))
        for a, b in zip(gxs, rgxs, strict=True):
            _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weighted_sum_fp32_weights_with_low_precision_inputs(device, dtype):
    w, xs = _make(5, (2, 8, 6, 6), dtype, device, weight_dtype=torch.float32)
    grad = torch.randn(2, 8, 6, 6).to(dtype).to(device)
    out, gw, gxs = _fwd_bwd(ops.weighted_sum, w, xs, grad)
    ref, rgw, rgxs = _fwd_bwd(reference.weighted_sum, w, xs, grad)
    assert out.dtype == dtype and gw.dtype == torch.float32
    _close(out, ref, dtype)
    _close(gw, rgw, dtype, scale=24)
    for a, b in zip(gxs, rgxs, strict=True):
        _close(a, b, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "mixed", "expanded"])
def test_weighted_sum_layouts(device, layout):
    K, shape = 4, (2, 6, 5, 7)
    w, xs = _make(K, shape, torch.float32, device)
    if layout == "channels_last":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    elif layout == "transposed":
        xs = [x.transpose(1, 3).contiguous().transpose(1, 3) for x in xs]
    elif layout == "sliced":
        xs = [torch.randn(2, 6, 5, 14, device=device)[..., ::2] for _ in range(K)]
    elif layout == "mixed":
        xs = [x.contiguous(memory_format=torch.channels_last) if i % 2 else x for i, x in enumerate(xs)]
    elif layout == "expanded":
        xs = [torch.randn(1, 6, 5, 7, device=device).expand(shape) for _ in range(K)]
    grad = torch.randn(shape, device=device)
    out, gw, gxs = _fwd_bwd(ops.weighted_sum, w, xs, grad)
    ref, rgw, rgxs = _fwd_bwd(reference.weighted_sum, w, xs, grad)
    _close(out, ref, torch.float32)
    _close(gw, rgw, torch.float32, scale=20)
    for a, b in zip(gxs, rgxs, strict=True):
        _close(a, b, torch.float32)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    if layout in ("transposed",):
        assert out.stride() == xs[0].stride()


def test_weighted_sum_partial_grads(device):
    w, xs = _make(3, (4, 5), torch.float32, device)
    # Only the weights need a gradient (architecture step with frozen weights).
    wr = w.clone().requires_grad_(True)
    ops.weighted_sum(wr, xs).sum().backward()
    assert_close(wr.grad, torch.stack([x.sum() for x in xs]))
    # Only the inputs need a gradient (weight step with frozen architecture).
    xr = [x.clone().requires_grad_(True) for x in xs]
    ops.weighted_sum(w, xr).sum().backward()
    for k, x in enumerate(xr):
        assert_close(x.grad, torch.full_like(x, float(w[k])))


def test_weighted_sum_backward_deterministic_across_threads():
    w, xs = _make(8, (3, 16, 40, 40), torch.float32, "cpu")
    grad = torch.randn(3, 16, 40, 40)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(_fwd_bwd(ops.weighted_sum, w, xs, grad)[1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_weighted_sum_gradcheck(device):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
    xs = [torch.randn(2, 3, 4, dtype=torch.float64, generator=g).to(device).requires_grad_(True)
          for _ in range(3)]
    assert torch.autograd.gradcheck(lambda w, *xs: ops.weighted_sum(w, xs), (w, *xs))


def test_weighted_sum_opcheck(device):
    cases = [
        _make(3, (2, 3, 4, 4), torch.float32, device),
        _make(1, (5,), torch.float64, device),
        _make(2, (0, 3), torch.float32, device),
    ]
    w, xs = _make(4, (2, 3, 4, 4), torch.float32, device)
    cases.append((w, [x.contiguous(memory_format=torch.channels_last) for x in xs]))
    w, xs = _make(2, (2, 3), torch.bfloat16, device, weight_dtype=torch.float32)
    cases.append((w, xs))
    for w, xs in cases:
        w.requires_grad_(True)
        for x in xs:
            x.requires_grad_(True)
        torch.library.opcheck(torch.ops.fastnas.weighted_sum.default, (w, xs))


@pytest.mark.parametrize(
    "args, match",
    [
        (lambda d: (torch.ones(2, device=d), []), "inputs"),
        (lambda d: (torch.ones(3, device=d), [torch.ones(4, device=d)] * 2), "weights"),
        (lambda d: (torch.ones(2, 1, device=d), [torch.ones(4, device=d)] * 2), "weights"),
        (lambda d: (torch.ones(2, device=d), [torch.ones(4, device=d), torch.ones(5, device=d)]),
         r"inputs\[1\].*shape"),
        (lambda d: (torch.ones(2, device=d),
                    [torch.ones(4, device=d), torch.ones(4, device=d, dtype=torch.float64)]),
         r"inputs\[1\].*dtype"),
        (lambda d: (torch.ones(2, device=d, dtype=torch.float64), [torch.ones(4, device=d)] * 2),
         "weights.*dtype"),
        (lambda d: (torch.ones(2, device=d, dtype=torch.int64),
                    [torch.ones(4, device=d, dtype=torch.int64)] * 2), "inputs"),
    ],
)
def test_weighted_sum_rejects_bad_input(device, args, match):
    weights, inputs = args(device)
    with pytest.raises(ValueError, match=match):
        ops.weighted_sum(weights, inputs)
    if inputs:  # the raw op checks the same things in C++
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fastnas.weighted_sum(weights, inputs)


# ------------------------------------------------------------------ gumbel_softmax

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("shape", [(14, 8), (28, 5), (8,), (2, 3, 4), (0, 8)])
def test_gumbel_given_noise_matches_reference(device, dtype, hard, shape):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    noise = reference.sample_gumbel(shape, dtype=torch.float32, device="cpu", generator=g).to(device)
    tau = 0.7
    gout = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)

    def run(fn):
        x = logits.clone().requires_grad_(True)
        w, idx = fn(x, tau, hard, noise=noise)
        w.backward(gout)
        return w.detach(), idx, x.grad

    w, idx, grad = run(ops.gumbel_softmax)
    rw, ridx, rgrad = run(reference.gumbel_softmax)
    assert torch.equal(idx, ridx)
    assert idx.dtype == torch.int64 and idx.shape == torch.Size(shape[:-1])
    assert w.dtype == dtype
    _close(w, rw, dtype)
    _close(grad, rgrad, dtype)
    if hard and w.numel():
        assert torch.equal(w, torch.nn.functional.one_hot(idx, shape[-1]).to(dtype))


def test_gumbel_hard_gradient_equals_soft_gradient(device):
    logits = torch.randn(14, 8, device=device)
    noise = reference.sample_gumbel((14, 8), dtype=torch.float32, device=device)
    gout = torch.randn(14, 8, device=device)
    grads = []
    for hard in (False, True):
        x = logits.clone().requires_grad_(True)
        w, _ = ops.gumbel_softmax(x, 2.0, hard, noise=noise)
        (w * gout).sum().backward()
        grads.append(x.grad)
    assert_close(grads[0], grads[1])


# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_999 = {4: 18.467, 5: 20.515, 7: 24.322}


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("tau", [1.0, 0.3])
@pytest.mark.parametrize("K", [5, 8])
def test_gumbel_sample_frequencies_follow_softmax(device, impl, tau, K):
    torch.manual_seed(1234)
    logits = torch.tensor([1.5, 0.2, -0.7, 0.9, 0.0, -1.2, 0.4, 2.0][:K], device=device)
    n = 40000
    fn = ops.gumbel_softmax if impl == "kernel" else reference.gumbel_softmax
    _, idx = fn(logits.expand(n, K).contiguous(), tau, True)
    counts = torch.bincount(idx.cpu(), minlength=K).double()
    expected = logits.double().softmax(-1).cpu() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[K - 1], (counts, expected)


def test_gumbel_seeded_generator_reproduces(device):
    logits = torch.randn(28, 8, device=device)
    a = ops.gumbel_softmax(logits, 1.0, generator=torch.Generator(device).manual_seed(5))
    b = ops.gumbel_softmax(logits, 1.0, generator=torch.Generator(device).manual_seed(5))
    c = ops.gumbel_softmax(logits, 1.0, generator=torch.Generator(device).manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(9)
    d1 = ops.gumbel_softmax(logits, 1.0)
    d2 = ops.gumbel_softmax(logits, 1.0)
    torch.manual_seed(9)
    e1 = ops.gumbel_softmax(logits, 1.0)
    assert torch.equal(d1[0], e1[0]) and not torch.equal(d1[0], d2[0])


def test_gumbel_gradcheck(device):
    logits = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    noise = reference.sample_gumbel((6, 5), dtype=torch.float64, device=device)
    # Soft only: the hard forward is piecewise constant, its (straight-through) gradient is
    # checked against the soft one in test_gumbel_hard_gradient_equals_soft_gradient.
    assert torch.autograd.gradcheck(
        lambda x: ops.gumbel_softmax(x, 0.8, False, noise=noise)[0], (logits,)
    )


def test_gumbel_opcheck(device):
    logits = torch.randn(14, 8, device=device, requires_grad=True)
    noise = reference.sample_gumbel((14, 8), dtype=torch.float32, device=device)
    for hard in (False, True):
        torch.library.opcheck(torch.ops.fastnas.gumbel_softmax.default, (logits, 0.5, hard, noise, None))
    torch.library.opcheck(
        torch.ops.fastnas.gumbel_softmax_backward.default,
        (torch.randn(3, 4, device=device), torch.randn(3, 4, device=device).softmax(-1), 1.0),
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logits=torch.ones(3, 4, dtype=torch.int64)), "logits"),
        (dict(logits=torch.ones(3, 0)), "logits"),
        (dict(logits=torch.ones(3, 4), tau=0.0), "tau"),
        (dict(logits=torch.ones(3, 4), tau=-1.0), "tau"),
        (dict(logits=torch.ones(3, 4), noise=torch.ones(3, 5)), "noise"),
        (dict(logits=torch.tensor([[0.0, float("nan")]])), "finite"),
        (dict(logits=torch.tensor([[0.0, float("inf")]])), "finite"),
    ],
)
def test_gumbel_rejects_bad_input(kwargs, match):
    # Shape/dtype/tau are checked in Python (ValueError); finiteness by the kernel (RuntimeError).
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops.gumbel_softmax(**kwargs)
    args = (kwargs["logits"], kwargs.get("tau", 1.0), False, kwargs.get("noise"), None)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastnas.gumbel_softmax(*args)


# ------------------------------------------------------------------ compile, backends

# inductor compiles C++ for the CPU (half a minute on 2 cores): the slow tier; aot_eager stays in the default.
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()

    def mixed(alpha, xs, noise):
        w, idx = ops.gumbel_softmax(alpha, 1.0, False, noise=noise)
        return ops.weighted_sum(w[0], xs) * 2, idx

    alpha = torch.randn(2, 3, device=device, requires_grad=True)
    noise = reference.sample_gumbel((2, 3), dtype=torch.float32, device=device)
    xs = [torch.randn(2, 4, 5, 5, device=device, requires_grad=True) for _ in range(3)]
    compiled = torch.compile(mixed, fullgraph=True, backend=backend)
    out, idx = compiled(alpha, xs, noise)
    ref, ridx = mixed(alpha, xs, noise)
    assert_close(out, ref)
    assert torch.equal(idx, ridx)
    out.sum().backward()
    g1 = alpha.grad.clone()
    alpha.grad = None
    ref.sum().backward()
    assert_close(g1, alpha.grad)


def test_reference_backend_and_fallback_warning(monkeypatch):
    w, xs = _make(3, (4, 5), torch.float32, "cpu")
    ops.set_backend("reference")
    try:
        assert_close(ops.weighted_sum(w, xs), reference.weighted_sum(w, xs))
    finally:
        ops.set_backend("auto")
    # A missing kernel falls back to the reference with one warning...
    monkeypatch.setitem(ops._KERNELS, ("weighted_sum", "cpu"), False)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="reference"):
        out = ops.weighted_sum(w, xs)
    assert_close(out, reference.weighted_sum(w, xs))
    # ...and an error when the kernel was demanded.
    ops.set_backend("kernel")
    try:
        with pytest.raises(RuntimeError, match="no compiled kernel"):
            ops.weighted_sum(w, xs)
    finally:
        ops.set_backend("auto")
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("fast")


def test_weighted_sum_many_inputs(device):
    # More inputs than one CUDA launch carries (16): processed in groups there.
    w, xs = _make(20, (3, 4, 5), torch.float32, device)
    grad = torch.randn(3, 4, 5, device=device)
    out, gw, gxs = _fwd_bwd(ops.weighted_sum, w, xs, grad)
    ref, rgw, rgxs = _fwd_bwd(reference.weighted_sum, w, xs, grad)
    _close(out, ref, torch.float32)
    _close(gw, rgw, torch.float32, scale=10)
    for a, b in zip(gxs, rgxs, strict=True):
        _close(a, b, torch.float32)


@requires_cuda
@pytest.mark.cuda
def test_gumbel_cuda_no_sync_and_graph_capture():
    logits = torch.randn(14, 8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:  # any host synchronization inside the op raises here
        w, idx = ops.gumbel_softmax(logits, 1.0, True)
        xs = [torch.randn(4, 16, 8, 8, device="cuda") for _ in range(8)]
        ops.weighted_sum(w[0], xs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    static = torch.randn(14, 8, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.gumbel_softmax(static, 1.0, True)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gw, gidx = ops.gumbel_softmax(static, 1.0, True)
    samples = []
    for _ in range(4):
        graph.replay()
        samples.append(gidx.clone())
    torch.cuda.synchronize()
    assert torch.equal(gw, torch.nn.functional.one_hot(gidx, 8).float())
    # Each replay draws fresh noise (the generator's offset advances per replay).
    assert any(not torch.equal(samples[0], s) for s in samples[1:])


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu_kernel_given_noise():
    logits = torch.randn(28, 8, dtype=torch.float64)
    noise = reference.sample_gumbel((28, 8), dtype=torch.float64, device="cpu")
    w_cpu, i_cpu = ops.gumbel_softmax(logits, 0.5, False, noise=noise)
    w_gpu, i_gpu = ops.gumbel_softmax(logits.cuda(), 0.5, False, noise=noise.cuda())
    assert torch.equal(i_cpu, i_gpu.cpu())
    assert_close(w_cpu, w_gpu.cpu(), rtol=1e-12, atol=1e-12)


def test_weighted_sum_double_backward(device):
    """create_graph=True goes through weighted_sum again (gradgradcheck in float64): the backward builds
    its graph from differentiable ops then, instead of silently dropping the weight gradient's history."""
    torch.manual_seed(0)
    w = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    xs = [torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3)]

    def f(w, *xs):
        return ops.weighted_sum(w, list(xs))

    assert torch.autograd.gradgradcheck(f, (w, *xs))
    g_w, g_x0 = torch.autograd.grad(f(w, *xs).pow(2).sum(), (w, xs[0]), create_graph=True)
    assert g_w.requires_grad and g_x0.requires_grad
    # d/dx0 of sum_k (dL/dw_k): the reference's second derivative
    ref = torch.autograd.grad(torch.autograd.grad(sum(wk * x for wk, x in zip(w, xs, strict=True)).pow(2).sum(), w,
                                                  create_graph=True)[0].sum(), xs[0])[0]
    torch.testing.assert_close(torch.autograd.grad(g_w.sum(), xs[0])[0], ref)
