// CPU kernels of fastnas::weighted_sum: fused forward and one-pass backward.
#include "fastnas.h"
#include "cpu/tile.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastnas {
namespace {

// Elements per tile: the accumulator tile stays in L1 while the K inputs stream through it.
constexpr int64_t kTile = 4096;
// Elements per backward chunk. Fixed (not per-thread), so the weight-gradient sums are identical
// whatever the thread count.
constexpr int64_t kChunk = 16384;

template <typename opmath_t>
std::vector<opmath_t> weights_as(const at::Tensor& weights) {
  at::Tensor w = weights.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
  const opmath_t* p = w.data_ptr<opmath_t>();
  return std::vector<opmath_t>(p, p + w.numel());
}

// Pointer to the opmath values of src[0:len]: src itself when scalar_t is the opmath type, else the
// values converted into buf.
template <typename scalar_t, typename opmath_t>
inline const opmath_t* load_tile(const scalar_t* src, opmath_t* buf, int64_t len) {
  if constexpr (std::is_same<scalar_t, opmath_t>::value) {
    return src;
  } else {
    for (int64_t i = 0; i < len; ++i) buf[i] = static_cast<opmath_t>(src[i]);
    return buf;
  }
}

template <typename scalar_t, typename opmath_t>
inline void store_tile(scalar_t* dst, const opmath_t* src, int64_t len) {
  if constexpr (!std::is_same<scalar_t, opmath_t>::value) {
    for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

template <typename scalar_t>
void forward_kernel(const std::vector<const scalar_t*>& xs, const at::Tensor& weights,
                    scalar_t* out, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool same = std::is_same<scalar_t, opmath_t>::value;
  const std::vector<opmath_t> w = weights_as<opmath_t>(weights);
  const int64_t K = static_cast<int64_t>(xs.size());
  at::parallel_for(0, n, 4 * kTile, [&](int64_t begin, int64_t end) {
    opmath_t acc_buf[same ? 1 : kTile], x_buf[same ? 1 : kTile];
    for (int64_t t0 = begin; t0 < end; t0 += kTile) {
      const int64_t len = std::min(kTile, end - t0);
      // For fp32/fp64 the output tile itself is the accumulator (it stays in L1).
      opmath_t* acc = same ? reinterpret_cast<opmath_t*>(out + t0) : acc_buf;
      cpu::tile_scale(acc, load_tile(xs[0] + t0, x_buf, len), w[0], len);
      for (int64_t k = 1; k < K; ++k)
        cpu::tile_axpy(acc, load_tile(xs[k] + t0, x_buf, len), w[k], len);
      store_tile(out + t0, acc, len);
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad, const std::vector<const scalar_t*>& xs,
                     const at::Tensor& weights, const std::vector<scalar_t*>& gxs,
                     double* grad_w, int64_t n, bool need_x, bool need_w) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr bool same = std::is_same<scalar_t, opmath_t>::value;
  const std::vector<opmath_t> w = weights_as<opmath_t>(weights);
  const int64_t K = static_cast<int64_t>(xs.size());
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  // partial[c * K + k]: chunk c's share of sum(grad * x_k), summed in a fixed order afterwards.
  std::vector<double> partial(need_w ? nchunks * K : 0, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
    opmath_t g_buf[same ? 1 : kTile], x_buf[same ? 1 : kTile], o_buf[same ? 1 : kTile];
    for (int64_t c = cbegin; c < cend; ++c) {
      const int64_t e0 = c * kChunk, e1 = std::min(n, e0 + kChunk);
      for (int64_t t0 = e0; t0 < e1; t0 += kTile) {
        const int64_t len = std::min(kTile, e1 - t0);
        const opmath_t* g = load_tile(grad + t0, g_buf, len);
        for (int64_t k = 0; k < K; ++k) {
          opmath_t* o = need_x ? (same ? reinterpret_cast<opmath_t*>(gxs[k] + t0) : o_buf) : nullptr;
          if (need_x && need_w) {
            partial[c * K + k] += static_cast<double>(
                cpu::tile_scale_dot(o, g, load_tile(xs[k] + t0, x_buf, len), w[k], len));
          } else if (need_x) {
            cpu::tile_scale(o, g, w[k], len);
          } else {
            partial[c * K + k] +=
                static_cast<double>(cpu::tile_dot(g, load_tile(xs[k] + t0, x_buf, len), len));
          }
          if (need_x) store_tile(gxs[k] + t0, o, len);
        }
      }
    }
  });
  if (need_w) {
    for (int64_t k = 0; k < K; ++k) grad_w[k] = 0.0;
    for (int64_t c = 0; c < nchunks; ++c)
      for (int64_t k = 0; k < K; ++k) grad_w[k] += partial[c * K + k];
  }
}

}  // namespace

at::Tensor weighted_sum_cpu(const at::Tensor& weights, at::TensorList inputs) {
  auto [out, xs] = prepare_weighted_sum(weights, inputs);
  const int64_t n = out.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cpu", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& x : xs) ptrs.push_back(x.const_data_ptr<scalar_t>());
    forward_kernel<scalar_t>(ptrs, weights, out.data_ptr<scalar_t>(), n);
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& weights, at::TensorList inputs,
    std::array<bool, 2> output_mask) {
  auto ops = prepare_weighted_sum_backward(grad_out, weights, inputs, output_mask);
  const bool need_x = output_mask[0], need_w = output_mask[1];
  const int64_t K = static_cast<int64_t>(inputs.size());
  at::Tensor grad_w64 = at::zeros({K}, weights.options().dtype(at::kDouble));
  const int64_t n = ops.grad.numel();
  if (n > 0 && (need_x || need_w)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ops.grad.scalar_type(),
                                    "weighted_sum_backward_cpu", [&] {
      std::vector<const scalar_t*> xp(K, nullptr);
      std::vector<scalar_t*> gp;
      for (size_t k = 0; k < ops.inputs.size(); ++k) xp[k] = ops.inputs[k].const_data_ptr<scalar_t>();
      for (auto& t : ops.grad_inputs) gp.push_back(t.data_ptr<scalar_t>());
      backward_kernel<scalar_t>(ops.grad.const_data_ptr<scalar_t>(), xp, weights, gp,
                                grad_w64.data_ptr<double>(), n, need_x, need_w);
    });
  }
  return {ops.grad_inputs, grad_w64.to(weights.scalar_type())};
}

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace fastnas
