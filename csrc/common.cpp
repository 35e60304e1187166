// Argument checks and layout helpers shared by all kernels.
#include "fastnas.h"

#include <ATen/ATen.h>

namespace fastnas {

namespace {
bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}
}  // namespace

void check_weighted_sum_args(const at::Tensor& weights, at::TensorList inputs, const char* op) {
  const int64_t K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(K >= 1, op, ": `inputs` must hold at least one tensor, got 0");
  const at::Tensor& x0 = inputs[0];
  TORCH_CHECK(is_supported_float(x0.scalar_type()), op,
              ": `inputs` must be float32/float64/float16/bfloat16, got ", x0.scalar_type());
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == K, op,
              ": `weights` must be 1-D of length K=", K, " (one per input), got shape ",
              weights.sizes());
  const bool mixed_ok = weights.scalar_type() == at::kFloat &&
                        (x0.scalar_type() == at::kHalf || x0.scalar_type() == at::kBFloat16);
  TORCH_CHECK(weights.scalar_type() == x0.scalar_type() || mixed_ok, op, ": `weights` dtype ",
              weights.scalar_type(), " must equal the inputs' dtype ", x0.scalar_type(),
              " (or be float32 with float16/bfloat16 inputs)");
  TORCH_CHECK(weights.device() == x0.device(), op, ": `weights` is on ", weights.device(),
              " but inputs[0] is on ", x0.device());
  for (int64_t k = 1; k < K; ++k) {
    const at::Tensor& x = inputs[k];
    TORCH_CHECK(x.sizes() == x0.sizes(), op, ": inputs[", k, "] has shape ", x.sizes(),
                ", expected ", x0.sizes(), " like inputs[0]");
    TORCH_CHECK(x.scalar_type() == x0.scalar_type(), op, ": inputs[", k, "] has dtype ",
                x.scalar_type(), ", expected ", x0.scalar_type(), " like inputs[0]");
    TORCH_CHECK(x.device() == x0.device(), op, ": inputs[", k, "] is on ", x.device(),
                ", expected ", x0.device(), " like inputs[0]");
  }
}

at::Tensor match_layout(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides() && t.is_non_overlapping_and_dense()) {
    return t;
  }
  return at::empty_like(ref, t.options()).copy_(t);
}

std::pair<at::Tensor, std::vector<at::Tensor>> prepare_weighted_sum(const at::Tensor& weights,
                                                                    at::TensorList inputs) {
  check_weighted_sum_args(weights, inputs, "weighted_sum");
  at::Tensor out = at::empty_like(inputs[0]);
  std::vector<at::Tensor> xs;
  xs.reserve(inputs.size());
  for (const auto& x : inputs) xs.push_back(match_layout(x, out));
  return {out, xs};
}

WeightedSumBackwardOperands prepare_weighted_sum_backward(const at::Tensor& grad_out, const at::Tensor& weights,
                                                          at::TensorList inputs, std::array<bool, 2> output_mask) {
  check_weighted_sum_args(weights, inputs, "weighted_sum_backward");
  TORCH_CHECK(grad_out.sizes() == inputs[0].sizes() && grad_out.scalar_type() == inputs[0].scalar_type() &&
                  grad_out.device() == inputs[0].device(),
              "weighted_sum_backward: `grad_out` must match the inputs' shape ", inputs[0].sizes(), ", dtype ",
              inputs[0].scalar_type(), " and device, got ", grad_out.sizes(), " ", grad_out.scalar_type(), " on ",
              grad_out.device());
  WeightedSumBackwardOperands ops;
  at::Tensor layout = at::empty_like(inputs[0]);
  ops.grad = match_layout(grad_out, layout);
  if (output_mask[1])
    for (const auto& x : inputs) ops.inputs.push_back(match_layout(x, layout));
  if (output_mask[0])
    for (size_t k = 0; k < inputs.size(); ++k) ops.grad_inputs.push_back(k == 0 ? layout : at::empty_like(layout));
  return ops;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_outputs(const at::Tensor& logits) {
  at::Tensor weights = at::empty_like(logits, at::MemoryFormat::Contiguous);
  auto index_sizes = logits.sizes().vec();
  index_sizes.pop_back();
  at::Tensor index = at::empty(index_sizes, logits.options().dtype(at::kLong));
  return {weights, index, at::empty_like(weights)};
}

void check_gumbel_args(const at::Tensor& logits, double tau, const std::optional<at::Tensor>& noise,
                       const char* op) {
  TORCH_CHECK(is_supported_float(logits.scalar_type()), op,
              ": `logits` must be float32/float64/float16/bfloat16, got ", logits.scalar_type());
  TORCH_CHECK(logits.dim() >= 1 && logits.size(-1) >= 1, op,
              ": `logits` needs a last dimension of size >= 1 (the candidates), got shape ",
              logits.sizes());
  TORCH_CHECK(tau > 0 && std::isfinite(tau), op, ": `tau` must be a finite number > 0, got ", tau);
  if (noise.has_value()) {
    TORCH_CHECK(noise->sizes() == logits.sizes(), op, ": `noise` has shape ", noise->sizes(),
                ", expected the logits' shape ", logits.sizes());
    TORCH_CHECK(is_supported_float(noise->scalar_type()), op,
                ": `noise` must be floating point, got ", noise->scalar_type());
    TORCH_CHECK(noise->device() == logits.device(), op, ": `noise` is on ", noise->device(),
                " but `logits` is on ", logits.device());
  }
}

}  // namespace fastnas
