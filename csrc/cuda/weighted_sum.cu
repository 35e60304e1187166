// CUDA kernels of fastnas::weighted_sum. Only c10/cuda headers are used (no ATen/cuda/CUDAContext.h,
// which pulls in cuBLAS/cuSPARSE headers that some toolkits lack).
#include "fastnas.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace fastnas {
namespace {

// Inputs travel as kernel arguments, up to kMaxK per launch; larger K runs in groups of kMaxK.
constexpr int kMaxK = 16;
constexpr int kThreads = 256;

template <typename scalar_t>
struct Pointers {
  const scalar_t* x[kMaxK];
  scalar_t* gx[kMaxK];
};

int sm_count(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device] > 0) return cached[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) cached[device] = count;
  return count;
}

int64_t grid_for(int64_t n, int device) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(want, static_cast<int64_t>(sm_count(device)) * 8));
}

// out[i] = (accumulate ? out[i] : 0) + sum_{k < K} w[k0 + k] * x_k[i], accumulated in opmath_t.
template <typename scalar_t, typename weight_t>
__global__ void forward_kernel(Pointers<scalar_t> p, const weight_t* __restrict__ w, int k0, int K,
                               scalar_t* __restrict__ out, int64_t n, bool accumulate) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t wk[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) wk[k] = k < K ? static_cast<opmath_t>(w[k0 + k]) : opmath_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    opmath_t acc = accumulate ? static_cast<opmath_t>(out[i]) : opmath_t(0);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k)
      if (k < K) acc += wk[k] * static_cast<opmath_t>(p.x[k][i]);
    out[i] = static_cast<scalar_t>(acc);
  }
}

// One pass: gx_k = w_k * g for every k, and per-block partial sums of g * x_k into
// partial[block * ldp + k0 + k] (reduced afterwards, deterministically).
template <typename scalar_t, typename weight_t>
__global__ void backward_kernel(const scalar_t* __restrict__ g, Pointers<scalar_t> p,
                                const weight_t* __restrict__ w, int k0, int K, int64_t n,
                                bool need_x, bool need_w,
                                at::opmath_type<scalar_t>* __restrict__ partial, int ldp) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t wk[kMaxK];
  opmath_t acc[kMaxK];  // fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    wk[k] = k < K ? static_cast<opmath_t>(w[k0 + k]) : opmath_t(0);
    acc[k] = opmath_t(0);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const opmath_t gi = static_cast<opmath_t>(g[i]);
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < K) {
        if (need_x) p.gx[k][i] = static_cast<scalar_t>(wk[k] * gi);
        if (need_w) acc[k] += gi * static_cast<opmath_t>(p.x[k][i]);
      }
    }
  }
  if (!need_w) return;
  __shared__ opmath_t smem[kThreads / 32][kMaxK];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    opmath_t v = acc[k];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) smem[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    opmath_t s = opmath_t(0);
    for (int j = 0; j < kThreads / 32; ++j) s += smem[j][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.x) * ldp + k0 + threadIdx.x] = s;
  }
}

}  // namespace

at::Tensor weighted_sum_cuda(const at::Tensor& weights, at::TensorList inputs) {
  c10::cuda::CUDAGuard guard(inputs.empty() ? weights.device() : inputs[0].device());
  auto [out, xs] = prepare_weighted_sum(weights, inputs);
  const at::Tensor w = weights.contiguous();
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int K = static_cast<int>(xs.size());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = grid_for(n, out.get_device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cuda",
                                  [&] {
    auto launch = [&](auto* wp) {
      for (int k0 = 0; k0 < K; k0 += kMaxK) {
        Pointers<scalar_t> p{};
        const int kn = std::min(kMaxK, K - k0);
        for (int k = 0; k < kn; ++k) p.x[k] = xs[k0 + k].const_data_ptr<scalar_t>();
        forward_kernel<<<blocks, kThreads, 0, stream>>>(p, wp, k0, kn, out.data_ptr<scalar_t>(), n,
                                                        k0 > 0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (w.scalar_type() == out.scalar_type()) launch(w.const_data_ptr<scalar_t>());
    else launch(w.const_data_ptr<float>());
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& weights, at::TensorList inputs,
    std::array<bool, 2> output_mask) {
  c10::cuda::CUDAGuard guard(inputs.empty() ? weights.device() : inputs[0].device());
  auto ops = prepare_weighted_sum_backward(grad_out, weights, inputs, output_mask);
  const bool need_x = output_mask[0], need_w = output_mask[1];
  const int K = static_cast<int>(inputs.size());
  const at::Tensor& g = ops.grad;
  const std::vector<at::Tensor>& xs = ops.inputs;
  std::vector<at::Tensor>& gxs = ops.grad_inputs;
  const at::Tensor w = weights.contiguous();
  const int64_t n = g.numel();
  if (n == 0 || !(need_x || need_w)) return {gxs, at::zeros({K}, weights.options())};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = grid_for(n, g.get_device());
  // Per-block partial sums of the weight gradient in the accumulation type (fp64 for fp64 inputs, else
  // fp32), reduced below (only when it is wanted).
  const auto acc_type = g.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = need_w ? at::empty({blocks, K}, g.options().dtype(acc_type)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "weighted_sum_backward_cuda", [&] {
    auto launch = [&](auto* wp) {
      for (int k0 = 0; k0 < K; k0 += kMaxK) {
        Pointers<scalar_t> p{};
        const int kn = std::min(kMaxK, K - k0);
        for (int k = 0; k < kn; ++k) {
          if (need_w) p.x[k] = xs[k0 + k].const_data_ptr<scalar_t>();
          if (need_x) p.gx[k] = gxs[k0 + k].data_ptr<scalar_t>();
        }
        backward_kernel<<<blocks, kThreads, 0, stream>>>(g.const_data_ptr<scalar_t>(), p, wp, k0, kn, n,
                                                         need_x, need_w,
                                                         need_w ? partial.data_ptr<at::opmath_type<scalar_t>>() : nullptr, K);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (w.scalar_type() == g.scalar_type()) launch(w.const_data_ptr<scalar_t>());
    else launch(w.const_data_ptr<float>());
  });
  // Fixed-order reduction over blocks: deterministic run to run.
  at::Tensor gw = need_w ? partial.sum(0, /*keepdim=*/false, weights.scalar_type()) : at::zeros({K}, weights.options());
  return {gxs, gw};
}

TORCH_LIBRARY_IMPL(fastnas, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace fastnas
