// Shared declarations of the fastnas extension: argument checks and layout helpers used by both the
// CPU and the CUDA kernels, so that every backend rejects bad input with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastnas {

// weighted_sum(weights[K], inputs[K]): K >= 1, inputs of one shape/dtype/device, floating point;
// weights 1-D of length K on the inputs' device, of the inputs' dtype (or float32 for half/bfloat16).
void check_weighted_sum_args(const at::Tensor& weights, at::TensorList inputs, const char* op);

// Returns `t` if it has exactly the memory layout of `ref` (same strides, dense), else a copy of `t`
// in that layout. The kernels then walk all operands linearly in one shared element order.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& ref);

// gumbel_softmax(logits[..., K], tau, hard, noise): floating logits with K >= 1, tau > 0, noise (if
// given) of the logits' shape and device.
void check_gumbel_args(const at::Tensor& logits, double tau, const std::optional<at::Tensor>& noise,
                       const char* op);

// Kernel entry points, one per op and device (registered in the TORCH_LIBRARY_IMPL blocks).
at::Tensor weighted_sum_cpu(const at::Tensor& weights, at::TensorList inputs);
std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& weights, at::TensorList inputs,
    std::array<bool, 2> output_mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_softmax_cpu(
    const at::Tensor& logits, double tau, bool hard, const std::optional<at::Tensor>& noise,
    std::optional<at::Generator> generator);
at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& soft, double tau);

}  // namespace fastnas
