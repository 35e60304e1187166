// Autograd kernels of the fastnas ops, in C++ (dispatch key Autograd, so CPU and CUDA alike).
// Why C++ rather than torch.library.register_autograd: a Python autograd node costs ~15 us per call
// and ~20 us per backward, which is more than the gumbel_softmax kernel itself and adds up over the
// hundreds of mixed ops in one supernet step. Fake kernels stay in Python (fastnas/ops.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& weighted_sum_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastnas::weighted_sum", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList)>();
  return op;
}

const auto& weighted_sum_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastnas::weighted_sum_backward", "")
          .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
              const at::Tensor&, const at::Tensor&, at::TensorList, std::array<bool, 2>)>();
  return op;
}

const auto& gumbel_softmax_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastnas::gumbel_softmax", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, double, bool, const std::optional<at::Tensor>&,
                           std::optional<at::Generator>)>();
  return op;
}

const auto& gumbel_softmax_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastnas::gumbel_softmax_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
  return op;
}

class WeightedSumFunction : public torch::autograd::Function<WeightedSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weights,
                            at::TensorList inputs) {
    bool need_x = false;
    for (const auto& x : inputs) need_x = need_x || x.requires_grad();
    const bool need_w = weights.requires_grad();
    ctx->saved_data["need_x"] = need_x;
    ctx->saved_data["need_w"] = need_w;
    ctx->saved_data["K"] = static_cast<int64_t>(inputs.size());
    ctx->set_materialize_grads(false);
    // The inputs are only needed for the weight gradient: don't keep them alive otherwise.
    std::vector<at::Tensor> to_save{weights};
    if (need_w) to_save.insert(to_save.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(to_save);
    at::AutoDispatchBelowADInplaceOrView guard;
    return weighted_sum_op().call(weights, inputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool need_x = ctx->saved_data["need_x"].toBool();
    const bool need_w = ctx->saved_data["need_w"].toBool();
    const int64_t K = ctx->saved_data["K"].toInt();
    auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    if (!grad.defined()) return variable_list(K + 1);
    if (at::GradMode::is_enabled()) {
      // create_graph=True (a double backward: gradgradcheck, Hessian-vector products): the same
      // gradients from differentiable ATen ops, so autograd can go through them again. The fused
      // kernel below has no derivative of its own.
      variable_list out;
      out.reserve(K + 1);
      const at::Tensor& w = saved[0];
      if (need_w) {
        std::vector<at::Tensor> dots;
        dots.reserve(K);
        const auto acc = at::promote_types(grad.scalar_type(), at::kFloat);  // fp32 accumulation at least
        for (int64_t k = 0; k < K; ++k) dots.push_back((grad.to(acc) * saved[1 + k].to(acc)).sum());
        out.push_back(at::stack(dots).to(w.scalar_type()));
      } else {
        out.push_back(at::Tensor());
      }
      for (int64_t k = 0; k < K; ++k) out.push_back(need_x ? grad * w[k].to(grad.scalar_type()) : at::Tensor());
      return out;
    }
    std::vector<at::Tensor> xs;
    if (need_w) xs.assign(saved.begin() + 1, saved.end());
    else xs.assign(K, grad);  // placeholders: not read without the weight gradient
    auto [grad_inputs, grad_weights] =
        weighted_sum_backward_op().call(grad, saved[0], xs, {need_x, need_w});
    variable_list out;
    out.reserve(K + 1);
    out.push_back(need_w ? grad_weights : at::Tensor());
    for (int64_t k = 0; k < K; ++k) out.push_back(need_x ? grad_inputs[k] : at::Tensor());
    return out;
  }
};

class GumbelSoftmaxFunction : public torch::autograd::Function<GumbelSoftmaxFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, double tau,
                               bool hard, const std::optional<at::Tensor>& noise,
                               std::optional<at::Generator> generator) {
    at::Tensor weights, index, soft;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(weights, index, soft) = gumbel_softmax_op().call(logits, tau, hard, noise, generator);
    }
    // Unused outputs (usually soft) get no zero-filled gradient: no allocation, no add.
    ctx->set_materialize_grads(false);
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["noise_grad"] = noise.has_value() && noise->requires_grad();
    ctx->mark_non_differentiable({index});
    ctx->save_for_backward({soft});
    return {weights, index, soft};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const double tau = ctx->saved_data["tau"].toDouble();
    const at::Tensor soft = ctx->get_saved_variables()[0];
    // weights (one-hot or soft) and soft share soft's Jacobian: straight-through.
    at::Tensor grad = grad_outputs[0];
    if (grad_outputs[2].defined()) grad = grad.defined() ? grad.add(grad_outputs[2]) : grad_outputs[2];
    at::Tensor grad_logits;
    if (grad.defined()) grad_logits = gumbel_softmax_backward_op().call(grad, soft, tau);
    // The noise enters as logits + noise: the same gradient.
    at::Tensor grad_noise = ctx->saved_data["noise_grad"].toBool() ? grad_logits : at::Tensor();
    return {grad_logits, at::Tensor(), at::Tensor(), grad_noise, at::Tensor()};
  }
};

at::Tensor weighted_sum_autograd(const at::Tensor& weights, at::TensorList inputs) {
  return WeightedSumFunction::apply(weights, inputs);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_softmax_autograd(
    const at::Tensor& logits, double tau, bool hard, const std::optional<at::Tensor>& noise,
    std::optional<at::Generator> generator) {
  auto out = GumbelSoftmaxFunction::apply(logits, tau, hard, noise, generator);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastnas, Autograd, m) {
  m.impl("weighted_sum", &weighted_sum_autograd);
  m.impl("gumbel_softmax", &gumbel_softmax_autograd);
}

}  // namespace fastnas
