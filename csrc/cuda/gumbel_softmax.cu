// CUDA kernels of fastnas::gumbel_softmax: one launch forward, one backward. Noise comes from the
// torch CUDA generator's Philox state (seed, offset), unpacked inside the kernel, so there is no host
// synchronization and the op can be captured in a CUDA graph.
#include "fastnas.h"
#include "philox.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <mutex>

namespace fastnas {
namespace {

constexpr int kThreads = 128;

template <typename scalar_t, typename opmath_t>
__global__ void gumbel_forward_kernel(const scalar_t* __restrict__ logits,
                                      const opmath_t* __restrict__ noise, at::PhiloxCudaState rng,
                                      int64_t rows, int64_t K, opmath_t tau, bool hard,
                                      scalar_t* __restrict__ weights, scalar_t* __restrict__ soft,
                                      int64_t* __restrict__ index) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  uint64_t seed = 0, offset = 0;
  if (noise == nullptr) {
    auto state = at::cuda::philox::unpack(rng);
    seed = std::get<0>(state);
    offset = std::get<1>(state);
  }
  const bool finite = gumbel_row<scalar_t, opmath_t>(
      logits + r * K, noise ? noise + r * K : nullptr, seed, offset, static_cast<uint64_t>(r * K), K,
      tau, hard, weights + r * K, soft + r * K, index + r);
  // Checking on the host would need a synchronization: a device-side assert instead.
  CUDA_KERNEL_ASSERT(finite && "gumbel_softmax: logits must be finite");
}

template <typename scalar_t, typename opmath_t>
__global__ void gumbel_backward_kernel(const scalar_t* __restrict__ grad,
                                       const scalar_t* __restrict__ soft, int64_t rows, int64_t K,
                                       opmath_t tau, scalar_t* __restrict__ out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  gumbel_row_backward<scalar_t, opmath_t>(grad + r * K, soft + r * K, K, tau, out + r * K);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_softmax_cuda(
    const at::Tensor& logits_in, double tau, bool hard, const std::optional<at::Tensor>& noise_in,
    std::optional<at::Generator> generator) {
  check_gumbel_args(logits_in, tau, noise_in, "gumbel_softmax");
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t K = logits.size(-1);
  const int64_t rows = logits.numel() / K;
  auto [weights, index, soft] = gumbel_outputs(logits);
  if (rows == 0) return {weights, index, soft};

  at::PhiloxCudaState rng;
  if (!noise_in.has_value()) {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator(logits.get_device()));
    std::lock_guard<std::mutex> lock(gen->mutex_);
    // Our counters are (element / 4, offset): one offset step per call keeps calls apart.
    rng = gen->philox_cuda_state(4);
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "gumbel_softmax_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::Tensor noise;
    if (noise_in.has_value())
      noise = noise_in->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    gumbel_forward_kernel<scalar_t, opmath_t><<<blocks, kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), noise.defined() ? noise.const_data_ptr<opmath_t>() : nullptr,
        rng, rows, K, static_cast<opmath_t>(tau), hard, weights.data_ptr<scalar_t>(),
        soft.data_ptr<scalar_t>(), index.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {weights, index, soft};
}

at::Tensor gumbel_softmax_backward_cuda(const at::Tensor& grad_in, const at::Tensor& soft_in,
                                        double tau) {
  TORCH_CHECK(grad_in.sizes() == soft_in.sizes(), "gumbel_softmax_backward: `grad` has shape ",
              grad_in.sizes(), ", expected the shape of `soft` ", soft_in.sizes());
  TORCH_CHECK(tau > 0, "gumbel_softmax_backward: `tau` must be > 0, got ", tau);
  c10::cuda::CUDAGuard guard(soft_in.device());
  const at::Tensor soft = soft_in.contiguous();
  const at::Tensor grad = grad_in.to(soft.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(soft);
  if (soft.numel() == 0) return out;
  const int64_t K = soft.size(-1);
  const int64_t rows = soft.numel() / K;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = (rows + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, soft.scalar_type(),
                                  "gumbel_softmax_backward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    gumbel_backward_kernel<scalar_t, opmath_t><<<blocks, kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), soft.const_data_ptr<scalar_t>(), rows, K,
        static_cast<opmath_t>(tau), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(fastnas, CUDA, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cuda);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cuda);
}

}  // namespace fastnas
