// The float tile primitives, compiled once per target of FASTNAS_CLONES: the generic bodies from
// tile.h are inlined into each clone and so vectorized for that target.
#include "cpu/tile.h"

namespace fastnas {
namespace cpu {

FASTNAS_CLONES void tile_scale_f32(float* out, const float* x, float w, int64_t n) {
  tile_scale<float>(out, x, w, n);
}

FASTNAS_CLONES void tile_axpy_f32(float* acc, const float* x, float w, int64_t n) {
  tile_axpy<float>(acc, x, w, n);
}

FASTNAS_CLONES float tile_dot_f32(const float* a, const float* b, int64_t n) {
  return tile_dot<float>(a, b, n);
}

FASTNAS_CLONES float tile_scale_dot_f32(float* out, const float* g, const float* x, float w, int64_t n) {
  return tile_scale_dot<float>(out, g, x, w, n);
}

}  // namespace cpu
}  // namespace fastnas
