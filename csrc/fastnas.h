// Shared declarations of the fastnas extension: argument checks and layout helpers used by both the
// CPU and the CUDA kernels, so that every backend rejects bad input with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <utility>
#include <tuple>
#include <vector>

namespace fastnas {

// weighted_sum(weights[K], inputs[K]): K >= 1, inputs of one shape/dtype/device, floating point;
// weights 1-D of length K on the inputs' device, of the inputs' dtype (or float32 for half/bfloat16).
void check_weighted_sum_args(const at::Tensor& weights, at::TensorList inputs, const char* op);

// Returns `t` if it has exactly the memory layout of `ref` (same strides, dense), else a copy of `t`
// in that layout. The kernels then walk all operands linearly in one shared element order.
at::Tensor match_layout(const at::Tensor& t, const at::Tensor& ref);

// Checks weighted_sum's arguments; returns the output (the inputs' memory format: empty_like keeps dense
// strides such as channels_last) and the inputs in that same layout.
std::pair<at::Tensor, std::vector<at::Tensor>> prepare_weighted_sum(const at::Tensor& weights,
                                                                    at::TensorList inputs);

// Operands of one weighted_sum backward pass, all in one layout: grad_out, the inputs (only when the
// weight gradient is wanted) and the freshly allocated input gradients (only when wanted).
struct WeightedSumBackwardOperands {
  at::Tensor grad;
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> grad_inputs;
};
WeightedSumBackwardOperands prepare_weighted_sum_backward(const at::Tensor& grad_out, const at::Tensor& weights,
                                                          at::TensorList inputs, std::array<bool, 2> output_mask);

// gumbel_softmax(logits[..., K], tau, hard, noise): floating logits with K >= 1, tau > 0, noise (if
// given) of the logits' shape and device.
void check_gumbel_args(const at::Tensor& logits, double tau, const std::optional<at::Tensor>& noise,
                       const char* op);

// Outputs of gumbel_softmax for contiguous `logits`: (weights, index, soft).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_outputs(const at::Tensor& logits);

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
