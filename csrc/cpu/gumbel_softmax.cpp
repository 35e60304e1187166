// CPU kernels of fastnas::gumbel_softmax. Noise comes from Philox keyed by a seed drawn from the torch
// CPU generator, so a seeded generator (or torch.manual_seed) reproduces the samples.
#include "fastnas.h"
#include "philox.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>

namespace fastnas {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_softmax_cpu(
    const at::Tensor& logits_in, double tau, bool hard, const std::optional<at::Tensor>& noise_in,
    std::optional<at::Generator> generator) {
  check_gumbel_args(logits_in, tau, noise_in, "gumbel_softmax");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t K = logits.size(-1);
  const int64_t rows = logits.numel() / K;
  auto [weights, index, soft] = gumbel_outputs(logits);
  if (rows == 0) return {weights, index, soft};

  uint64_t seed = 0;
  if (!noise_in.has_value()) {
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
        generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    seed = gen->random64();
  }
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(),
                                  "gumbel_softmax_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    at::Tensor noise;
    if (noise_in.has_value())
      noise = noise_in->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const opmath_t* np = noise.defined() ? noise.const_data_ptr<opmath_t>() : nullptr;
    const scalar_t* lp = logits.const_data_ptr<scalar_t>();
    scalar_t* wp = weights.data_ptr<scalar_t>();
    scalar_t* sp = soft.data_ptr<scalar_t>();
    int64_t* ip = index.data_ptr<int64_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      bool ok = true;
      for (int64_t r = begin; r < end; ++r) {
        ok &= gumbel_row<scalar_t, opmath_t>(lp + r * K, np ? np + r * K : nullptr, seed, 0,
                                             static_cast<uint64_t>(r * K), K,
                                             static_cast<opmath_t>(tau), hard, wp + r * K,
                                             sp + r * K, ip + r);
      }
      if (!ok) finite = false;
    });
  });
  TORCH_CHECK(finite.load(), "gumbel_softmax: `logits` must be finite (found inf or nan)");
  return {weights, index, soft};
}

at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad_in, const at::Tensor& soft_in,
                                       double tau) {
  TORCH_CHECK(grad_in.sizes() == soft_in.sizes(), "gumbel_softmax_backward: `grad` has shape ",
              grad_in.sizes(), ", expected the shape of `soft` ", soft_in.sizes());
  TORCH_CHECK(tau > 0, "gumbel_softmax_backward: `tau` must be > 0, got ", tau);
  const at::Tensor soft = soft_in.contiguous();
  const at::Tensor grad = grad_in.to(soft.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(soft);
  const int64_t K = soft.dim() == 0 ? 1 : soft.size(-1);
  if (soft.numel() == 0) return out;
  const int64_t rows = soft.numel() / K;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, soft.scalar_type(),
                                  "gumbel_softmax_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* sp = soft.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        gumbel_row_backward<scalar_t, opmath_t>(gp + r * K, sp + r * K, K,
                                                static_cast<opmath_t>(tau), op + r * K);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(fastnas, CPU, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cpu);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cpu);
}

}  // namespace fastnas
