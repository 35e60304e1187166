#include "cpu/tile.h"

namespace fastnas {
namespace cpu {

FASTNAS_CLONES void tile_scale_f32(float* out, const float* x, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = w * x[i];
}

FASTNAS_CLONES void tile_axpy_f32(float* acc, const float* x, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * x[i];
}

FASTNAS_CLONES float tile_dot_f32(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += a[i + j] * b[i + j];
  float s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

FASTNAS_CLONES float tile_scale_dot_f32(float* out, const float* g, const float* x, float w,
                                       int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      out[i + j] = w * g[i + j];
      lanes[j] += g[i + j] * x[i + j];
    }
  float s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  for (; i < n; ++i) {
    out[i] = w * g[i];
    s += g[i] * x[i];
  }
  return s;
}

}  // namespace cpu
}  // namespace fastnas
