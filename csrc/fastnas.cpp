// The one place where fastnas' op schemas live. Kernels register per dispatch key in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered from Python (fastnas/ops.py).
#include <Python.h>
#include <torch/library.h>

// `import fastnas._C` loads this library, which runs the registrations below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastnas custom ops", -1,
                                      nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(fastnas, m) {
  // sum_k weights[k] * inputs[k]; one read of every input, one write.
  m.def("weighted_sum(Tensor weights, Tensor[] inputs) -> Tensor");
  // Gradients of weighted_sum in one pass: (grad_inputs if output_mask[0] else [], grad_weights
  // (zeros if not output_mask[1])).
  m.def(
      "weighted_sum_backward(Tensor grad_out, Tensor weights, Tensor[] inputs, bool[2] output_mask)"
      " -> (Tensor[], Tensor)");
  // (weights, index, soft): Gumbel-softmax over the last dim; weights is one-hot when hard.
  m.def(
      "gumbel_softmax(Tensor logits, float tau, bool hard, Tensor? noise=None, "
      "Generator? generator=None) -> (Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // Straight-through backward: the softmax Jacobian of `soft` applied to grad.
  m.def("gumbel_softmax_backward(Tensor grad, Tensor soft, float tau) -> Tensor");
}
